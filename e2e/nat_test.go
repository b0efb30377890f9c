//go:build lab

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/meshnode/paths"
)

// site is where a node sits: behind one router, two (double NAT), or a
// router that blocks UDP; portmap runs miniupnpd (NAT-PMP, PCP and UPnP)
// on the node's router.
type site struct {
	name     string
	nat      lab.NAT
	double   bool
	blockUDP bool
	fw       lab.Firewall
	portmap  bool
}

var (
	easy        = site{name: "easy", nat: lab.Easy}
	hard        = site{name: "hard", nat: lab.Hard}
	hardPortmap = site{name: "hard+portmap", nat: lab.Hard, portmap: true}
	double      = site{name: "double", nat: lab.Easy, double: true}
	udpBlocked  = site{name: "udp-blocked", nat: lab.Easy, blockUDP: true}
	bareDouble  = site{name: "bare-double", nat: lab.Easy, double: true, fw: lab.Bare}
)

func (s site) host(t testing.TB, w *world, node string) *lab.Host {
	t.Helper()
	var up *lab.Router
	if s.double {
		var err error
		up, err = w.l.AddRouter("cg-"+node, lab.RouterConfig{NAT: s.nat, Firewall: s.fw})
		if err != nil {
			t.Fatal(err)
		}
	}
	r, err := w.l.AddRouter("r-"+node, lab.RouterConfig{NAT: s.nat, Firewall: s.fw, BlockUDP: s.blockUDP, Upstream: up})
	if err != nil {
		t.Fatal(err)
	}
	h, err := w.l.AddHost(node, r)
	if err != nil {
		t.Fatal(err)
	}
	if s.portmap {
		if _, err := r.StartMiniUPnPd(lab.MiniUPnPdConfig{NATPMP: true, PCP: true, UPnP: true}); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// timeToDirect reads a node's meshnode_time_to_direct_seconds (sum/count).
func timeToDirect(n *node) (time.Duration, bool) {
	out := metricsOf(n.host.Namespace, "http://127.0.0.1:9100/metrics", "meshnode_time_to_direct_seconds_")
	var sum, count float64
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "meshnode_time_to_direct_seconds_sum":
			sum = v
		case "meshnode_time_to_direct_seconds_count":
			count = v
		}
	}
	if count == 0 {
		return 0, false
	}
	return time.Duration(sum / count * float64(time.Second)), true
}

// TestLabNATMatrix checks the path each pair of sites ends up on. Every
// pair must carry traffic; easy NATs (double NAT included) must go direct,
// and so must hard NATs whose routers grant a port mapping (miniupnpd;
// the nodes run with --port-mapping on, the default), an easy NAT with a
// hard one (the birthday search), and double NAT through bare Linux
// routers (primed punches). Two hard NATs without a port mapping and
// blocked UDP stay on the relay. Rows with a hard NAT get two relay
// regions: a node tells a hard NAT from an easy one by comparing two
// relays' STUN answers.
//
// WIREMESH_NAT_RUNS=N runs every row N times (default 1) and reports each
// row's success rate and median time to direct; with N > 1 a "direct" row
// passes at 90% or better, with 1 it must go direct.
func TestLabNATMatrix(t *testing.T) {
	runs := 1
	if v := os.Getenv("WIREMESH_NAT_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			t.Fatalf("WIREMESH_NAT_RUNS=%q: want 1..100", v)
		}
		runs = n
	}
	for _, tc := range []struct {
		a, b site
		want string // "direct" or "relay"
	}{
		{easy, easy, "direct"},
		{double, double, "direct"},
		{double, easy, "direct"},
		{easy, hard, "direct"}, // birthday search
		{hard, hard, "relay"},  // no port mapping on offer
		{hardPortmap, hardPortmap, "direct"},
		{udpBlocked, easy, "relay"},
		{bareDouble, bareDouble, "direct"}, // primed punch
	} {
		t.Run(tc.a.name+"-"+tc.b.name, func(t *testing.T) {
			var times []time.Duration
			direct := 0
			for i := range runs {
				// A subtest per run: its world (namespaces, processes)
				// is torn down before the next one starts.
				t.Run(fmt.Sprintf("run%d", i+1), func(t *testing.T) {
					path, ttd := natRun(t, tc.a, tc.b)
					if path == "direct" {
						direct++
						times = append(times, ttd)
					}
					if runs == 1 && path != tc.want {
						t.Fatalf("path %s, want %s", path, tc.want)
					}
				})
			}
			slices.Sort(times)
			var median time.Duration
			if len(times) > 0 {
				median = times[len(times)/2]
			}
			t.Logf("%s – %s: direct in %d of %d runs, median time to direct %v", tc.a.name, tc.b.name, direct, runs, median)
			switch {
			case tc.want == "relay" && direct > 0:
				t.Fatalf("went direct in %d of %d runs, want the relay", direct, runs)
			case tc.want == "direct" && direct*10 < runs*9:
				t.Fatalf("direct in %d of %d runs, want 90%%", direct, runs)
			}
		})
	}
}

