//go:build lab

package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// site is where a node sits: behind one router, two (double NAT), or a
// router that blocks UDP.
type site struct {
	name     string
	nat      lab.NAT
	double   bool
	blockUDP bool
	fw       lab.Firewall
}

var (
	easy       = site{name: "easy", nat: lab.Easy}
	hard       = site{name: "hard", nat: lab.Hard}
	double     = site{name: "double", nat: lab.Easy, double: true}
	udpBlocked = site{name: "udp-blocked", nat: lab.Easy, blockUDP: true}
	bareDouble = site{name: "bare-double", nat: lab.Easy, double: true, fw: lab.Bare}
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
// hard NATs and blocked UDP stay on the relay. All routers are home
// routers except in the bare cell, which reports what happens.
func TestLabNATMatrix(t *testing.T) {
	for _, tc := range []struct {
		a, b site
		want string // "direct", "relay", or "" to report only
	}{
		{easy, easy, "direct"},
		{double, double, "direct"},
		{double, easy, "direct"},
		{easy, hard, "relay"},
		{hard, hard, "relay"},
		{udpBlocked, easy, "relay"},
		{bareDouble, bareDouble, ""},
	} {
		t.Run(tc.a.name+"-"+tc.b.name, func(t *testing.T) {
			w := newWorld(t, "nyc")
			a := w.startNode("a", tc.a.host(t, w, "a"))
			b := w.startNode("b", tc.b.host(t, w, "b"))
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
			var path string
			deadline := time.Now().Add(6 * time.Second)
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
				ttd, ok = timeToDirect(b)
			}
			t.Logf("%s – %s: path %s (endpoint %q), time to direct %v (measured: %v)", tc.a.name, tc.b.name, p.Path, p.Endpoint, ttd, ok)
			if tc.want != "" && p.Path != tc.want {
				t.Fatalf("path %s, want %s", p.Path, tc.want)
			}
		})
	}
}
