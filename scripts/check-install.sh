#!/usr/bin/env bash
# Checks `make install` and the systemd units in dist/systemd/:
#  1. installs with PREFIX=<temp dir> and runs `systemd-analyze verify` on
#     the installed units, whose ExecStart then names the installed (real)
#     binaries; any warning fails the check, not only errors;
#  2. installs with DESTDIR=<temp dir> PREFIX=/usr and checks every file
#     lands under DESTDIR with the units pointing at /usr/bin.
# systemd-analyze verify needs no running systemd (it works in containers).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "check-install: systemd-analyze missing (make deps)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

make -s install PREFIX="$tmp/prefix" >/dev/null
units=("$tmp"/prefix/lib/systemd/system/*.service)
[ ${#units[@]} -eq 3 ] || { echo "check-install: want 3 units, got ${#units[@]}" >&2; exit 1; }
out=$(systemd-analyze verify "${units[@]}" 2>&1) || { echo "$out" >&2; echo "check-install: systemd-analyze verify failed" >&2; exit 1; }
if [ -n "$out" ]; then echo "$out" >&2; echo "check-install: systemd-analyze verify warned" >&2; exit 1; fi
for u in "${units[@]}"; do
	grep -q "^ExecStart=$tmp/prefix/bin/" "$u" || { echo "check-install: $u does not start $tmp/prefix/bin/..." >&2; exit 1; }
done

make -s install DESTDIR="$tmp/dest" PREFIX=/usr >/dev/null
for f in usr/bin/coordinator usr/bin/relayd usr/bin/meshnode usr/bin/loadtest \
	usr/lib/systemd/system/coordinator.service usr/lib/systemd/system/relayd.service usr/lib/systemd/system/meshnode.service \
	usr/share/wiremesh/dashboards/fleet.json usr/share/wiremesh/dashboards/wiremesh.rules.yml \
	usr/share/wiremesh/examples/relayd.env.example; do
	[ -e "$tmp/dest/$f" ] || { echo "check-install: DESTDIR install lacks /$f" >&2; exit 1; }
done
grep -q '^ExecStart=/usr/bin/relayd ' "$tmp/dest/usr/lib/systemd/system/relayd.service" || { echo "check-install: relayd.service not pointed at /usr/bin" >&2; exit 1; }
if grep -rq "$tmp" "$tmp/dest"; then echo "check-install: DESTDIR leaked into installed files" >&2; exit 1; fi
echo "check-install: make install and 3 systemd units verified"