// natRun starts a fresh world with a at site sa and b at sb, sends a few
// pings from a to b, and reports a's path to b once it settles and the
// time to direct the nodes measured (zero on the relay).
func natRun(t *testing.T, sa, sb site) (string, time.Duration) {
	t.Helper()
	regions := []string{"nyc"}
	if sa.nat == lab.Hard || sb.nat == lab.Hard {
		regions = append(regions, "fra")
	}
	w := newWorld(t, regions...)
	a := w.startNode("a", sa.host(t, w, "a"))
	b := w.startNode("b", sb.host(t, w, "b"))
	for _, n := range []*node{a, b} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	// Wait until both have reported endpoints (STUN done) so the
	// first packet can trigger the upgrade at once.
	w.waitEndpoints("a", "b")
	bIP := b.ip()
	if err := a.ping(bIP, 3); err != nil {
		t.Fatal(err)
	}
	// A birthday search takes up to punch.DefaultTimeout (8 s); a relay
	// row waits as long, so a late upgrade would show.
	var path string
	deadline := time.Now().Add(12 * time.Second)
	for time.Now().Before(deadline) {
		st, _ := a.status()
		p, _ := peerOf(st, "b")
		path = p.Path
		if path == "direct" {
			break
		}
		a.ping(bIP, 1) // keep traffic flowing
	}
	// Traffic flows whatever the path.
	if err := a.ping(bIP, 3); err != nil {
		t.Fatalf("after settling on %s: %v", path, err)
	}
	st, _ := a.status()
	p, _ := peerOf(st, "b")
	ttd, ok := timeToDirect(a)
	if !ok {
		ttd, _ = timeToDirect(b)
	}
	t.Logf("%s – %s: path %s (endpoint %q), time to direct %v", sa.name, sb.name, p.Path, p.Endpoint, ttd)
	if p.Path != "direct" {
		ttd = 0
	}
	return p.Path, ttd
}

// TestLabPrimedRetry: a punch between two bare double NATs spoiled on
// purpose goes direct on the retry after the conntrack timeout. Before the
// nodes start, b's host sends one full-TTL packet from the node's port to
// a's public ip:port: a's outer (bare) router records a connection to
// itself, so a's flow to b is remapped and the first punch fails. The
// retry comes after paths.PrimedRetry (35 s), once the pair has been
// quiet long enough for that entry (30 s) to expire. That retry may still
// be spoiled: until the kernel's conntrack collector removes the expired
// entries of the first try, masquerade gives a's new flow the same
// remapped port. The one after comes paths.PrimedRetrySlow (95 s) later,
// past the collector's lag. The test allows both (up to 160 s).
func TestLabPrimedRetry(t *testing.T) {
	w := newWorld(t, "nyc")
	ha := bareDouble.host(t, w, "a")
	hb := bareDouble.host(t, w, "b")
	c, err := hb.ListenUDP(":41641")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteToUDPAddrPort([]byte("spoil"), netip.AddrPortFrom(ha.PublicAddr(), 41641)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	a := w.startNode("a", ha)
	b := w.startNode("b", hb)
	for _, n := range []*node{a, b} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	w.waitEndpoints("a", "b")
	bIP := b.ip()
	if err := a.ping(bIP, 3); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	path := func() string {
		st, _ := a.status()
		p, _ := peerOf(st, "b")
		return p.Path
	}
	// The first try is spoiled: still relayed well past a normal punch.
	for time.Since(start) < 8*time.Second {
		if p := path(); p == "direct" {
			t.Fatalf("direct after %v: the spoiling packet did not spoil the first punch", time.Since(start))
		}
		a.ping(bIP, 1)
	}
	// The retries: PrimedRetry after the first attempt, PrimedRetrySlow
	// after that, and a few seconds.
	deadline := start.Add(paths.PrimedRetry + paths.PrimedRetrySlow + 30*time.Second)
	for time.Now().Before(deadline) {
		if path() == "direct" {
			retry := "first"
			if time.Since(start) > paths.PrimedRetry+20*time.Second {
				retry = "second"
			}
			t.Logf("direct after %v (the %s retry)", time.Since(start), retry)
			return
		}
		a.ping(bIP, 1)
	}
	for _, h := range []*lab.Host{ha, hb} {
		for r := h.Router; r != nil; r = r.Config.Upstream {
			out, _ := r.Command(context.Background(), "cat", "/proc/net/nf_conntrack").CombinedOutput()
			t.Logf("conntrack on %s:\n%s", r.Short, out)
		}
	}
	t.Fatalf("still %s after %v: the retry after the conntrack timeout did not go direct", path(), time.Since(start))
}
