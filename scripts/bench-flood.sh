#!/usr/bin/env bash
# Flood fairness A/B between relayd builds, in one sitting, alternating the
# variants ROUNDS times so load changes hit all of them alike.
#
# Put the binaries in $AB (default /tmp/ab) as NAME-relayd for every NAME in
# VARIANTS (default "before after"), and a loadtest as $AB/loadtest, e.g.:
#   mkdir -p /tmp/ab/src && git archive REV | tar -x -C /tmp/ab/src &&
#   (cd /tmp/ab/src && go build -o ../before-relayd ./cmd/relayd)
#   go build -o /tmp/ab/after-relayd ./cmd/relayd && go build -o /tmp/ab/loadtest ./cmd/loadtest
#
# Each round and variant runs two measurements (the second only if MODES
# is not empty):
#   flood  loadtest relay --flood: 8 pairs paced at 1,000 packets/s each, first
#          alone, then beside one pair flooding from a child process at
#          nice 19 under SCHED_IDLE (the p99 ratio of #11); FLOOD_FLAGS adds
#          loadtest relay flags, e.g. --flood-idle=false for nice 19 alone, or
#          --flood-windows 10 for the interleaved measurement as well (its
#          figures appear as "interleaved" in the summary line);
#   floor  the same 8 paced pairs for 5 s (--rate 8000) three ways: alone; with
#          the flood (loadtest flood $FLOOR_FLOOD, default --nice 19 --idle)
#          through the same relayd; and
#          with the flood through a second relayd process. The third is what
#          perfect isolation inside relayd could reach on this machine: the
#          kernel and the cores are shared, the relay process is not.
# Results: $AB/VARIANT-ROUND-flood.json, $AB/VARIANT-ROUND-floor-{alone,same,other}.json,
# and one summary line per measurement on stdout. MODES picks the floor runs
# (default "alone same other"; empty: the flood measurement only). RELAY_FLAGS adds relayd
# flags. It uses 127.0.0.1:7410-7425 and stops everything it starts (by PID).
set -euo pipefail
AB=${AB:-/tmp/ab}
ROUNDS=${ROUNDS:-3}
VARIANTS=${VARIANTS:-before after}
read -r -a rflags <<<"${RELAY_FLAGS:-}"
read -r -a fflags <<<"${FLOOD_FLAGS:-}"
read -r -a floor <<<"${FLOOR_FLOOD:---nice 19 --idle}"
cd "$AB"
SK=$(./loadtest keygen --out "$AB/sign.key")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# up VARIANT N PORT: relayd N on 127.0.0.1:PORT (metrics PORT+1, fast path PORT+4).
up() {
	rm -rf "$AB/state$2"
	./"$1"-relayd --region bench --state-dir "$AB/state$2" --listen 127.0.0.1:"$3" --listen-tcp off --trust-key "$SK" \
		--fastpath-listen 127.0.0.1:$(($3 + 4)) --metrics-listen 127.0.0.1:$(($3 + 1)) --log-level warn "${rflags[@]}" &
	pids+=("$!")
	for _ in $(seq 100); do curl -sf http://127.0.0.1:$(($3 + 1))/healthz >/dev/null && break; sleep 0.1; done
}
# target VARIANT N PORT: loadtest flags for relayd N.
target() {
	echo --relay 127.0.0.1:"$3" --pin "$(./"$1"-relayd pin --state-dir "$AB/state$2" | sed -n 1p)" \
		--relay-key "$(./"$1"-relayd pin --state-dir "$AB/state$2" | sed -n 2p)" --signing-key-file "$AB/sign.key"
}
down() { cleanup; pids=(); }

for round in $(seq "$ROUNDS"); do
	for v in $VARIANTS; do
		up "$v" 1 7410
		# shellcheck disable=SC2046
		./loadtest relay $(target "$v" 1 7410) --pairs 8 --size 1280 --duration 5s --delivery fastpath \
			--flood --probe-rate 1000 --progress 0 --json "${fflags[@]}" >"$AB/$v-$round-flood.json"
		echo "$v $round flood $(jq -c '.flood[0] | {unloaded_p99_ms: .unloaded.latency_p99_ms, loaded_p99_ms: .loaded.latency_p99_ms, p99_ratio, flood_gbit_per_s: .loaded.flood_gbit_per_s, loss: .loaded.loss} + (if .interleaved then {interleaved: (.interleaved | {unloaded_p99_ms: .unloaded.latency_p99_ms, loaded_p99_ms: .loaded.latency_p99_ms, p99_ratio, unloaded_bias, flood_gbit_per_s: .loaded.flood_gbit_per_s})} else {} end)' "$AB/$v-$round-flood.json")"
		down
		for mode in ${MODES-alone same other}; do
			up "$v" 1 7410
			if [ "$mode" = other ]; then up "$v" 2 7420; fi
			case $mode in
			same) # shellcheck disable=SC2046
				./loadtest flood $(target "$v" 1 7410) --duration 9s "${floor[@]}" >/dev/null &
				pids+=("$!") ;;
			other) # shellcheck disable=SC2046
				./loadtest flood $(target "$v" 2 7420) --duration 9s "${floor[@]}" >/dev/null &
				pids+=("$!") ;;
			esac
			sleep 1.5
			# shellcheck disable=SC2046
			./loadtest relay $(target "$v" 1 7410) --pairs 8 --size 1280 --duration 5s --rate 8000 \
				--delivery fastpath --progress 0 --json >"$AB/$v-$round-floor-$mode.json"
			echo "$v $round floor-$mode $(jq -c '.runs[0] | {p50_ms: .latency_p50_ms, p99_ms: .latency_p99_ms, loss}' "$AB/$v-$round-floor-$mode.json")"
			down
		done
	done
done
