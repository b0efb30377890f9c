#!/usr/bin/env bash
# Runs the coordinator benchmark recorded in BENCHMARKS.md: builds the
# binaries, starts a coordinator on loopback in a temporary state directory,
# and runs `loadtest coordinator` against it for each node count given
# (default: 1000 then 10000), each on a fresh coordinator.
#   scripts/bench-coordinator.sh [NODES...]     (MODE=hub|mesh, default hub)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-hub}
CHANGES=${CHANGES:-5}
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1000 10000)
mkdir -p bin
CGO_ENABLED=0 go build -o bin/coordinator ./cmd/coordinator
CGO_ENABLED=0 go build -o bin/loadtest ./cmd/loadtest
for n in "${counts[@]}"; do
	dir=$(mktemp -d)
	bin/coordinator serve --listen 127.0.0.1:18443 --state-dir "$dir" --metrics-listen 127.0.0.1:19443 \
		--log-level warn 2>"$dir/coordinator.log" &
	pid=$!
	trap 'kill $pid 2>/dev/null || true' EXIT
	for _ in $(seq 50); do [ -S "$dir/admin.sock" ] && break; sleep 0.1; done
	key=$(bin/coordinator authkey create --reusable --state-dir "$dir" | tail -1)
	args=(--coordinator https://127.0.0.1:18443 --authkey "$key" --nodes "$n" --changes "$CHANGES"
		--metrics-url http://127.0.0.1:19443/metrics --json)
	if [ "$MODE" = hub ]; then
		hubkey=$(bin/coordinator authkey create --reusable --tags tag:hub --state-dir "$dir" | tail -1)
		printf '{"tagOwners": {"tag:hub": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["tag:hub:*"]}]}\n' >"$dir/policy.hujson"
		bin/coordinator policy set "$dir/policy.hujson" --state-dir "$dir" >/dev/null
		args+=(--hubs 1 --hub-authkey "$hubkey")
	fi
	echo "# mode=$MODE nodes=$n" >&2
	bin/loadtest coordinator "${args[@]}"
	kill $pid
	wait $pid 2>/dev/null || true
	trap - EXIT
	rm -rf "$dir"
done
