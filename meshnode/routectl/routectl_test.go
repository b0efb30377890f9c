package routectl

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/paths"
	"github.com/wiremesh/wiremesh/meshnode/router"
	"github.com/wiremesh/wiremesh/meshnode/routes"
	"github.com/wiremesh/wiremesh/netmap"
)

// fakeMesh answers probes for the peers marked alive and records what the
// controller installs.
type fakeMesh struct {
	mu      sync.Mutex
	alive   map[key.NodePublic]bool
	probed  map[key.NodePublic]int
	allowed map[key.NodePublic][]netip.Prefix
	states  []router.State
	fwd     []netip.Prefix
}

func newFakeMesh() *fakeMesh {
	return &fakeMesh{alive: map[key.NodePublic]bool{}, probed: map[key.NodePublic]int{}}
}

func (f *fakeMesh) probe(k key.NodePublic, ch chan<- paths.Pong) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.probed[k]++
	if f.alive[k] {
		ch <- paths.Pong{From: k}
	}
	return 1
}

// present: a dead peer is off its relay too.
func (f *fakeMesh) present(k key.NodePublic) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.alive[k]
}

func (f *fakeMesh) setAlive(k key.NodePublic, on bool) {
	f.mu.Lock()
	f.alive[k] = on
	f.mu.Unlock()
}

func (f *fakeMesh) Set(s router.State) error {
	f.mu.Lock()
	f.states = append(f.states, s)
	f.mu.Unlock()
	return nil
}

func (f *fakeMesh) SetRoutes(ps []netip.Prefix) {
	f.mu.Lock()
	f.fwd = ps
	f.mu.Unlock()
}

func (f *fakeMesh) setAllowed(m map[key.NodePublic][]netip.Prefix) {
	f.mu.Lock()
	f.allowed = m
	f.mu.Unlock()
}

func (f *fakeMesh) last() (router.State, map[key.NodePublic][]netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.states) == 0 {
		return router.State{}, f.allowed
	}
	return f.states[len(f.states)-1], f.allowed
}

var (
	lan     = netip.MustParsePrefix("198.19.50.0/24")
	lanHalf = netip.MustParsePrefix("198.19.50.128/25")
)

func peerNode(name string, k key.NodePublic, ip string, rs []netip.Prefix, exit bool) netmap.Node {
	a := netip.MustParsePrefix(ip + "/32")
	return netmap.Node{Name: name, NodeKey: k, Addresses: []netip.Prefix{a}, AllowedIPs: []netip.Prefix{a},
		Routes: rs, ExitNodeOption: exit, Online: true}
}

// sortedKeys returns two keys in the selector's order (the first wins a
// tie).
func sortedKeys() (key.NodePublic, key.NodePublic) {
	a, b := key.NewNode().Public(), key.NewNode().Public()
	if b.String() < a.String() {
		a, b = b, a
	}
	return a, b
}

