package portmap

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultGateway returns the IPv4 default route's gateway in the main
// routing table (mesh and exit-node routes live in tables of their own, so
// this is the physical network's router) and the node's source address
// towards it, which NAT-PMP, PCP and UPnP all need as the mapping's inside
// address. With several default routes the lowest metric wins.
func DefaultGateway() (gw, self netip.Addr, err error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return gw, self, fmt.Errorf("portmap: list routes: %w", err)
	}
	best := -1
	for _, r := range routes {
		if r.Gw == nil || !isDefault(r.Dst) {
			continue
		}
		a, ok := netip.AddrFromSlice(r.Gw.To4())
		if !ok {
			continue
		}
		if best < 0 || r.Priority < best {
			best, gw = r.Priority, a
		}
	}
	if !gw.IsValid() {
		return gw, self, errors.New("portmap: no IPv4 default gateway")
	}
	via, err := netlink.RouteGet(gw.AsSlice())
	if err != nil || len(via) == 0 || via[0].Src == nil {
		return gw, self, fmt.Errorf("portmap: source address towards %v: %v", gw, err)
	}
	self, ok := netip.AddrFromSlice(via[0].Src.To4())
	if !ok {
		return gw, self, fmt.Errorf("portmap: no IPv4 source address towards %v", gw)
	}
	return gw, self, nil
}

// isDefault reports whether dst is the default destination (netlink gives
// nil or 0.0.0.0/0).
func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0
}
