#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: the lab's kernel
# tools (iproute2, nftables), traffic tools (iperf3, socat), coturn's STUN
# client for interop tests, PostgreSQL (the coordinator's shared store; tests
# start their own server with initdb and pg_ctl), dbus-daemon (a private bus
# for the systemd-resolved configurator's tests), and the Go modules. Safe to
# run repeatedly.
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
# Debian keeps PostgreSQL's programs out of PATH.
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus-daemon)

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

go mod download
