#!/usr/bin/env bash
# Reproduces the relay figures in BENCHMARKS.md on one machine: builds the
# binaries, starts a relayd (fast path on) and the plain UDP forwarder
# baseline on 127.0.0.1:7000-7004, and runs
#   1. loadtest relay: 8 pairs, 1280-byte packets, datagram and stream side
#      by side with the UDP fast path, the UDP forwarder in the same run,
#      and the flood test;
#   2. loadtest relay --rate: latency at half of each mode's peak, and at a
#      light 8000 packets/s (the "unloaded" reference);
#   3. loadtest connect: 10,000 idle QUIC clients against a fresh relay
#      (relay memory per client after a forced GC), then 10,000 TCP ones.
# Results land in $OUT (default bench-out/) as one JSON file per step.
# Everything it starts it stops (by PID) on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-out}
PAIRS=${PAIRS:-8}
DURATION=${DURATION:-10s}
CLIENTS=${CLIENTS:-10000}
STEPS=${STEPS:-relay connect} # which steps to run
mkdir -p "$OUT"
make build >/dev/null
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

SK=$(bin/loadtest keygen --out "$work/sign.key")
relay_up() {
	rm -rf "$work/relay"
	bin/relayd --region bench --state-dir "$work/relay" --listen 127.0.0.1:7000 --trust-key "$SK" \
		--fastpath-listen 127.0.0.1:7004 --metrics-listen 127.0.0.1:7001 --pprof-listen 127.0.0.1:7003 --log-level warn &
	RELAY_PID=$!
	pids+=("$RELAY_PID")
	for _ in $(seq 50); do curl -sf http://127.0.0.1:7001/healthz >/dev/null && break; sleep 0.1; done
	# sed, not head: head would close the pipe early and pipefail would
	# turn relayd's SIGPIPE into a failure.
	PIN=$(bin/relayd pin --state-dir "$work/relay" | sed -n 1p)
	RK=$(bin/relayd pin --state-dir "$work/relay" | sed -n 2p)
}
relay_down() { kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; }
target() { echo --relay 127.0.0.1:7000 --pin "$PIN" --relay-key "$RK" --signing-key-file "$work/sign.key"; }

step_relay() {
relay_up
echo "== throughput, baseline and flood" >&2
bin/loadtest relay $(target) --pairs "$PAIRS" --size 1280 --duration "$DURATION" --delivery all \
	--baseline-udp 127.0.0.1:7002 --max-loss 0.01 --flood --probe-rate 1000 --json | tee "$OUT/relay.json"

echo "== latency at half of peak" >&2
for mode in datagram stream fastpath; do
	pps=$(jq -r ".runs[] | select(.delivery==\"$mode\") | .packets_per_s" "$OUT/relay.json")
	half=$(jq -n "$pps / 2 | floor")
	bin/loadtest relay $(target) --pairs "$PAIRS" --size 1280 --duration "$DURATION" \
		--delivery "$mode" --rate "$half" --json | tee "$OUT/relay-half-$mode.json"
done
bin/loadtest relay --pairs "$PAIRS" --size 1280 --duration "$DURATION" --delivery all \
	--baseline-udp 127.0.0.1:7002 --rate 8000 --json $(target) | tee "$OUT/relay-unloaded.json"

relay_down
}

step_connect() {
echo "== idle clients" >&2
relay_up
bin/loadtest connect $(target) --clients "$CLIENTS" --hold 5s \
	--relay-metrics http://127.0.0.1:7001/metrics --relay-pprof http://127.0.0.1:7003 --json | tee "$OUT/connect-quic.json"
relay_down
relay_up
bin/loadtest connect $(target) --tcp --clients "$CLIENTS" --hold 5s \
	--relay-metrics http://127.0.0.1:7001/metrics --relay-pprof http://127.0.0.1:7003 --json | tee "$OUT/connect-tcp.json"
relay_down
}

bin/loadtest udpfwd --listen 127.0.0.1:7002 &
pids+=("$!")
for s in $STEPS; do "step_$s"; done
