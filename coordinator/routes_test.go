package coordinator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/coordinator/store/pgtest"
	"github.com/wiremesh/wiremesh/netmap"
)

var (
	lan      = netip.MustParsePrefix("198.19.50.0/24")
	lan2     = netip.MustParsePrefix("198.19.60.0/24")
	exitPfx  = netip.MustParsePrefix("0.0.0.0/0")
	trueVal  = true
	falseVal = false
)

func advertise(t *testing.T, n *coordtest.Node, routes []netip.Prefix, exit *bool) {
	t.Helper()
	if err := n.Client.Update(context.Background(), netmap.UpdateRequest{AdvertisedRoutes: &routes, ExitNode: exit}); err != nil {
		t.Fatalf("advertise %v: %v", routes, err)
	}
}

func routeRow(s *coordtest.Server, node, prefix string) (coordinator.RouteInfo, bool) {
	for _, r := range s.Routes() {
		if r.Node == node && r.Prefix == prefix {
			return r, true
		}
	}
	return coordinator.RouteInfo{}, false
}

// TestRoutesApproveReachesPeer: an advertised route is listed but not
// given to peers until approved; approving it (and the exit node) sends a
// connected peer a delta with the route; unapproving takes it away.
func TestRoutesApproveReachesPeer(t *testing.T) {
	s := coordtest.Start(t)
	ctx := context.Background()
	k := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	router := s.Register(t, k, "router")
	client := s.Register(t, k, "client")
	wr := watch(t, router, netmap.MapRequest{})
	wc := watch(t, client, netmap.MapRequest{})
	wc.waitFor("client sees router online", func(nm *netmap.NetworkMap) bool {
		p, ok := nm.PeerByName("router")
		return ok && p.Online
	})

	advertise(t, router, []netip.Prefix{lan}, &trueVal)
	if r, ok := routeRow(s, "router", lan.String()); !ok || !r.Advertised || r.Approved || r.Primary {
		t.Fatalf("advertised, unapproved route: %+v (listed %v)", r, ok)
	}
	if r, ok := routeRow(s, "router", exitPfx.String()); !ok || !r.Advertised || r.Approved {
		t.Fatalf("exit offer: %+v (listed %v)", r, ok)
	}

	if err := s.ApproveRoute(ctx, "router", lan.String(), true); err != nil {
		t.Fatal(err)
	}
	frames := len(wc.frames)
	nm := wc.waitFor("client gets the approved route", func(nm *netmap.NetworkMap) bool {
		p, _ := nm.PeerByName("router")
		return slices.Equal(p.Routes, []netip.Prefix{lan})
	})
	if p, _ := nm.PeerByName("router"); p.ExitNodeOption {
		t.Fatal("exit node option before the exit node was approved")
	}
	wc.mu.Lock()
	for _, f := range wc.frames[frames:] {
		if f.Full {
			t.Error("the route came in a full map, not a delta")
		}
	}
	wc.mu.Unlock()
	wr.waitFor("router's self lists its route", func(nm *netmap.NetworkMap) bool { return slices.Equal(nm.Self.Routes, []netip.Prefix{lan}) })
	if r, _ := routeRow(s, "router", lan.String()); !r.Approved || !r.Primary || r.AutoApproved {
		t.Fatalf("approved route: %+v", r)
	}
	// Under allow-all, "*:*" covers the routed network: the router's
	// filter accepts traffic to it.
	wr.waitFor("router's filter covers its route", func(nm *netmap.NetworkMap) bool {
		return netmapAllows(nm.Filter, client.Self.Addresses[0].Addr(), netip.MustParseAddr("198.19.50.7"), 22)
	})

	if err := s.ApproveRoute(ctx, "router", "0.0.0.0/0", true); err != nil {
		t.Fatal(err)
	}
	wc.waitFor("client gets the exit node option", func(nm *netmap.NetworkMap) bool {
		p, _ := nm.PeerByName("router")
		return p.ExitNodeOption && slices.Equal(p.Routes, []netip.Prefix{lan})
	})
	rnm := wr.waitFor("exit node's filter covers the internet", func(nm *netmap.NetworkMap) bool {
		return netmapAllows(nm.Filter, client.Self.Addresses[0].Addr(), netip.MustParseAddr("8.8.8.8"), 443)
	})
	if netmapAllows(rnm.Filter, client.Self.Addresses[0].Addr(), netip.MustParseAddr("100.100.0.1"), 443) {
		t.Fatal("the exit node's filter accepts a mesh address it does not own")
	}
	// Withdrawing the exit offer takes the option away; the approval stays.
	advertise(t, router, []netip.Prefix{lan}, &falseVal)
	wc.waitFor("exit option withdrawn", func(nm *netmap.NetworkMap) bool {
		p, _ := nm.PeerByName("router")
		return !p.ExitNodeOption && len(p.Routes) == 1
	})
	if r, ok := routeRow(s, "router", exitPfx.String()); !ok || r.Advertised || !r.Approved {
		t.Fatalf("withdrawn exit offer: %+v", r)
	}

	if err := s.ApproveRoute(ctx, "router", lan.String(), false); err != nil {
		t.Fatal(err)
	}
	wc.waitFor("route unapproved", func(nm *netmap.NetworkMap) bool {
		p, ok := nm.PeerByName("router")
		return ok && len(p.Routes) == 0
	})
}

