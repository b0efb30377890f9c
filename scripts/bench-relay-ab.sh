#!/usr/bin/env bash
# A/B of relay fast-path throughput between two builds, in one sitting,
# alternating them ROUNDS times so load changes hit both alike. Put the
# binaries in $AB (default /tmp/ab) as before-relayd, before-loadtest,
# after-relayd and after-loadtest, for example:
#   git archive REV | tar -x -C $AB/src && (cd $AB/src && go build -o ../before-relayd ./cmd/relayd ...)
# Each run: loadtest relay, 8 pairs, 1280-byte packets, fast path, 5 s at
# full speed, then the fastest paced rate with loss below 1 %. Results:
# $AB/{before,after}-ROUND.json; the load average per run in $AB/log.
# It uses 127.0.0.1:7400-7404 and stops every relayd it starts (by PID).
set -euo pipefail
AB=${AB:-/tmp/ab}
ROUNDS=${ROUNDS:-3}
cd "$AB"
SK=$(./after-loadtest keygen --out "$AB/sign.key")
for round in $(seq "$ROUNDS"); do
  for v in before after; do
    rm -rf $AB/state-$v
    ./$v-relayd --region bench --state-dir $AB/state-$v --listen 127.0.0.1:7400 --listen-tcp off --trust-key "$SK" \
      --fastpath-listen 127.0.0.1:7404 --metrics-listen 127.0.0.1:7401 --log-level warn &
    RP=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:7401/healthz >/dev/null && break; sleep 0.1; done
    PIN=$(./$v-relayd pin --state-dir $AB/state-$v | sed -n 1p)
    RK=$(./$v-relayd pin --state-dir $AB/state-$v | sed -n 2p)
    ./$v-loadtest relay --relay 127.0.0.1:7400 --pin "$PIN" --relay-key "$RK" --signing-key-file $AB/sign.key \
      --pairs 8 --size 1280 --duration 5s --delivery fastpath --max-loss 0.01 --search-duration 2s --progress 0 --json > $AB/$v-$round.json 2>$AB/$v-$round.err || true
    kill $RP; wait $RP 2>/dev/null || true
    echo "$v $round $(uptime | sed 's/.*load average/load/')" >> $AB/log
  done
done
echo done >> $AB/log
