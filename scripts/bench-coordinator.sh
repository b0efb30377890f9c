#!/usr/bin/env bash
# Runs the coordinator benchmark recorded in BENCHMARKS.md: builds the
# binaries, starts coordinators on loopback in temporary state directories,
# and runs `loadtest coordinator` against them for each node count given
# (default: 1000 then 10000), each on fresh state.
#   scripts/bench-coordinator.sh [NODES...]
# Environment:
#   MODE=hub|mesh        topology (default hub)
#   CHANGES=N            endpoint changes to time (default 5)
#   DB=sqlite|postgres   store (default sqlite). postgres starts its own
#                        PostgreSQL (initdb as the postgres user when run as
#                        root) on a Unix socket in a temporary directory.
#   REPLICAS=R           coordinators sharing the database (postgres only;
#                        default 2); the load test spreads the nodes over them.
#   SERVE_FLAGS="..."    extra `coordinator serve` flags, e.g. for 50,000 nodes
#                        from one address: --max-conns-per-source 8192
#                        --replay-per-source 262144
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-hub}
CHANGES=${CHANGES:-5}
DB=${DB:-sqlite}
if [ "$DB" = postgres ]; then REPLICAS=${REPLICAS:-2}; else REPLICAS=1; fi
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1000 10000)
mkdir -p bin
CGO_ENABLED=0 go build -o bin/coordinator ./cmd/coordinator
CGO_ENABLED=0 go build -o bin/loadtest ./cmd/loadtest

pids=()
pgdir=""
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [ -n "$pgdir" ]; then
		asdb "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate -w stop >/dev/null 2>&1 || true
		rm -rf "$pgdir"
	fi
}
trap cleanup EXIT

asdb() {
	if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "$DB" = postgres ]; then
	pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
	pgdir=$(mktemp -d /tmp/wm-bench-pg-XXXXXX)
	[ "$(id -u)" -eq 0 ] && chown postgres: "$pgdir"
	asdb "$pgbin/initdb" -D "$pgdir/data" -U wiremesh --auth=trust -E UTF8 --locale=C >/dev/null
	printf "listen_addresses = ''\nunix_socket_directories = '%s'\nmax_connections = 200\n" "$pgdir" >>"$pgdir/data/postgresql.conf"
	asdb "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w start >/dev/null
fi

for n in "${counts[@]}"; do
	urls=() metrics=() dirs=()
	dbflag=()
	if [ "$DB" = postgres ]; then
		asdb "$pgbin/createdb" -h "$pgdir" -U wiremesh "wm$n"
		dbflag=(--db "postgres://wiremesh@/wm$n?host=$pgdir&sslmode=disable")
	fi
	for r in $(seq 0 $((REPLICAS - 1))); do
		dir=$(mktemp -d)
		dirs+=("$dir")
		bin/coordinator serve --listen 127.0.0.1:$((18443 + r)) --state-dir "$dir" --metrics-listen 127.0.0.1:$((19443 + r)) \
			--log-level warn "${dbflag[@]}" ${SERVE_FLAGS:-} 2>"$dir/coordinator.log" &
		pids+=($!)
		for _ in $(seq 100); do [ -S "$dir/admin.sock" ] && break; sleep 0.1; done
		urls+=("https://127.0.0.1:$((18443 + r))")
		metrics+=("http://127.0.0.1:$((19443 + r))/metrics")
	done
	dir=${dirs[0]}
	key=$(bin/coordinator authkey create --reusable --state-dir "$dir" | tail -1)
	args=(--coordinator "$(IFS=,; echo "${urls[*]}")" --authkey "$key" --nodes "$n" --changes "$CHANGES"
		--metrics-url "$(IFS=,; echo "${metrics[*]}")" --json)
	if [ "$MODE" = hub ]; then
		hubkey=$(bin/coordinator authkey create --reusable --tags tag:hub --state-dir "$dir" | tail -1)
		printf '{"tagOwners": {"tag:hub": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["tag:hub:*"]}]}\n' >"$dir/policy.hujson"
		bin/coordinator policy set "$dir/policy.hujson" --state-dir "$dir" >/dev/null
		args+=(--hubs 1 --hub-authkey "$hubkey")
	fi
	echo "# mode=$MODE db=$DB replicas=$REPLICAS nodes=$n load=$(cut -d' ' -f1-3 /proc/loadavg)" >&2
	bin/loadtest coordinator "${args[@]}"
	echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	pids=()
	for d in "${dirs[@]}"; do rm -rf "$d"; done
done