// TestRoutesBadInput: every bad approval and advertisement gets its own
// message and changes nothing.
func TestRoutesBadInput(t *testing.T) {
	s := coordtest.Start(t)
	ctx := context.Background()
	k := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	router := s.Register(t, k, "router")
	s.Register(t, k, "plain")
	advertise(t, router, []netip.Prefix{lan}, nil)
	if err := s.ApproveRoute(ctx, "router", lan.String(), true); err != nil {
		t.Fatal(err)
	}
	before := s.Routes()

	approvals := []struct {
		node, cidr string
		approve    bool
		want       string
	}{
		{"router", "198.19.50.0", true, `"198.19.50.0" is not a CIDR`},
		{"router", "banana", true, `"banana" is not a CIDR`},
		{"router", "198.19.50.1/24", true, "host bits set (did you mean 198.19.50.0/24?)"},
		{"router", "100.64.1.0/24", true, "overlaps the mesh range 100.64.0.0/10"},
		{"router", "100.0.0.0/8", true, "overlaps the mesh range 100.64.0.0/10"},
		{"router", "fd00::/8", true, "IPv6 routes are not supported"},
		{"router", "127.0.0.0/8", true, "not a routable unicast network"},
		{"router", "198.19.0.0/16", true, "198.19.0.0/16 overlaps 198.19.50.0/24, which router advertises"},
		{"router", "198.19.50.128/25", true, "198.19.50.128/25 overlaps 198.19.50.0/24, which router advertises"},
		{"router", "198.19.60.0/24", true, "router does not advertise 198.19.60.0/24 (advertised: [198.19.50.0/24])"},
		{"router", "0.0.0.0/0", true, "router does not offer itself as an exit node"},
		{"plain", "198.19.50.0/24", true, "plain does not advertise 198.19.50.0/24 (advertised: none)"},
		{"nosuch", "198.19.50.0/24", true, `node "nosuch": not found`},
		{"router", "198.19.60.0/24", false, "router has no approval for 198.19.60.0/24 to remove"},
		{"nosuch", "198.19.50.0/24", false, `node "nosuch": not found`},
	}
	for _, c := range approvals {
		err := s.ApproveRoute(ctx, c.node, c.cidr, c.approve)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ApproveRoute(%s, %s, %v) = %v, want an error containing %q", c.node, c.cidr, c.approve, err, c.want)
		}
	}

	ads := []struct {
		routes []netip.Prefix
		want   string
	}{
		{[]netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")}, "overlaps the mesh range"},
		{[]netip.Prefix{lan, netip.MustParsePrefix("198.19.50.0/25")}, "overlaps another advertised route"},
		{[]netip.Prefix{lan, lan}, "overlaps another advertised route"},
		{[]netip.Prefix{exitPfx}, "0.0.0.0/0 is an exit node: use --advertise-exit-node"},
		{[]netip.Prefix{netip.PrefixFrom(netip.MustParseAddr("198.19.50.1"), 24)}, "host bits set"},
		{[]netip.Prefix{netip.MustParsePrefix("224.0.0.0/8")}, "not a routable unicast network"},
		{[]netip.Prefix{netip.MustParsePrefix("fd00::/64")}, "IPv6 routes are not supported"},
		{make([]netip.Prefix, 300), "more than 256 routes"},
	}
	for _, c := range ads {
		rs := c.routes
		err := router.Client.Update(ctx, netmap.UpdateRequest{AdvertisedRoutes: &rs})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("advertise %v: %v, want an error containing %q", c.routes[:min(len(c.routes), 2)], err, c.want)
		}
	}
	if after := s.Routes(); !reflect.DeepEqual(after, before) {
		t.Fatalf("bad input changed the routes:\nbefore %+v\nafter  %+v", before, after)
	}
}

