#!/usr/bin/env bash
# Fetches Debian 13 (trixie)'s miniupnpd-nftables and libc6 .debs and unpacks
# them into a cache folder, for the port-mapping lab tests. Debian 12's own
# miniupnpd (2.3.1) refuses to map when its WAN address is in a reserved
# range, and the lab's 198.18.0.0/15 is one; 2.3.9 accepts
# ext_allow_private_ipv4=yes. Its binary runs on Debian 12 through the loader
# of trixie's libc6 (see lab/miniupnpd.go).
#
# apt runs with a private configuration: its own sources file, lists, cache
# and status file under the cache folder. The system's sources, lists and
# installed packages are left alone. Safe to run repeatedly: once unpacked it
# does nothing.
#
# Cache folder: $WIREMESH_CACHE/miniupnpd (default $HOME/.cache/wiremesh).
# Prints the unpacked root on success.
set -euo pipefail

want_version=2.3.9
cache=${WIREMESH_CACHE:-${HOME:-/root}/.cache/wiremesh}/miniupnpd
root=$cache/root
stamp=$root/.wiremesh-ok

if [ -f "$stamp" ] && [ -x "$root/usr/sbin/miniupnpd" ] && [ -e "$root/usr/lib64/ld-linux-x86-64.so.2" ]; then
	echo "$root"
	exit 0
fi

for tool in apt-get dpkg-deb; do
	command -v "$tool" >/dev/null 2>&1 || { echo "miniupnpd.sh: needs $tool (Debian)" >&2; exit 1; }
done
if [ "$(dpkg --print-architecture)" != amd64 ]; then
	echo "miniupnpd.sh: only amd64 is supported (the loader path is x86-64)" >&2
	exit 1
fi

apt=$cache/apt
mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/etc/preferences.d" "$apt/etc/sources.list.d" "$cache/debs"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$apt/etc/sources.list" <<SRC
deb [signed-by=$keyring] http://deb.debian.org/debian trixie main
SRC
: >"$apt/status"
opts=(
	-o "Dir::Etc::sourcelist=$apt/etc/sources.list"
	-o "Dir::Etc::sourceparts=$apt/etc/sources.list.d"
	-o "Dir::Etc::preferencesparts=$apt/etc/preferences.d"
	-o "Dir::State::Lists=$apt/lists"
	-o "Dir::State::status=$apt/status"
	-o "Dir::Cache=$apt"
	-o "Dir::Cache::archives=$apt/archives"
	-o "Dir::Cache::pkgcache=$apt/pkgcache.bin"
	-o "Dir::Cache::srcpkgcache=$apt/srcpkgcache.bin"
	-o "APT::Architecture=amd64"
	-o "APT::Architectures=amd64"
	-o "Debug::NoLocking=1"
	-o "Acquire::Languages=none"
	-o "APT::Sandbox::User=root"
)
apt-get "${opts[@]}" -qq update >&2
(cd "$cache/debs" && rm -f ./*.deb && apt-get "${opts[@]}" -qq download miniupnpd-nftables libc6 >&2)

deb=$(ls "$cache/debs"/miniupnpd-nftables_*.deb)
ver=$(dpkg-deb -f "$deb" Version)
# 2.3.9 is the first with ext_allow_private_ipv4 that runs here; a later
# trixie point release is fine.
if ! dpkg --compare-versions "$ver" ge "$want_version"; then
	echo "miniupnpd.sh: trixie has miniupnpd-nftables $ver, want $want_version or later" >&2
	exit 1
fi

rm -rf "$root.tmp"
mkdir -p "$root.tmp"
for d in "$cache/debs"/*.deb; do dpkg-deb -x "$d" "$root.tmp"; done
# The other libraries (libnftnl, libmnl) come from the system's nftables.
loader=$root.tmp/usr/lib64/ld-linux-x86-64.so.2
if "$loader" --library-path "$root.tmp/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" --list "$root.tmp/usr/sbin/miniupnpd" | grep -q 'not found'; then
	echo "miniupnpd.sh: missing libraries:" >&2
	"$loader" --library-path "$root.tmp/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" --list "$root.tmp/usr/sbin/miniupnpd" >&2
	exit 1
fi
rm -rf "$root"
mv "$root.tmp" "$root"
echo "$ver" >"$stamp"
echo "$root"
