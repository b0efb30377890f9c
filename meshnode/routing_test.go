package meshnode

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/routes"
	"github.com/wiremesh/wiremesh/netmap"
)

// TestCheckRouteFlags: the routing options are checked before anything
// starts, each bad combination with its own error.
func TestCheckRouteFlags(t *testing.T) {
	lan := []netip.Prefix{netip.MustParsePrefix("198.19.50.0/24")}
	for _, c := range []struct {
		cfg  Config
		want string
		is   error
	}{
		{Config{AdvertiseRoutes: []netip.Prefix{netip.MustParsePrefix("100.64.1.0/24")}}, "--advertise-routes", routes.ErrMeshRange},
		{Config{Userspace: true, AdvertiseRoutes: lan}, "kernel TUN", nil},
		{Config{Userspace: true, AdvertiseExitNode: true}, "kernel TUN", nil},
		{Config{ExitNodeAllowLAN: true}, "needs --exit-node", nil},
	} {
		err := checkRouteFlags(c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) || (c.is != nil && !errors.Is(err, c.is)) {
			t.Errorf("%+v: %v, want an error with %q", c.cfg, err, c.want)
		}
	}
	for _, cfg := range []Config{
		{},
		{AdvertiseRoutes: lan, AdvertiseExitNode: true, SNATSubnetRoutes: true},
		{Userspace: true, AcceptRoutes: true, ExitNode: "ex"},
		{ExitNode: "100.64.0.9", ExitNodeAllowLAN: true},
	} {
		if err := checkRouteFlags(cfg); err != nil {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
	if (Config{Userspace: true, ExitNode: "ex"}).markSockets() || !(Config{AcceptRoutes: true}).markSockets() ||
		(Config{AdvertiseRoutes: lan}).markSockets() {
		t.Error("sockets are marked exactly on a kernel-TUN node that uses routes")
	}
}

// TestRouteIPsInUAPI: a peer that is primary for routed prefixes carries
// them in its allowed IPs beside its address, in a peer change and in a
// route move; a peer that loses them keeps its address only.
func TestRouteIPsInUAPI(t *testing.T) {
	k := key.NewNode().Public()
	addr := netip.MustParsePrefix("100.64.0.2/32")
	p := netmap.Node{NodeKey: k, Addresses: []netip.Prefix{addr}, AllowedIPs: []netip.Prefix{addr}}
	lan := netip.MustParsePrefix("198.19.50.0/24")
	var b strings.Builder
	writeUAPI(&b, peerChange{key: k, next: p, has: true, routed: []netip.Prefix{lan}})
	if s := b.String(); !strings.Contains(s, "allowed_ip=100.64.0.2/32\n") || !strings.Contains(s, "allowed_ip=198.19.50.0/24\n") {
		t.Fatalf("new peer with a route:\n%s", s)
	}
	if got := peerAllowedIPs(p, nil); !slices.Equal(got, []netip.Prefix{addr}) {
		t.Fatalf("no routes: %v", got)
	}
	if got := peerAllowedIPs(p, []netip.Prefix{routes.ExitPrefix}); !slices.Equal(got, []netip.Prefix{addr, routes.ExitPrefix}) {
		t.Fatalf("exit node: %v", got)
	}
	if p.AllowedIPs[len(p.AllowedIPs)-1] != addr || len(p.AllowedIPs) != 1 {
		t.Fatal("peerAllowedIPs changed the peer's own slice")
	}
}