const routerPolicy = `{
	"tagOwners": {"tag:router": [], "tag:dev": [], "tag:other": []},
	"autoApprovers": {"routes": {"198.19.0.0/16": ["tag:router"]}},
	"acls": [
		{"action": "accept", "src": ["tag:dev"], "dst": ["198.19.50.0/24:80"]},
		{"action": "accept", "src": ["tag:other"], "dst": ["tag:other:*"]},
	],
	"tests": [{"src": "tag:dev", "accept": ["198.19.50.7:80"], "deny": ["198.19.50.7:22"]}],
}`

// TestRoutesAutoApproveAndPolicyFilter: with autoApprovers, a tagged
// router's advertisement is in effect with no admin command; a dev allowed
// port 80 on the routed network sees the router and its route, the router's
// filter accepts dev's port 80 to the network and nothing for 22, and a
// node with no rule for the network sees neither.
func TestRoutesAutoApproveAndPolicyFilter(t *testing.T) {
	s := coordtest.Start(t)
	ctx := context.Background()
	if err := s.SetPolicy(ctx, []byte(routerPolicy)); err != nil {
		t.Fatal(err)
	}
	router := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Tags: []string{"tag:router"}}), "router")
	dev := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Tags: []string{"tag:dev"}}), "dev")
	other := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Tags: []string{"tag:other"}}), "other")
	wr := watch(t, router, netmap.MapRequest{})
	wd := watch(t, dev, netmap.MapRequest{})
	wo := watch(t, other, netmap.MapRequest{})
	if nm := wd.waitFor("dev sees no one before routes", func(*netmap.NetworkMap) bool { return true }); len(nm.Peers) != 0 {
		t.Fatalf("dev sees %d peers before any route", len(nm.Peers))
	}

	// Both are auto-approved (inside 198.19.0.0/16), but no rule lets dev
	// use lan2.
	advertise(t, router, []netip.Prefix{lan, lan2}, nil)
	nm := wd.waitFor("dev sees the router with the route it may use", func(nm *netmap.NetworkMap) bool {
		p, ok := nm.PeerByName("router")
		return ok && slices.Equal(p.Routes, []netip.Prefix{lan})
	})
	if p, _ := nm.PeerByName("router"); p.ExitNodeOption {
		t.Fatal("exit option without an exit node")
	}
	for _, pfx := range []netip.Prefix{lan, lan2} {
		if r, _ := routeRow(s, "router", pfx.String()); !r.Approved || !r.AutoApproved {
			t.Fatalf("%s not auto-approved: %+v", pfx, r)
		}
	}
	rnm := wr.waitFor("router's filter for the routed network", func(nm *netmap.NetworkMap) bool {
		_, seesDev := nm.PeerByName("dev")
		return seesDev && len(nm.Filter.Rules) == 1
	})
	want := []netmap.FilterRule{{
		SrcIPs:   []netip.Prefix{dev.Self.Addresses[0]},
		DstPorts: []netmap.PortRange{{Dst: lan, First: 80, Last: 80}},
	}}
	if !reflect.DeepEqual(rnm.Filter.Rules, want) {
		t.Fatalf("router's filter = %+v, want %+v", rnm.Filter.Rules, want)
	}
	if !netmapAllows(rnm.Filter, dev.Self.Addresses[0].Addr(), netip.MustParseAddr("198.19.50.7"), 80) ||
		netmapAllows(rnm.Filter, dev.Self.Addresses[0].Addr(), netip.MustParseAddr("198.19.50.7"), 22) ||
		netmapAllows(rnm.Filter, dev.Self.Addresses[0].Addr(), netip.MustParseAddr("198.19.60.7"), 80) {
		t.Fatalf("router's filter does not allow exactly dev -> %s:80: %+v", lan, rnm.Filter)
	}
	onm := wo.waitFor("other's map", func(*netmap.NetworkMap) bool { return true })
	if _, sees := onm.PeerByName("router"); sees {
		t.Fatal("a node with no rule for the routed network sees the router")
	}

	// The policy no longer approves: the route is gone for dev at once.
	if err := s.SetPolicy(ctx, []byte(strings.Replace(routerPolicy, `"198.19.0.0/16": ["tag:router"]`, `"198.18.0.0/16": ["tag:router"]`, 1))); err != nil {
		t.Fatal(err)
	}
	wd.waitFor("dev loses the router", func(nm *netmap.NetworkMap) bool {
		_, ok := nm.PeerByName("router")
		return !ok
	})
	wr.waitFor("router's filter empty", func(nm *netmap.NetworkMap) bool { return nm.Filter.Rules != nil && len(nm.Filter.Rules) == 0 })
}

