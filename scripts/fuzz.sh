#!/usr/bin/env bash
# Runs every fuzz target in the module for FUZZTIME (default 10s) each.
# go test -fuzz accepts one target per run, so targets are listed first.
#
# SAVE_CORPUS=1 copies up to 16 interesting inputs the fuzzer found for each
# target from the Go build cache into the package's testdata/fuzz/<Target>/,
# which is how the committed seed corpora are grown. PKGS limits the packages
# (default ./...).
set -euo pipefail
FUZZTIME=${FUZZTIME:-10s}
cache=$(go env GOCACHE)/fuzz
fail=0
for pkg in $(go list ${PKGS:-./...}); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for t in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | awk '{print $2}' | sort -u); do
		echo "== $pkg $t ($FUZZTIME)"
		if ! go test -run '^$' -fuzz "^${t}\$" -fuzztime "$FUZZTIME" "$pkg"; then
			fail=1
		fi
		if [ "${SAVE_CORPUS:-}" = 1 ] && [ -d "$cache/$pkg/$t" ]; then
			mkdir -p "$dir/testdata/fuzz/$t"
			ls -S "$cache/$pkg/$t" | head -16 | while read -r f; do
				cp "$cache/$pkg/$t/$f" "$dir/testdata/fuzz/$t/"
			done
		fi
	done
done
exit $fail
