#!/usr/bin/env bash
# Measures what Prometheus scraping costs the relay's hot path, for
# BENCHMARKS.md. One relayd (fast path on, metrics on 127.0.0.1:7011) and
# one Debian prometheus run throughout; `loadtest relay --delivery all` runs
# ROUNDS times with prometheus scraping the relay every second and ROUNDS
# times with the relay taken out of its targets (file_sd), alternating
# (off, on, off, on, ...), so prometheus's own CPU use and drift on a noisy
# machine hit both alike. Prints each run's packets/s per delivery mode and
# the relay's CPU time per forwarded packet (from /proc), then the ratios of
# the medians. Everything it starts it stops (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-3s}
PAIRS=${PAIRS:-8}
OUT=${OUT:-bench-out}
for c in jq prometheus curl; do command -v "$c" >/dev/null || { echo "bench-metrics: needs $c" >&2; exit 1; }; done
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
bin/relayd --region bench --state-dir "$work/relay" --listen 127.0.0.1:7010 --trust-key "$SK" \
	--fastpath-listen 127.0.0.1:7014 --metrics-listen 127.0.0.1:7011 --log-level warn &
RELAY_PID=$!
pids+=($!)
for _ in $(seq 50); do curl -sf http://127.0.0.1:7011/healthz >/dev/null && break; sleep 0.1; done
PIN=$(bin/relayd pin --state-dir "$work/relay" | sed -n 1p)
RK=$(bin/relayd pin --state-dir "$work/relay" | sed -n 2p)

cat >"$work/prometheus.yml" <<YML
global: {scrape_interval: 1s}
scrape_configs:
  - job_name: relayd
    file_sd_configs: [{files: ["$work/targets.json"], refresh_interval: 1s}]
YML
targets() { # targets on|off: (un)list the relay; prometheus picks the change up
	if [ "$1" = on ]; then echo '[{"targets": ["127.0.0.1:7011"]}]'; else echo '[]'; fi >"$work/targets.json.new"
	mv "$work/targets.json.new" "$work/targets.json"
}
scraped() { curl -sf http://127.0.0.1:7015/api/v1/query --data-urlencode 'query=count(up)' | jq -r '.data.result[0].value[1] // "0"'; }
targets off
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prom" \
	--web.listen-address=127.0.0.1:7015 --log.level=warn 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:7015/-/ready >/dev/null && break; sleep 0.1; done
sleep 3

cpu() { awk '{print $14 + $15}' "/proc/$RELAY_PID/stat"; } # utime+stime in clock ticks
tick=$(getconf CLK_TCK)
run() { # run LABEL: one loadtest relay run, JSON to $OUT/metrics-LABEL.json
	local c0 c1
	c0=$(cpu)
	bin/loadtest relay --relay 127.0.0.1:7010 --pin "$PIN" --relay-key "$RK" --signing-key-file "$work/sign.key" \
		--pairs "$PAIRS" --size 1280 --duration "$DURATION" --delivery all --progress 0 --json >"$OUT/metrics-$1.json"
	c1=$(cpu)
	# relay CPU microseconds per delivered packet, over the whole run
	jq --argjson us "$(jq -n "($c1 - $c0) / $tick * 1e6")" '. + {relay_cpu_us: $us}' "$OUT/metrics-$1.json" >"$OUT/metrics-$1.json.tmp"
	mv "$OUT/metrics-$1.json.tmp" "$OUT/metrics-$1.json"
	printf '%-7s' "$1"
	jq -r '[.runs[] | "\(.delivery) \(.packets_per_s|floor)"] | join("  ")' "$OUT/metrics-$1.json" | tr '\n' ' '
	printf ' pkt/s   relay CPU %.2f s\n' "$(jq -n "($c1 - $c0) / $tick")"
}

for i in $(seq "$ROUNDS"); do
	targets off
	for _ in $(seq 50); do [ "$(scraped)" = 0 ] && break; sleep 0.2; done
	run "off-$i"
	targets on
	for _ in $(seq 50); do [ "$(scraped)" = 1 ] && break; sleep 0.2; done
	run "on-$i"
done
echo "relay scrapes in total: $(curl -sf http://127.0.0.1:7015/api/v1/query --data-urlencode 'query=count_over_time(up[1h])' | jq -r '.data.result[0].value[1]')"

echo "medians, scraped every 1 s / not scraped:"
med() { jq -s "[.[] | $2] | sort | .[length/2|floor]" "$OUT"/metrics-"$1"-*.json; }
for mode in datagram stream fastpath; do
	f=".runs[] | select(.delivery==\"$mode\") | .packets_per_s"
	off=$(med off "$f") on=$(med on "$f")
	printf '  %-9s pkt/s %10.0f / %10.0f = %.3f\n' "$mode" "$on" "$off" "$(jq -n "$on / $off")"
done
# CPU per packet: relay CPU time over the packets delivered in all three modes.
f='.relay_cpu_us / ([.runs[] | .received] | add)'
off=$(med off "$f") on=$(med on "$f")
printf '  relay CPU µs/packet %7.3f / %7.3f = %.3f\n' "$on" "$off" "$(jq -n "$on / $off")"
