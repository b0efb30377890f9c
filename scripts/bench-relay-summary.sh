#!/usr/bin/env bash
# Prints the BENCHMARKS.md relay tables (Markdown) from a bench-relay.sh
# output directory: scripts/bench-relay-summary.sh bench-out
set -euo pipefail
d=${1:-bench-out}
row='"| \(.delivery) | \(.transport) | \(.target_pps // "max") | \(.packets_per_s) | \(.gbit_per_s) | \(.loss * 100 | . * 100 | round / 100)% | \(.latency_p50_ms) | \(.latency_p99_ms) |"'
hdr='| delivery | transport | target pkt/s | pkt/s | Gbit/s | loss | p50 ms | p99 ms |
|---|---|---|---|---|---|---|---|'
echo "### Full speed, 8 pairs, 1280-byte packets (UDP forwarder in the same run)"
echo "$hdr"
jq -r "(.runs[], .baseline_udp) | $row" "$d/relay.json"
echo
echo "Gbit/s ratio to the UDP forwarder: $(jq -c .gbit_ratio_to_udp "$d/relay.json")"
echo
echo "### Fastest paced rate with loss below $(jq .max_loss "$d/relay.json")"
echo "$hdr"
jq -r ".below_max_loss[] | $row" "$d/relay.json"
echo
echo "Gbit/s ratio to the UDP forwarder (both below the loss limit): $(jq -c .below_max_loss_ratio_to_udp "$d/relay.json")"
echo
echo "### Latency at half of each mode's peak, and at a light 8000 pkt/s"
echo "$hdr"
for m in datagram stream fastpath; do jq -r ".runs[] | $row" "$d/relay-half-$m.json"; done
jq -r "(.runs[], .baseline_udp) | $row" "$d/relay-unloaded.json"
echo
echo "### One flooding pair against 8 pairs paced at 1000 pkt/s each"
echo "| delivery | p99 unloaded ms | p99 with flood ms | ratio | loss unloaded | loss with flood | flood pair Gbit/s |"
echo "|---|---|---|---|---|---|---|"
jq -r '.flood[] | "| \(.delivery) | \(.unloaded.latency_p99_ms) | \(.loaded.latency_p99_ms) | \(.p99_ratio) | \(.unloaded.loss * 100 | . * 100 | round / 100)% | \(.loaded.loss * 100 | . * 100 | round / 100)% | \(.loaded.flood_gbit_per_s) |"' "$d/relay.json"
echo
echo "### Idle clients"
echo "| transport | clients | connected | failed | connects/s | relay heap/client (after GC) | relay RSS/client |"
echo "|---|---|---|---|---|---|---|"
for t in quic tcp; do
	jq -r '"| \(.transport) | \(.clients) | \(.connected) | \(.failed) | \(.connects_per_s) | \(.relay_heap_bytes_per_client / 1000 | . * 10 | round / 10) KB | \(.relay_rss_bytes_per_client / 1000 | . * 10 | round / 10) KB |"' "$d/connect-$t.json"
done
