//go:build lab

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/internal/poll"
	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// mappedSite is a host behind a hard-NAT home router that runs a real
// miniupnpd.
type mappedSite struct {
	host   *lab.Host
	router *lab.Router
	upnpd  *lab.MiniUPnPd
}

// hardMapped builds a hard-NAT router running miniupnpd with cfg's
// protocols and one host behind it.
func hardMapped(t *testing.T, w *world, name string, cfg lab.MiniUPnPdConfig) mappedSite {
	t.Helper()
	r, err := w.l.AddRouter("r-"+name, lab.RouterConfig{NAT: lab.Hard})
	if err != nil {
		t.Fatal(err)
	}
	h, err := w.l.AddHost(name, r)
	if err != nil {
		t.Fatal(err)
	}
	mu, err := r.StartMiniUPnPd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return mappedSite{host: h, router: r, upnpd: mu}
}

// tryNetcheck runs `meshnode netcheck --json` against n.
func (n *node) tryNetcheck() (localapi.Netcheck, error) {
	var nc localapi.Netcheck
	out, err := n.w.run("meshnode", "netcheck", "--json", "--state-dir", n.dir)
	if err != nil {
		return nc, err
	}
	err = json.Unmarshal([]byte(out), &nc)
	return nc, err
}

// waitPortMapping waits until n's netcheck reports kind.
func (n *node) waitPortMapping(kind string) {
	n.w.t.Helper()
	var last localapi.Netcheck
	if !poll.Wait(poll.DefaultTimeout, func() bool {
		nc, err := n.tryNetcheck()
		last = nc
		return err == nil && nc.PortMapping == kind
	}) {
		n.w.t.Fatalf("%s: port_mapping never became %q: %+v", n.name, kind, last)
	}
}

// waitRule waits until miniupnpd holds a DNAT rule for port.
func (s mappedSite) waitRule(t *testing.T, port uint16) {
	t.Helper()
	var rules []string
	if !poll.Wait(poll.DefaultTimeout, func() bool {
		rules, _ = s.upnpd.Rules()
		return slices.ContainsFunc(rules, func(r string) bool { return containsPort(r, port) })
	}) {
		t.Fatalf("%s: no DNAT rule for port %d: %q", s.router.Short, port, rules)
	}
}

func containsPort(rule string, port uint16) bool {
	p := strconv.Itoa(int(port))
	for i := 0; i+len(p) <= len(rule); i++ {
		if rule[i:i+len(p)] == p && (i == 0 || rule[i-1] < '0' || rule[i-1] > '9') &&
			(i+len(p) == len(rule) || rule[i+len(p)] < '0' || rule[i+len(p)] > '9') {
			return true
		}
	}
	return false
}

// untilDirect pings from a to b until a's status shows b on a direct path
// or the bound passes; it returns the time that took.
func untilDirect(a, b *node, bound time.Duration) (time.Duration, bool) {
	bIP := b.ip()
	start := time.Now()
	for time.Since(start) < bound {
		st, _ := a.status()
		if p, _ := peerOf(st, b.name); p.Path == "direct" {
			return time.Since(start), true
		}
		a.ping(bIP, 1)
	}
	return time.Since(start), false
}

// portMapRun is one hard–hard run: two nodes behind hard-NAT routers that
// run miniupnpd (A: every protocol, so NAT-PMP wins; B: UPnP only, which
// needs the node's STUN address, and B runs in userspace mode), both with
// --port-mapping on by default. It checks both paths end up direct through
// the routers' mappings, and that each mapping is deleted when its node
// stops. It returns A's own time to direct (meshnode_time_to_direct_seconds:
// from the upgrade attempt to the first direct pong) and the time from the
// nodes' start to the direct path (registration, STUN, mapping included).
func portMapRun(t *testing.T, bound time.Duration) (mttd, fromStart time.Duration) {
	w := newWorld(t, "nyc")
	sa := hardMapped(t, w, "a", lab.MiniUPnPdConfig{NATPMP: true, PCP: true, UPnP: true})
	sb := hardMapped(t, w, "b", lab.MiniUPnPdConfig{UPnP: true})
	started := time.Now()
	a := w.startNode("a", sa.host)
	b := w.startNode("b", sb.host, "--userspace", "--socks5", "127.0.0.1:1080")
	for _, n := range []*node{a, b} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	const port = 41641 // meshnode's default; miniupnpd grants the port asked for
	a.waitPortMapping("nat-pmp")
	b.waitPortMapping("upnp")
	sa.waitRule(t, port)
	sb.waitRule(t, port)
	mappedA, mappedB := netip.AddrPortFrom(sa.router.WAN, port), netip.AddrPortFrom(sb.router.WAN, port)
	w.waitEndpoints("a", "b")

	ttd, ok := untilDirect(a, b, bound)
	if !ok {
		st, _ := a.status()
		t.Fatalf("no direct path within %v: %+v", bound, st.Peers)
	}
	fromStart = time.Since(started)
	if err := a.ping(b.ip(), 3); err != nil {
		t.Fatal(err)
	}
	// Each side's path ends on the other's router, and at least one is
	// the router's mapped address. Both pings start at the mapped
	// addresses; the one whose pong comes back first picks the path. A
	// side may instead settle on the port the peer's hard NAT chose
	// towards our mapping (learned from the peer's ping): that is the
	// reply direction of the same mapped flow, so the pair then shares
	// one NAT flow. Without a mapping neither exists (subtest without).
	sta := a.waitStatus("B direct", func(st localapi.Status) bool { p, _ := peerOf(st, "b"); return p.Path == "direct" })
	stb := b.waitStatus("A direct", func(st localapi.Status) bool { p, _ := peerOf(st, "a"); return p.Path == "direct" })
	pb, _ := peerOf(sta, "b")
	pa, _ := peerOf(stb, "a")
	epB, errB := netip.ParseAddrPort(pb.Endpoint)
	epA, errA := netip.ParseAddrPort(pa.Endpoint)
	if errA != nil || errB != nil || epB.Addr() != sb.router.WAN || epA.Addr() != sa.router.WAN || (epB != mappedB && epA != mappedA) {
		t.Fatalf("endpoints: A→B %s (B's mapping %s), B→A %s (A's mapping %s)", pb.Endpoint, mappedB, pa.Endpoint, mappedA)
	}
	mttd, _ = timeToDirect(a)
	t.Logf("hard – hard with port mapping: direct %v after A's first ping, %v after the nodes' start (A's meshnode_time_to_direct_seconds %v); A→B %s, B→A %s",
		ttd.Round(time.Millisecond), fromStart.Round(time.Millisecond), mttd.Round(time.Millisecond), pb.Endpoint, pa.Endpoint)

	// Stopping a node deletes its mapping before the process exits.
	for _, c := range []struct {
		n *node
		s mappedSite
	}{{a, sa}, {b, sb}} {
		c.n.stop()
		if rules, err := c.s.upnpd.Rules(); err != nil || len(rules) != 0 {
			t.Fatalf("%s stopped: mapping still there: %q %v", c.n.name, rules, err)
		}
	}
	return mttd, fromStart
}