// netmapAllows evaluates a filter as the node does: some rule with src in
// SrcIPs and dst:port in DstPorts.
func netmapAllows(f netmap.Filter, src, dst netip.Addr, port uint16) bool {
	for _, r := range f.Rules {
		if !slices.ContainsFunc(r.SrcIPs, func(p netip.Prefix) bool { return p.Contains(src) }) {
			continue
		}
		for _, pr := range r.DstPorts {
			if pr.Dst.Contains(dst) && port >= pr.First && port <= pr.Last {
				return true
			}
		}
	}
	return false
}

// TestRoutesAcrossReplicas: a route approved through one replica reaches
// a stream held by the other, and the other can take it away again, which
// reaches the first replica's streams.
func TestRoutesAcrossReplicas(t *testing.T) {
	pg := pgtest.Start(t)
	rs := startReplicas(t, pg.NewDatabase(t), 2)
	a, b := rs[0], rs[1]
	ctx := context.Background()
	k := a.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	router := a.Register(t, k, "router")
	client := b.Register(t, k, "client")
	watcher := a.Register(t, k, "watcher")
	watch(t, router, netmap.MapRequest{})        // on a
	wc := watch(t, client, netmap.MapRequest{})  // on b
	ww := watch(t, watcher, netmap.MapRequest{}) // on a
	wc.waitFor("client sees router", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("router"); return ok })

	advertise(t, router, []netip.Prefix{lan}, nil) // through a
	if err := a.ApproveRoute(ctx, "router", lan.String(), true); err != nil {
		t.Fatal(err)
	}
	wc.waitFor("approved route on the other replica's stream", func(nm *netmap.NetworkMap) bool {
		p, _ := nm.PeerByName("router")
		return slices.Equal(p.Routes, []netip.Prefix{lan})
	})
	ww.waitFor("approved route on a's stream", func(nm *netmap.NetworkMap) bool {
		p, _ := nm.PeerByName("router")
		return len(p.Routes) == 1
	})
	// b has applied the approval (its stream shows it): b lists it and
	// can take it away.
	if r, ok := routeRow(b, "router", lan.String()); !ok || !r.Advertised || !r.Approved || !r.Primary {
		t.Fatalf("b's routes list: %+v (listed %v)", r, ok)
	}
	if err := b.ApproveRoute(ctx, "router", lan.String(), false); err != nil {
		t.Fatal(err)
	}
	ww.waitFor("unapproval through b on a's stream", func(nm *netmap.NetworkMap) bool {
		p, ok := nm.PeerByName("router")
		return ok && len(p.Routes) == 0
	})
	wc.waitFor("unapproval on b's stream", func(nm *netmap.NetworkMap) bool {
		p, _ := nm.PeerByName("router")
		return len(p.Routes) == 0
	})
}

