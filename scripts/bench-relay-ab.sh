#!/usr/bin/env bash
# A/B of relay fast-path throughput between builds, in one sitting,
# alternating the variants ROUNDS times so load changes hit all of them alike.
#
# Put the binaries in $AB (default /tmp/ab) as NAME-relayd and NAME-loadtest
# for every NAME in VARIANTS (default "before after"), for example:
#   mkdir -p /tmp/ab/src && git archive REV | tar -x -C /tmp/ab/src &&
#   (cd /tmp/ab/src && go build -o ../before-relayd ./cmd/relayd && go build -o ../before-loadtest ./cmd/loadtest)
# A variant NAME-nogso runs NAME's binaries with relayd --fastpath-no-gso.
#
# Each run: loadtest relay, 8 pairs, 1280-byte packets, fast path, 5 s at
# full speed, then the fastest paced rate with loss below 1 %; with
# BASELINE=on (the default) the plain Go UDP forwarder (loadtest udpfwd) is
# measured in the same run for a ratio. Results: $AB/VARIANT-ROUND.json, the
# relayd's process_cpu_seconds_total before and after in $AB/VARIANT-ROUND.cpu,
# the load average per run in $AB/log.
# LOADTEST_FLAGS adds flags to every loadtest relay run, for example
# "--client-batch 32" (clients that batch their system calls too).
# It uses 127.0.0.1:7410-7414 and stops everything it starts (by PID).
set -euo pipefail
AB=${AB:-/tmp/ab}
ROUNDS=${ROUNDS:-3}
VARIANTS=${VARIANTS:-before after}
BASELINE=${BASELINE:-on}
read -r -a ltflags <<<"${LOADTEST_FLAGS:-}"
cd "$AB"
first=${VARIANTS%% *}
first=${first%-nogso}
SK=$(./"$first"-loadtest keygen --out "$AB/sign.key")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
base=()
if [ "$BASELINE" = on ]; then
	./"$first"-loadtest udpfwd --listen 127.0.0.1:7412 &
	pids+=("$!")
	base=(--baseline-udp 127.0.0.1:7412)
fi
cpu() { curl -s http://127.0.0.1:7411/metrics | awk '/^process_cpu_seconds_total/ {print $2}'; }
for round in $(seq "$ROUNDS"); do
	for v in $VARIANTS; do
		bin=${v%-nogso}
		extra=()
		[ "$v" != "$bin" ] && extra=(--fastpath-no-gso)
		rm -rf "$AB/state"
		./"$bin"-relayd --region bench --state-dir "$AB/state" --listen 127.0.0.1:7410 --listen-tcp off --trust-key "$SK" \
			--fastpath-listen 127.0.0.1:7414 --metrics-listen 127.0.0.1:7411 --log-level warn "${extra[@]}" &
		rp=$!
		for _ in $(seq 100); do curl -sf http://127.0.0.1:7411/healthz >/dev/null && break; sleep 0.1; done
		pin=$(./"$bin"-relayd pin --state-dir "$AB/state" | sed -n 1p)
		rk=$(./"$bin"-relayd pin --state-dir "$AB/state" | sed -n 2p)
		c0=$(cpu)
		./"$bin"-loadtest relay --relay 127.0.0.1:7410 --pin "$pin" --relay-key "$rk" --signing-key-file "$AB/sign.key" \
			--pairs 8 --size 1280 --duration 5s --delivery fastpath "${base[@]}" --max-loss 0.01 --search-duration 2s \
			--progress 0 "${ltflags[@]}" --json >"$AB/$v-$round.json" 2>"$AB/$v-$round.err" || true
		echo "$c0 $(cpu)" >"$AB/$v-$round.cpu"
		kill "$rp"
		wait "$rp" 2>/dev/null || true
		echo "$v $round $(uptime | sed 's/.*load average/load/')" >>"$AB/log"
	done
done
