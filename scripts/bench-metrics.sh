#!/usr/bin/env bash
# Measures what Prometheus scraping costs the relay's hot path, for
# BENCHMARKS.md. Two identical relayd (fast path on, metrics on) and one
# Debian prometheus run throughout. Each round runs `loadtest relay
# --delivery all` against both relays at the same time, while prometheus
# scrapes one of them every second (file_sd) and not the other; the
# scraped relay alternates from round to round. Running both sides at once
# makes the machine's noise (other builds and tests on 2 cores) hit both
# alike, and alternating cancels any difference between the two relays.
# Prints each round's packets/s per delivery mode on both sides, then the
# median over rounds of (scraped / unscraped) per mode, and of the relays'
# CPU time per delivered packet (from /proc). Everything it starts it stops
# (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-8}
DURATION=${DURATION:-3s}
PAIRS=${PAIRS:-8}
OUT=${OUT:-bench-out}
for c in jq prometheus curl; do command -v "$c" >/dev/null || { echo "bench-metrics: needs $c" >&2; exit 1; }; done
mkdir -p "$OUT"
rm -f "$OUT"/metrics-*.json
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
declare -A RPID PIN RK
for r in a b; do
	if [ $r = a ]; then p=7010; else p=7020; fi
	bin/relayd --region bench --state-dir "$work/relay-$r" --listen 127.0.0.1:$p --trust-key "$SK" \
		--fastpath-listen 127.0.0.1:$((p + 4)) --metrics-listen 127.0.0.1:$((p + 1)) --log-level warn &
	RPID[$r]=$!
	pids+=($!)
	for _ in $(seq 50); do curl -sf http://127.0.0.1:$((p + 1))/healthz >/dev/null && break; sleep 0.1; done
	PIN[$r]=$(bin/relayd pin --state-dir "$work/relay-$r" | sed -n 1p)
	RK[$r]=$(bin/relayd pin --state-dir "$work/relay-$r" | sed -n 2p)
done
port() { if [ "$1" = a ]; then echo 7010; else echo 7020; fi; }

cat >"$work/prometheus.yml" <<YML
global: {scrape_interval: 1s}
scrape_configs:
  - job_name: relayd
    file_sd_configs: [{files: ["$work/targets.json"], refresh_interval: 1s}]
YML
scrape() { # scrape RELAY: make it prometheus's only target, and wait until it is
	echo "[{\"targets\": [\"127.0.0.1:$(($(port "$1") + 1))\"], \"labels\": {\"relay\": \"$1\"}}]" >"$work/targets.json.new"
	mv "$work/targets.json.new" "$work/targets.json"
	for _ in $(seq 50); do
		[ "$(curl -sf http://127.0.0.1:7035/api/v1/targets?state=active | jq -r '[.data.activeTargets[] | .labels.relay] | join(",")')" = "$1" ] && return
		sleep 0.2
	done
	echo "bench-metrics: prometheus did not switch to relay $1" >&2
	exit 1
}
echo '[]' >"$work/targets.json"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prom" \
	--web.listen-address=127.0.0.1:7035 --log.level=warn 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:7035/-/ready >/dev/null && break; sleep 0.1; done

cpu() { awk '{print $14 + $15}' "/proc/${RPID[$1]}/stat"; } # utime+stime, clock ticks
tick=$(getconf CLK_TCK)
load() { # load RELAY FILE: one loadtest relay run against RELAY
	bin/loadtest relay --relay 127.0.0.1:"$(port "$1")" --pin "${PIN[$1]}" --relay-key "${RK[$1]}" \
		--signing-key-file "$work/sign.key" --pairs "$PAIRS" --size 1280 --duration "$DURATION" \
		--delivery all --progress 0 --json >"$2"
}
line() { jq -r '[.runs[] | "\(.delivery) \(.packets_per_s|floor)"] | join("  ")' "$1"; }

for i in $(seq "$ROUNDS"); do
	if [ $((i % 2)) = 1 ]; then on=a off=b; else on=b off=a; fi
	scrape "$on"
	sleep 2 # a couple of scrapes first
	c0on=$(cpu $on) c0off=$(cpu $off)
	load "$on" "$work/on.json" &
	lon=$!
	load "$off" "$work/off.json" &
	loff=$!
	wait "$lon" "$loff"
	c1on=$(cpu $on) c1off=$(cpu $off)
	jq --argjson cpu "$(jq -n "($c1on - $c0on) / $tick")" '. + {relay: "'$on'", relay_cpu_s: $cpu}' "$work/on.json" >"$OUT/metrics-on-$i.json"
	jq --argjson cpu "$(jq -n "($c1off - $c0off) / $tick")" '. + {relay: "'$off'", relay_cpu_s: $cpu}' "$work/off.json" >"$OUT/metrics-off-$i.json"
	printf 'round %-2d scraped %s: %s   unscraped %s: %s\n' "$i" "$on" "$(line "$OUT/metrics-on-$i.json")" "$off" "$(line "$OUT/metrics-off-$i.json")"
done
echo "relay scrapes in total: $(curl -sf http://127.0.0.1:7035/api/v1/query --data-urlencode 'query=sum(count_over_time(up[1h]))' | jq -r '.data.result[0].value[1]')"

echo "median over rounds of scraped / unscraped (same round):"
ratio() { # ratio JQ-EXPR: median over rounds of expr(on) / expr(off)
	for i in $(seq "$ROUNDS"); do
		jq -n --slurpfile on "$OUT/metrics-on-$i.json" --slurpfile off "$OUT/metrics-off-$i.json" "(\$on[0] | $1) / (\$off[0] | $1)"
	done | jq -s 'sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2 - 1] + .[length/2]) / 2 end'
}
for mode in datagram stream fastpath; do
	printf '  %-30s %.3f\n' "$mode packets/s" "$(ratio ".runs[] | select(.delivery==\"$mode\") | .packets_per_s")"
done
printf '  %-30s %.3f\n' "all modes packets/s" "$(ratio "[.runs[] | .packets_per_s] | add")"
printf '  %-30s %.3f\n' "relay CPU per delivered packet" "$(ratio ".relay_cpu_s / ([.runs[] | .received] | add)")"

# What one scrape costs the relay, measured alone: SCRAPES back-to-back
# /metrics requests against the idle relay a, CPU time from /proc. At one
# scrape per second this is the share of a core that scraping takes.
SCRAPES=${SCRAPES:-500}
echo '[]' >"$work/targets.json" # prometheus off the relays
sleep 2
c0=$(cpu a)
for _ in $(seq "$SCRAPES"); do curl -sf -o /dev/null http://127.0.0.1:7011/metrics; done
c1=$(cpu a)
bytes=$(curl -sf http://127.0.0.1:7011/metrics | wc -c)
printf '  relay CPU per scrape (%d scrapes of %d bytes): %.3f ms, %.3f%% of one core at 1 scrape/s\n' \
	"$SCRAPES" "$bytes" "$(jq -n "($c1 - $c0) / $tick / $SCRAPES * 1000")" "$(jq -n "($c1 - $c0) / $tick / $SCRAPES * 100")"