func start(t *testing.T, cfg Config, f *fakeMesh) (*Controller, context.CancelFunc) {
	cfg.OS, cfg.Probe, cfg.SetAllowed, cfg.Present = f, f.probe, f.setAllowed, f.present
	c := New(cfg)
	if err := c.Start(netip.MustParseAddr("100.64.0.1")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, cancel
}

// TestFailoverMovesAllowedIPs: two routers offer a prefix; the primary
// carries it in WireGuard and the kernel route is up; when the primary
// stops answering the prefix moves to the standby; with both dead the
// route is down (only the backstop) and nobody carries it.
func TestFailoverMovesAllowedIPs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeMesh()
		r1, r2 := sortedKeys()
		f.setAlive(r1, true)
		f.setAlive(r2, true)
		c, _ := start(t, Config{AcceptRoutes: true}, f)
		self := netip.MustParseAddr("100.64.0.1")
		c.Update(self, []netmap.Node{
			peerNode("r1", r1, "100.64.0.2", []netip.Prefix{lan}, false),
			peerNode("r2", r2, "100.64.0.3", []netip.Prefix{lan}, false),
		})
		time.Sleep(3 * time.Second)
		st, allowed := f.last()
		if !slices.Equal(allowed[r1], []netip.Prefix{lan}) || len(allowed[r2]) != 0 {
			t.Fatalf("allowed %v, want %s on r1 only", allowed, lan)
		}
		if !slices.Equal(st.Routes, []router.Route{{Prefix: lan, Up: true}}) {
			t.Fatalf("routes %+v", st.Routes)
		}
		if want := []netip.Addr{self, netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("100.64.0.3")}; !slices.Equal(st.MeshAddrs, want) {
			t.Fatalf("mesh addrs %v, want %v", st.MeshAddrs, want)
		}
		if s := c.Status(); !slices.Equal(s.Primary[r1], []netip.Prefix{lan}) || s.ExitNode != "" {
			t.Fatalf("status %+v", s)
		}
		if !c.Routed(netip.MustParseAddr("198.19.50.9")) || c.Routed(netip.MustParseAddr("198.19.51.9")) {
			t.Fatal("Routed disagrees with the up route")
		}

		f.setAlive(r1, false)
		time.Sleep(3 * time.Second)
		st, allowed = f.last()
		if !slices.Equal(allowed[r2], []netip.Prefix{lan}) || len(allowed[r1]) != 0 {
			t.Fatalf("after r1 died: allowed %v, want %s on r2 only", allowed, lan)
		}
		if !slices.Equal(st.Routes, []router.Route{{Prefix: lan, Up: true}}) {
			t.Fatalf("after r1 died: routes %+v", st.Routes)
		}

		f.setAlive(r2, false)
		time.Sleep(3 * time.Second)
		st, allowed = f.last()
		if len(allowed[r1])+len(allowed[r2]) != 0 {
			t.Fatalf("both dead: allowed %v", allowed)
		}
		if !slices.Equal(st.Routes, []router.Route{{Prefix: lan, Up: false}}) {
			t.Fatalf("both dead: routes %+v, want the route down", st.Routes)
		}
		if c.Routed(netip.MustParseAddr("198.19.50.9")) {
			t.Fatal("Routed through a down route")
		}
	})
}

// TestMostSpecificWins: a /25 inside an offered /24 decides for its
// addresses, even while its router is down.
func TestMostSpecificWins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeMesh()
		r1, r2 := sortedKeys()
		f.setAlive(r1, true)
		c, _ := start(t, Config{AcceptRoutes: true}, f)
		c.Update(netip.MustParseAddr("100.64.0.1"), []netmap.Node{
			peerNode("wide", r1, "100.64.0.2", []netip.Prefix{lan}, false),
			peerNode("narrow", r2, "100.64.0.3", []netip.Prefix{lanHalf}, false),
		})
		time.Sleep(3 * time.Second)
		if !c.Routed(netip.MustParseAddr("198.19.50.9")) {
			t.Fatal("the /24's own half not routed")
		}
		if c.Routed(netip.MustParseAddr("198.19.50.200")) {
			t.Fatal("an address in the down /25 routed through the /24")
		}
		st, _ := f.last()
		if !slices.Contains(st.Routes, router.Route{Prefix: lanHalf, Up: false}) {
			t.Fatalf("routes %+v: the /25 should be installed down", st.Routes)
		}
	})
}