// withoutRun is the same pair with --port-mapping=false on both nodes and
// miniupnpd still running on both routers: it stays on the relay, maps
// nothing and netcheck says "".
func withoutRun(t *testing.T, bound time.Duration) {
	w := newWorld(t, "nyc")
	sa := hardMapped(t, w, "a", lab.MiniUPnPdConfig{NATPMP: true, PCP: true, UPnP: true})
	sb := hardMapped(t, w, "b", lab.MiniUPnPdConfig{NATPMP: true, PCP: true, UPnP: true})
	a := w.startNode("a", sa.host, "--port-mapping=false")
	b := w.startNode("b", sb.host, "--port-mapping=false")
	for _, n := range []*node{a, b} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	w.waitEndpoints("a", "b")
	if _, ok := untilDirect(a, b, bound); ok {
		t.Fatal("hard – hard went direct without port mapping")
	}
	if err := a.ping(b.ip(), 3); err != nil {
		t.Fatalf("relayed traffic: %v", err)
	}
	st, _ := a.status()
	if p, _ := peerOf(st, "b"); p.Path != "relay" {
		t.Fatalf("path %q, want relay", p.Path)
	}
	for _, c := range []struct {
		n *node
		s mappedSite
	}{{a, sa}, {b, sb}} {
		if nc := c.n.netcheck(t); nc.PortMapping != "" {
			t.Fatalf("%s netcheck: %+v", c.n.name, nc)
		}
		if rules, err := c.s.upnpd.Rules(); err != nil || len(rules) != 0 {
			t.Fatalf("%s mapped with --port-mapping=false: %q %v", c.n.name, rules, err)
		}
	}
}

// TestLabPortMappingHardHard: hard – hard goes direct through the routers'
// port mappings (NAT-PMP on one side, UPnP on the other; kernel TUN on
// one, userspace on the other), the paths end at the mapped addresses (see
// portMapRun for the one variation), and each mapping goes when its node
// stops. Without port
// mapping (--port-mapping=false, miniupnpd still running) the same pair
// stays on the relay, maps nothing and netcheck says "".
//
// WIREMESH_PORTMAP_RUNS=N repeats the mapped case N times (BENCHMARKS.md:
// success rate and time to direct over 20 runs); each run is bounded.
func TestLabPortMappingHardHard(t *testing.T) {
	const bound = 10 * time.Second
	runs := 1
	if s := os.Getenv("WIREMESH_PORTMAP_RUNS"); s != "" {
		var err error
		if runs, err = strconv.Atoi(s); err != nil || runs < 1 || runs > 50 {
			t.Fatalf("WIREMESH_PORTMAP_RUNS=%q: want 1 to 50", s)
		}
	}
	t.Run("mapped", func(t *testing.T) {
		if runs == 1 {
			portMapRun(t, bound)
			return
		}
		var ttds, starts []float64
		for i := range runs {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				mttd, fromStart := portMapRun(t, bound)
				ttds, starts = append(ttds, mttd.Seconds()), append(starts, fromStart.Seconds())
			})
		}
		if len(ttds) == 0 {
			return
		}
		slices.Sort(ttds)
		slices.Sort(starts)
		t.Logf("hard – hard with port mapping: direct in %d/%d runs; time to direct (meshnode_time_to_direct_seconds): median %.3f s, max %.3f s; from the nodes' start: median %.2f s, max %.2f s",
			len(ttds), runs, median(ttds), ttds[len(ttds)-1], median(starts), starts[len(starts)-1])
	})
	t.Run("without", func(t *testing.T) {
		if runs == 1 {
			withoutRun(t, bound)
			return
		}
		relayed := 0
		for i := range runs {
			if t.Run(fmt.Sprint(i), func(t *testing.T) { withoutRun(t, bound) }) {
				relayed++
			}
		}
		t.Logf("hard – hard without port mapping (baseline): stayed relayed in %d/%d runs", relayed, runs)
	})
}
