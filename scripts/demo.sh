#!/usr/bin/env bash
# The Wiremesh demo: a coordinator with embedded SQLite, two relay regions
# and three userspace nodes, all on loopback and without root. Node A
# fetches a page that node C serves, over the mesh, through A's SOCKS5
# proxy; then A's status and a disco ping are shown. Every daemon serves
# /metrics on loopback; when Debian's prometheus is installed, the demo
# starts one (its own config and storage in the temp dir) scraping them all,
# shows a few dashboard queries, and prints where to look. Everything lives
# in a temporary directory and stops when the script ends, however it ends
# (with a terminal, it waits for Enter first so you can look around).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin}

for c in curl python3; do
	command -v "$c" >/dev/null || { echo "demo: needs $c (apt-get install $c)" >&2; exit 1; }
done

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

tmp=$(mktemp -d -t wiremesh-demo.XXXXXX)
pids=()
cleanup() {
	for d in "$tmp"/node-*; do
		[ -S "$d/meshnode.sock" ] && "$BIN/meshnode" down --state-dir "$d" >/dev/null 2>&1 || true
	done
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# wait_for CMD...: retry for up to 20 s.
wait_for() {
	for _ in $(seq 200); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.1
	done
	echo "demo: timed out waiting for: $*" >&2
	return 1
}

# Ports: a random base in 20000-39999, so two demos rarely collide.
base=$((20000 + RANDOM % 20000))
coord_port=$base web_port=$((base + 1)) nyc_port=$((base + 2)) fra_port=$((base + 3))
socks_a=$((base + 4)) socks_b=$((base + 5)) socks_c=$((base + 6))
prom_port=$((base + 7)) console_port=$((base + 8))
# Metrics: coordinator, relays and nodes on consecutive loopback ports.
m_coord=$((base + 10)) m_nyc=$((base + 11)) m_fra=$((base + 12))
m_a=$((base + 13)) m_b=$((base + 14)) m_c=$((base + 15))

say "Starting the coordinator (SQLite in $tmp/coord; web console on https://127.0.0.1:$console_port)"
"$BIN/coordinator" serve --listen "127.0.0.1:$coord_port" --state-dir "$tmp/coord" \
	--web-listen "127.0.0.1:$console_port" --metrics-listen "127.0.0.1:$m_coord" --log-level warn 2>"$tmp/coordinator.log" &
pids+=($!)
wait_for "$BIN/coordinator" nodes list --state-dir "$tmp/coord"
url="https://127.0.0.1:$coord_port"

for r in nyc:"New York":$nyc_port:$m_nyc fra:Frankfurt:$fra_port:$m_fra; do
	IFS=: read -r code name port mport <<<"$r"
	say "Relay $code ($name) joins with a relay key"
	jk=$("$BIN/coordinator" relaykey create --region "$code" --region-name "$name" --state-dir "$tmp/coord" | tail -n 1)
	"$BIN/relayd" --coordinator "$url" --join-key "$jk" --region "$code" \
		--listen "127.0.0.1:$port" --public-addr "127.0.0.1:$port" --state-dir "$tmp/relay-$code" \
		--metrics-listen "127.0.0.1:$mport" --log-level warn 2>"$tmp/relay-$code.log" &
	pids+=($!)
done
relays_up() { [ "$("$BIN/coordinator" relays list --json --state-dir "$tmp/coord" | grep -o '"state":"up"' | wc -l)" -ge 2 ]; }
wait_for relays_up
"$BIN/coordinator" relays list --state-dir "$tmp/coord"

say "Three userspace nodes join with one reusable auth key"
key=$("$BIN/coordinator" authkey create --reusable --state-dir "$tmp/coord" | tail -n 1)
# A userspace node forwards only the ports it lists to its localhost: C
# offers its web server, A and B offer nothing. Every node runs on this
# host, so none asks the host's real gateway for a port mapping.
for n in a:$socks_a::$m_a b:$socks_b::$m_b c:$socks_c:$web_port:$m_c; do
	IFS=: read -r name socks fwd mport <<<"$n"
	"$BIN/meshnode" run --coordinator "$url" --authkey "$key" --hostname "$name" --state-dir "$tmp/node-$name" \
		--metrics-listen "127.0.0.1:$mport" --userspace --socks5 "127.0.0.1:$socks" --forward-ports "$fwd" --port 0 --endpoint-prefixes 127.0.0.0/8 --port-mapping=false --log-level warn 2>"$tmp/node-$name.log" &
	pids+=($!)
done
two_peers() { [ "$("$BIN/meshnode" status --json --state-dir "$tmp/node-$1" | grep -o '"name":"[abc]"' | wc -l)" -ge 3 ]; }
for n in a b c; do wait_for two_peers "$n"; done
"$BIN/coordinator" nodes list --state-dir "$tmp/coord"

say "Node C serves a page on its localhost:$web_port; its mesh address forwards there (--forward-ports $web_port)"
mkdir -p "$tmp/www"
echo "Hello from node C, over the Wiremesh mesh." >"$tmp/www/index.html"
(cd "$tmp/www" && exec python3 -m http.server "$web_port" --bind 127.0.0.1 >/dev/null 2>&1) &
pids+=($!)
wait_for curl -sf "http://127.0.0.1:$web_port/"

say "Node A's MagicDNS resolver (100.100.100.100, inside its netstack) knows c"
"$BIN/meshnode" dns query --state-dir "$tmp/node-a" c

say "Node A fetches http://c:$web_port/ through its SOCKS5 proxy (127.0.0.1:$socks_a), which resolves c through MagicDNS"
curl -sS --max-time 20 --retry 5 --retry-all-errors --socks5-hostname "127.0.0.1:$socks_a" "http://c:$web_port/"

say "meshnode ping c (disco pings through the relay and over the direct path)"
"$BIN/meshnode" ping -c 3 --state-dir "$tmp/node-a" c

say "meshnode status on A"
"$BIN/meshnode" status --state-dir "$tmp/node-a"

prom=""
if command -v prometheus >/dev/null; then
	say "Prometheus scrapes every daemon (config and storage in $tmp/prometheus)"
	mkdir -p "$tmp/prometheus"
	cat >"$tmp/prometheus/prometheus.yml" <<YML
global: {scrape_interval: 2s, evaluation_interval: 2s}
rule_files: ["$PWD/dashboards/wiremesh.rules.yml"]
scrape_configs:
  - job_name: coordinator
    static_configs: [{targets: ["127.0.0.1:$m_coord"], labels: {instance: coordinator}}]
  - job_name: relayd
    static_configs:
      - {targets: ["127.0.0.1:$m_nyc"], labels: {instance: relay-nyc}}
      - {targets: ["127.0.0.1:$m_fra"], labels: {instance: relay-fra}}
  - job_name: meshnode
    static_configs:
      - {targets: ["127.0.0.1:$m_a"], labels: {instance: node-a}}
      - {targets: ["127.0.0.1:$m_b"], labels: {instance: node-b}}
      - {targets: ["127.0.0.1:$m_c"], labels: {instance: node-c}}
YML
	prometheus --config.file="$tmp/prometheus/prometheus.yml" --storage.tsdb.path="$tmp/prometheus/data" \
		--web.listen-address="127.0.0.1:$prom_port" --log.level=warn 2>"$tmp/prometheus.log" &
	pids+=($!)
	prom="http://127.0.0.1:$prom_port"
	wait_for curl -sf "$prom/-/ready"
	# promq EXPR prints the instant result as "labels=value, ...".
	promq() {
		curl -sf "$prom/api/v1/query" --data-urlencode "query=$1" | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(", ".join("%s=%s" % (",".join(s["metric"].values()) or "all", s["value"][1]) for s in r) or "(none)")'
	}
	all_up() { [ "$(promq 'sum(up)')" = "all=6" ]; }
	wait_for all_up
	# Traffic while being scraped, so rates have something to show.
	for _ in 1 2 3; do curl -s --max-time 5 --socks5-hostname "127.0.0.1:$socks_a" "http://c:$web_port/" >/dev/null || true; sleep 1; done
	show() { printf '  %-40s %s\n' "$1" "$(promq "$2")"; }
	show "peers by path (Paths)" 'sum by (path) (meshnode_peers)'
	show "bytes/s by path (Paths)" 'sum by (path) (rate(meshnode_tx_bytes_total[1m]))'
	show "clients per region (Fleet overview)" 'sum by (region) (relayd_clients * on (instance) group_left (region) relayd_region_info)'
	show "home region per node (Relay latency)" 'sum by (region) (meshnode_home_region_info)'
	show "health warnings raised (Paths)" 'sum by (kind) (meshnode_health_warnings) > 0'
else
	say "Prometheus is not installed (apt-get install prometheus): skipping it"
fi

say "Where to look"
echo "  metrics:     coordinator http://127.0.0.1:$m_coord/metrics; relays :$m_nyc, :$m_fra; nodes a, b, c :$m_a, :$m_b, :$m_c (and /healthz)"
if [ -n "$prom" ]; then
	echo "  prometheus:  $prom/graph?g0.expr=sum%20by%20(path)%20(meshnode_peers) (alerts: $prom/alerts)"
	echo "  dashboards:  $PWD/dashboards/*.json: import into Grafana with $prom as a Prometheus data source"
fi
echo "  logs:        $tmp/*.log"

say "Web console: open this one-time link in a browser on this machine (valid 10 minutes, signs in once)"
echo "  The certificate is the coordinator's own, self-signed: accept the browser's warning"
echo "  (its pin, which every auth key carries, is sha256/${key##*.})."
echo "  Another link: $BIN/coordinator web login --state-dir $tmp/coord"
if [ -t 0 ]; then echo "  The demo runs until you press Enter."; fi
echo
"$BIN/coordinator" web login --state-dir "$tmp/coord" | tail -n 1
if [ -t 0 ]; then
	read -r _ || true
fi

say "Done; stopping everything"