// TestExitNode: a configured exit node that is missing, then not offered,
// is a down route (the kernel blocks instead of leaking); offered and
// answering it carries 0.0.0.0/0 and is reported up; the mesh range never
// counts as routed through it. Subnet routes are not used without
// AcceptRoutes, but the status still names their primary.
func TestExitNode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeMesh()
		ex, r := sortedKeys()
		f.setAlive(ex, true)
		f.setAlive(r, true)
		c, _ := start(t, Config{ExitNode: "100.64.0.9", AllowLAN: true,
			LAN: func() ([]netip.Prefix, error) { return []netip.Prefix{netip.MustParsePrefix("198.19.4.0/24")}, nil }}, f)
		self := netip.MustParseAddr("100.64.0.1")
		c.Update(self, nil)
		time.Sleep(time.Second)
		st, _ := f.last()
		down := []router.Route{{Prefix: routes.ExitPrefix, Up: false}}
		if !slices.Equal(st.Routes, down) || !st.AllowLANAccess || len(st.LAN) != 1 {
			t.Fatalf("exit node missing: state %+v, want the exit route down with LAN access", st)
		}
		if s := c.Status(); s.ExitNode != "100.64.0.9" || s.ExitNodeUp {
			t.Fatalf("status %+v", s)
		}
		rt := peerNode("r", r, "100.64.0.3", []netip.Prefix{lan}, false)
		c.Update(self, []netmap.Node{peerNode("ex", ex, "100.64.0.9", nil, false), rt})
		time.Sleep(time.Second)
		if st, _ := f.last(); !slices.Equal(st.Routes, down) {
			t.Fatalf("exit node not offered: routes %+v", st.Routes)
		}
		if s := c.Status(); s.ExitNode != "ex" || s.ExitNodeUp {
			t.Fatalf("status %+v", s)
		}
		c.Update(self, []netmap.Node{peerNode("ex", ex, "100.64.0.9", nil, true), rt})
		time.Sleep(3 * time.Second)
		st, allowed := f.last()
		if !slices.Equal(st.Routes, []router.Route{{Prefix: routes.ExitPrefix, Up: true}}) {
			t.Fatalf("exit node offered: routes %+v", st.Routes)
		}
		if !slices.Equal(allowed[ex], []netip.Prefix{routes.ExitPrefix}) || len(allowed[r]) != 0 {
			t.Fatalf("allowed %v", allowed)
		}
		s := c.Status()
		if s.ExitNode != "ex" || !s.ExitNodeUp || !slices.Equal(s.Primary[r], []netip.Prefix{lan}) {
			t.Fatalf("status %+v", s)
		}
		for dst, want := range map[string]bool{"198.18.7.7": true, "198.19.50.9": true, "100.64.0.3": false} {
			if got := c.Routed(netip.MustParseAddr(dst)); got != want {
				t.Errorf("Routed(%s) = %v, want %v", dst, got, want)
			}
		}
		f.mu.Lock()
		probedRouter := f.probed[r]
		f.mu.Unlock()
		if probedRouter != 0 {
			t.Fatalf("a router whose routes are not accepted was pinged %d times", probedRouter)
		}
	})
}

// TestRouterSide: an advertising node's forwarder gets its routes and the
// exit prefix; the kernel state carries the advertisement and SNAT.
func TestRouterSide(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeMesh()
		cfg := Config{Advertise: []netip.Prefix{lan}, AdvertiseExit: true, SNAT: true, Forwarder: f}
		c, _ := start(t, cfg, f)
		c.Update(netip.MustParseAddr("100.64.0.1"), nil)
		time.Sleep(time.Second)
		st, _ := f.last()
		if !slices.Equal(st.Advertise, []netip.Prefix{lan}) || !st.ExitNode || !st.SNAT || len(st.Routes) != 0 {
			t.Fatalf("state %+v", st)
		}
		f.mu.Lock()
		fwd := f.fwd
		f.mu.Unlock()
		if !slices.Equal(fwd, []netip.Prefix{lan, routes.ExitPrefix}) {
			t.Fatalf("forwarder routes %v", fwd)
		}
	})
}

// TestOwnRoutesNotAccepted: a router that also accepts routes does not take
// another router's offer for (part of) its own network, only the others.
func TestOwnRoutesNotAccepted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeMesh()
		other, _ := sortedKeys()
		f.setAlive(other, true)
		elsewhere := netip.MustParsePrefix("198.19.60.0/24")
		c, _ := start(t, Config{AcceptRoutes: true, Advertise: []netip.Prefix{lan}}, f)
		c.Update(netip.MustParseAddr("100.64.0.1"), []netmap.Node{
			peerNode("standby", other, "100.64.0.2", []netip.Prefix{lanHalf, elsewhere}, false),
		})
		time.Sleep(3 * time.Second)
		st, allowed := f.last()
		if !slices.Equal(st.Routes, []router.Route{{Prefix: elsewhere, Up: true}}) {
			t.Fatalf("routes %+v, want only %s", st.Routes, elsewhere)
		}
		if !slices.Equal(allowed[other], []netip.Prefix{elsewhere}) {
			t.Fatalf("allowed %v", allowed)
		}
	})
}