// TestRoutesCommands drives `coordinator routes` through the admin socket:
// list (table and JSON), approve, unapprove, and their errors.
func TestRoutesCommands(t *testing.T) {
	s := coordtest.Start(t, func(c *coordinator.Config) { c.NoAdminSocket = false })
	router := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "router")
	watch(t, router, netmap.MapRequest{}).waitFor("router online", func(*netmap.NetworkMap) bool { return true })
	advertise(t, router, []netip.Prefix{lan}, &trueVal)
	run := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		err := coordinator.Command(context.Background(), append(args, "--state-dir", s.Dir), &stdout, &stderr)
		if err != nil && !errors.Is(err, cli.ErrHelp) {
			fmt.Fprintf(&stderr, "coordinator: %s\n", cli.OneLine(err.Error())) // as cli.Main prints it
		}
		return cli.ExitCode(err), stdout.String(), stderr.String()
	}
	if code, out, errOut := run("routes", "approve", "router", "198.19.50.0/24"); code != 0 || out != "router 198.19.50.0/24: approved\n" {
		t.Fatalf("approve: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, _ := run("routes", "list")
	if code != 0 || !strings.Contains(out, "NODE") || !regexp.MustCompile(`router\s+198.19.50.0/24\s+true\s+true\s+true`).MatchString(out) ||
		!regexp.MustCompile(`router\s+0.0.0.0/0\s+true\s+false\s+false`).MatchString(out) {
		t.Fatalf("list: exit %d:\n%s", code, out)
	}
	code, out, _ = run("routes", "list", "--json")
	var rows []coordinator.RouteInfo
	if err := json.Unmarshal([]byte(out), &rows); code != 0 || err != nil || len(rows) != 2 {
		t.Fatalf("list --json: exit %d, %v: %s", code, err, out)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"routes", "approve", "router"}, 2, "needs a node NAME and a CIDR"},
		{[]string{"routes", "approve", "router", "198.19.50.1/24"}, 1, "did you mean 198.19.50.0/24?"},
		{[]string{"routes", "approve", "router", "100.64.0.0/16"}, 1, "overlaps the mesh range"},
		{[]string{"routes", "approve", "nosuch", "198.19.50.0/24"}, 1, "not found"},
		{[]string{"routes", "unapprove", "router", "198.19.60.0/24"}, 1, "no approval for 198.19.60.0/24"},
		{[]string{"routes", "frobnicate"}, 2, "unknown command"},
	} {
		code, _, errOut := run(c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, errOut, c.code, c.want)
		}
	}
	if code, out, errOut := run("routes", "unapprove", "router", "198.19.50.0/24"); code != 0 || out != "router 198.19.50.0/24: unapproved\n" {
		t.Fatalf("unapprove: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	log, err := s.AuditLog(context.Background())
	if err != nil || len(log) < 2 || log[0].Action != "routes unapprove" || log[1].Action != "routes approve" ||
		log[0].Target != "router 198.19.50.0/24" || log[0].Actor != "cli" {
		t.Fatalf("audit log: %+v, %v", log, err)
	}
}

// TestRoutesSurviveRestart: advertisements and approvals are stored; after
// a restart the route is in effect again for a peer's first map.
func TestRoutesSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	s := coordtest.Start(t, func(c *coordinator.Config) { c.StateDir = dir })
	k := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	router := s.Register(t, k, "router")
	client := s.Register(t, k, "client")
	advertise(t, router, []netip.Prefix{lan}, &trueVal)
	if err := s.ApproveRoute(context.Background(), "router", lan.String(), true); err != nil {
		t.Fatal(err)
	}
	before := s.Routes()
	s.Stop()

	s2 := coordtest.Start(t, func(c *coordinator.Config) { c.StateDir = dir })
	if after := s2.Routes(); !reflect.DeepEqual(after, before) {
		t.Fatalf("routes after restart:\n%+v\nwant\n%+v", after, before)
	}
	c := *client
	c.Client = coordclient.New(s2.URL(), s2.HTTP, s2.Info, client.Key)
	watch(t, &c, netmap.MapRequest{}).waitFor("route in the first map after restart", func(nm *netmap.NetworkMap) bool {
		p, _ := nm.PeerByName("router")
		return slices.Equal(p.Routes, []netip.Prefix{lan}) && !p.ExitNodeOption
	})
}

// TestRoutesMetric: coordinator_routes counts advertised and approved
// routes and passes the Prometheus linter.
func TestRoutesMetric(t *testing.T) {
	s := coordtest.Start(t)
	router := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "router")
	advertise(t, router, []netip.Prefix{lan, lan2}, &trueVal)
	if err := s.ApproveRoute(context.Background(), "router", lan.String(), true); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP coordinator_routes Routes nodes advertise (advertised) and of those the ones approved and in effect (approved); an exit node counts as one route.
# TYPE coordinator_routes gauge
coordinator_routes{state="advertised"} 3
coordinator_routes{state="approved"} 1
`
	if err := testutil.GatherAndCompare(s.Registry, strings.NewReader(want), "coordinator_routes"); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(s.Registry, "coordinator_routes")
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %+v", err, problems)
	}
}
