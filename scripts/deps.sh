#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: the lab's kernel
# tools (iproute2, nftables), traffic tools (iperf3, socat), coturn's STUN
# client for interop tests, dbus-daemon (a private bus for the systemd-resolved
# configurator's tests), Prometheus (prometheus and promtool, for the live
# dashboard check and the rule tests), systemd-analyze (to verify the units
# in dist/systemd/), PostgreSQL (the coordinator's shared store; tests start
# their own server with initdb and pg_ctl), Chromium (the web console's
# browser tests), Debian 13's miniupnpd (unpacked into a cache folder, not
# installed) and the Go modules. Safe to run repeatedly.
set -euo pipefail

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v turnutils_stunclient >/dev/null 2>&1 || need+=(coturn)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v wg >/dev/null 2>&1 || need+=(wireguard-tools)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus-daemon)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The web console's browser tests drive headless Chromium.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# Debian keeps PostgreSQL's programs out of PATH.
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)

if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing ${need[*]}; run as root (or install them) to run the lab tests" >&2
		if [ "${CI:-}" = "true" ]; then exit 1; fi
	else
		echo "deps: installing ${need[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	fi
fi

# coturn's package may start a TURN server on install, and postgresql's a
# cluster; the tests start their own and want neither.
if command -v systemctl >/dev/null 2>&1; then
	systemctl stop coturn >/dev/null 2>&1 || true
	systemctl stop postgresql >/dev/null 2>&1 || true
fi
if command -v pg_ctlcluster >/dev/null 2>&1; then
	for c in /etc/postgresql/*/*; do
		[ -d "$c" ] || continue
		pg_ctlcluster "$(basename "$(dirname "$c")")" "$(basename "$c")" stop >/dev/null 2>&1 || true
	done
fi
# Likewise prometheus's package starts its system service where an init
# system runs; the tests start their own prometheus process with a temp
# config and storage dir, never the service.
if command -v systemctl >/dev/null 2>&1; then
	systemctl stop prometheus >/dev/null 2>&1 || true
	systemctl disable prometheus >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/prometheus ] && [ "$(id -u)" -eq 0 ]; then /etc/init.d/prometheus stop >/dev/null 2>&1 || true; fi

# Debian 13's miniupnpd for the port-mapping lab tests, unpacked into a cache
# folder with a private apt configuration (see scripts/miniupnpd.sh).
if ! "$(dirname "$0")/miniupnpd.sh" >/dev/null; then
	echo "deps: could not fetch miniupnpd; the port-mapping lab tests will fail" >&2
	if [ "${CI:-}" = "true" ]; then exit 1; fi
fi

go mod download
