package meshnode

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/wiremesh/wiremesh/netmap"
	"golang.zx2c4.com/wireguard/tun"
)

// meshPrefix is routed into the TUN device: every mesh address.
var meshPrefix = netmap.MeshPrefix

// createTUN makes the kernel TUN device, gives it the node's address and
// routes the mesh prefix into it.
func createTUN(name string, self netip.Addr, mtu int) (tun.Device, error) {
	t, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("create tun %s (needs root or CAP_NET_ADMIN; or use --userspace): %w", name, err)
	}
	real, _ := t.Name()
	link, err := netlink.LinkByName(real)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("tun %s: %w", real, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: self.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		t.Close()
		return nil, fmt.Errorf("tun %s: add address %v: %w", real, self, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Close()
		return nil, fmt.Errorf("tun %s: up: %w", real, err)
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: meshPrefix.Addr().AsSlice(), Mask: net.CIDRMask(meshPrefix.Bits(), 32)},
		Src:       self.AsSlice(),
		Scope:     netlink.SCOPE_LINK,
	}
	if err := netlink.RouteReplace(route); err != nil {
		t.Close()
		return nil, fmt.Errorf("tun %s: route %v: %w", real, meshPrefix, err)
	}
	return t, nil
}
