#!/usr/bin/env bash
# Wiremesh's relay against Tailscale's DERP, side by side in one lab run
# (issue #11). Needs root, /dev/net/tun, iproute2, nftables and iperf3.
#
# Builds Tailscale v1.86.5 (derper, tailscaled, tailscale) with the Go
# toolchain that version needs into $TSBIN (default: outside the repo, in
# ~/.cache/wiremesh-tailscale-bin), and Tailscale's test control server
# (bench/tailscale/testcontrol, its own module) with the same toolchain, then
# runs BenchmarkLabRelayVsTailscale (e2e/tailscale_test.go, build tags
# `lab tailscale`, so never part of `make test`): in one lab, two Tailscale
# nodes behind hard NATs relayed by derper, and two Wiremesh nodes behind
# hard NATs relayed by relayd's fast path, derper and relayd on the same
# host; each of $RUNS iterations runs iperf3 TCP for 5 s over Tailscale and
# then over Wiremesh, and the benchmark prints both rates, the ratio, the
# retransmits and each relay's CPU seconds per gigabit.
#
# Every Tailscale process runs inside the lab's network namespaces, with
# private /etc, /run and /var/lib mounts, its state in a temporary
# directory and TS_NO_LOGS_NO_SUPPORT=true; the lab deletes its namespaces
# when the benchmark ends, and on any exit this script also sweeps
# namespaces left by a killed run (only those whose owning process is gone).
#
#   sudo bench/relay-vs-tailscale.sh              # RUNS=3
#   sudo RUNS=5 TSBIN=/work/tsbin bench/relay-vs-tailscale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
TSVERSION=v1.86.5
TSTOOLCHAIN=${TSTOOLCHAIN:-go1.27.3}
TSBIN=${TSBIN:-${XDG_CACHE_HOME:-$HOME/.cache}/wiremesh-tailscale-bin}
case "$TSBIN" in /*) ;; *) TSBIN=$PWD/$TSBIN ;; esac
mkdir -p "$TSBIN"

sweep() { go run ./lab/cmd/labsweep || true; }
trap sweep EXIT

if [ ! -x "$TSBIN/tailscaled" ] || [ ! -x "$TSBIN/tailscale" ] || [ ! -x "$TSBIN/derper" ] ||
	! "$TSBIN/tailscaled" --version | grep -q "^${TSVERSION#v}"; then
	echo "building Tailscale $TSVERSION into $TSBIN"
	GOBIN=$TSBIN GOTOOLCHAIN=$TSTOOLCHAIN go install \
		tailscale.com/cmd/derper@$TSVERSION \
		tailscale.com/cmd/tailscaled@$TSVERSION \
		tailscale.com/cmd/tailscale@$TSVERSION
fi
(cd bench/tailscale/testcontrol && GOTOOLCHAIN=$TSTOOLCHAIN CGO_ENABLED=0 go build -o "$TSBIN/testcontrol" .)

echo "load before: $(uptime)"
WIREMESH_TAILSCALE_BIN=$TSBIN go test -tags 'lab tailscale' -count=1 -timeout 20m -v \
	-run '^$' -bench BenchmarkLabRelayVsTailscale -benchtime "${RUNS}x" ./e2e/
echo "load after: $(uptime)"
