//go:build lab

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/wiremesh/wiremesh/internal/poll"
	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// whoami answers every TCP connection on ln with the address it came
// from, then closes it; seen counts the connections.
func whoami(ln net.Listener, seen *atomic.Int64) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if seen != nil {
			seen.Add(1)
		}
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		c.Write([]byte(host))
		c.Close()
	}
}

// serveWhoami listens on addr in h and answers with whoami until the
// test ends.
func serveWhoami(t *testing.T, h *lab.Host, addr string, seen *atomic.Int64) {
	t.Helper()
	ln, err := h.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go whoami(ln, seen)
}

// askWho connects from h to addr and returns what whoami said: the source
// address the server saw.
func askWho(h *lab.Host, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := h.Dial(ctx, "tcp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	if len(b) == 0 {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
	return string(b), nil
}

// waitWho retries askWho until it answers, for up to limit.
func waitWho(t *testing.T, h *lab.Host, addr string, limit time.Duration) string {
	t.Helper()
	var got string
	var err error
	if !poll.Wait(limit, func() bool {
		got, err = askWho(h, addr, 2*time.Second)
		return err == nil
	}) {
		t.Fatalf("%s never answered from %s: %v", addr, h.Short, err)
	}
	return got
}

// whoamiDNS serves DNS on addr:53 (UDP) in h: an A query for any name
// answers with the address the query came from, so a resolver's upstream
// path shows in the answer.
func whoamiDNS(t *testing.T, h *lab.Host, addr netip.Addr) {
	t.Helper()
	pc, err := h.ListenUDP(netip.AddrPortFrom(addr, 53).String())
	if err != nil {
		t.Fatal(err)
	}
	s := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		if len(req.Question) == 1 && req.Question[0].Qtype == mdns.TypeA {
			src, _ := netip.ParseAddrPort(w.RemoteAddr().String())
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: req.Question[0].Name, Rrtype: mdns.TypeA,
				Class: mdns.ClassINET, Ttl: 0}, A: src.Addr().Unmap().AsSlice()})
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	s.NotifyStartedFunc = func() { close(started) }
	go s.ActivateAndServe()
	<-started
	t.Cleanup(func() { s.Shutdown() })
}

// routingLeftovers lists what Wiremesh's router would have installed in
// h's namespace: policy rules, table 30573 (IPv4 and IPv6), the nft table.
func routingLeftovers(h *lab.Host) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []string
	for _, args := range [][]string{{"-4", "rule", "show"}, {"-6", "rule", "show"}} {
		b, _ := h.Command(ctx, "ip", args...).Output()
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "30573") || strings.Contains(l, "proto 119") || strings.Contains(l, "0x1000000") {
				out = append(out, "rule: "+strings.TrimSpace(l))
			}
		}
	}
	for _, fam := range []string{"-4", "-6"} {
		b, _ := h.Command(ctx, "ip", fam, "route", "show", "table", "30573").Output()
		if s := strings.TrimSpace(string(b)); s != "" {
			out = append(out, "table 30573 ("+fam+"): "+s)
		}
	}
	b, _ := h.Command(ctx, "nft", "list", "tables").Output()
	if strings.Contains(string(b), "wiremesh") {
		out = append(out, "nft: "+strings.TrimSpace(string(b)))
	}
	return out
}

// rulesInstalled reports whether h has policy rules into the routing table
// (30573) for both IPv4 and IPv6.
func rulesInstalled(h *lab.Host) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, fam := range []string{"-4", "-6"} {
		b, _ := h.Command(ctx, "ip", fam, "rule", "show").Output()
		if !strings.Contains(string(b), "lookup 30573") {
			return false
		}
	}
	return true
}

// routeRows returns `coordinator routes list --json`.
func (w *world) routeRows(t testing.TB) (string, []map[string]any) {
	t.Helper()
	out, err := w.run("coordinator", "routes", "list", "--json", "--state-dir", w.coordDir)
	if err != nil {
		t.Fatal(err)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("routes list: %v: %s", err, out)
	}
	return out, rows
}

// waitAdvertised waits until the coordinator lists node's advertisement
// of prefix.
func (w *world) waitAdvertised(t testing.TB, node, prefix string) {
	t.Helper()
	var out string
	if !poll.Wait(poll.DefaultTimeout, func() bool {
		var rows []map[string]any
		out, rows = w.routeRows(t)
		for _, r := range rows {
			if r["node"] == node && r["prefix"] == prefix && r["advertised"] == true {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("%s's advertisement of %s never reached the coordinator: %s", node, prefix, out)
	}
}

func (w *world) setPolicy(t testing.TB, doc string) {
	t.Helper()
	pf := filepath.Join(t.TempDir(), "policy.hujson")
	os.WriteFile(pf, []byte(doc), 0o600)
	if _, err := w.run("coordinator", "policy", "set", pf, "--state-dir", w.coordDir); err != nil {
		t.Fatal(err)
	}
}

// startNodeKey is startNode with another auth key (tags).
func (w *world) startNodeKey(name string, h *lab.Host, authKey string, extra ...string) *node {
	w.t.Helper()
	saved := w.authKey
	w.authKey = authKey
	defer func() { w.authKey = saved }()
	return w.startNode(name, h, extra...)
}

func (w *world) taggedKey(t testing.TB, tags string) string {
	t.Helper()
	out, err := w.run("coordinator", "authkey", "create", "--reusable", "--tags", tags, "--state-dir", w.coordDir)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// siteLAN is a LAN behind a NAT router: a "printer" with no meshnode and
// the hosts for router nodes, each on its own link of the same router (so
// every router node reaches the printer through the site's gateway).
type siteLAN struct {
	gw      *lab.Router
	printer *lab.Host
	prefix  netip.Prefix // the printer's network: the routed prefix
}

func newSite(t *testing.T, w *world) siteLAN {
	t.Helper()
	gw, err := w.l.AddRouter("site", lab.RouterConfig{NAT: lab.Easy})
	if err != nil {
		t.Fatal(err)
	}
	p, err := w.l.AddHost("printer", gw)
	if err != nil {
		t.Fatal(err)
	}
	return siteLAN{gw: gw, printer: p, prefix: netip.PrefixFrom(p.Addr, 24).Masked()}
}

func (s siteLAN) host(t *testing.T, w *world, name string) *lab.Host {
	t.Helper()
	h, err := w.l.AddHost(name, s.gw)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func peerRoutes(st localapi.Status, name string) []string {
	p, _ := peerOf(st, name)
	return p.Routes
}

// TestLabSubnetRouter: a printer (no meshnode) on a LAN behind a router
// node is reached from a node behind another NAT after `routes approve`
// and not before; with SNAT it sees the router's LAN address and needs no
// route back; a userspace node reaches it through its SOCKS5 proxy. Bad
// advertisements and bad approvals fail with their errors and change
// nothing. A policy allowing port 80 on the routed network but
// not 22: 22 is dropped at the router and counted. The daemons leave no
// rule, route or table on exit, and a SIGKILLed one's are removed by the
// next start.
func TestLabSubnetRouter(t *testing.T) {
	w := newWorld(t, "nyc")
	site := newSite(t, w)
	serveWhoami(t, site.printer, "0.0.0.0:80", nil)
	serveWhoami(t, site.printer, "0.0.0.0:22", nil)
	printer80 := netip.AddrPortFrom(site.printer.Addr, 80).String()
	printer22 := netip.AddrPortFrom(site.printer.Addr, 22).String()
	pfx := site.prefix.String()

	// Bad advertisements: the daemon refuses to start, naming the entry.
	for _, c := range []struct{ arg, want string }{
		{"100.64.1.0/24", "mesh range"},
		{"198.19.50.1/24", "did you mean 198.19.50.0/24"},
		{"printer", "invalid CIDR"},
		{"198.19.0.0/16,198.19.50.0/24", "overlaps"},
		{"0.0.0.0/0", "--advertise-exit-node"},
	} {
		_, err := w.run("meshnode", "run", "--coordinator", w.coordURL, "--authkey", w.authKey,
			"--state-dir", t.TempDir(), "--advertise-routes", c.arg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("--advertise-routes %s: %v, want an error containing %q", c.arg, err, c.want)
		}
	}
	// Nothing changed: no node registered, no route listed.
	if out, err := w.run("coordinator", "nodes", "list", "--json", "--state-dir", w.coordDir); err != nil || strings.Contains(out, `"name"`) {
		t.Fatalf("a bad advertisement registered a node: %v %s", err, out)
	}
	if out, rows := w.routeRows(t); len(rows) != 0 {
		t.Fatalf("routes after bad advertisements: %s", out)
	}

	rtHost := site.host(t, w, "rt")
	rt := w.startNode("rt", rtHost, "--advertise-routes", pfx)
	c := w.startNode("c", hardNATHost(t, w, "c"), "--accept-routes")
	c.waitStatus("rt as a peer", func(st localapi.Status) bool { _, ok := peerOf(st, "rt"); return ok })
	if !poll.Wait(poll.DefaultTimeout, func() bool {
		_, rows := w.routeRows(t)
		return len(rows) == 1 && rows[0]["advertised"] == true
	}) {
		out, _ := w.routeRows(t)
		t.Fatalf("rt's advertisement never reached the coordinator: %s", out)
	}
	before, rows := w.routeRows(t)
	if rows[0]["approved"] != false || rows[0]["prefix"] != pfx {
		t.Fatalf("routes list before approval: %s", before)
	}
	if got, err := askWho(c.host, printer80, 3*time.Second); err == nil {
		t.Fatalf("c reached the printer before approval (as %s)", got)
	}

	// Bad approvals: each has its error, and the routes stay as they were.
	for _, args := range [][]string{
		{"rt", "198.19.99.0/24"}, // never advertised
		{"rt", "100.64.0.0/24"},  // the mesh range
		{"rt", "printer"},        // not a CIDR
		{"nosuchnode", pfx},      // no such node
		{"rt", "0.0.0.0/0"},      // rt is no exit node
	} {
		out, err := w.run("coordinator", append([]string{"routes", "approve"}, append(args, "--state-dir", w.coordDir)...)...)
		if err == nil {
			t.Errorf("routes approve %v succeeded: %s", args, out)
		} else {
			t.Logf("routes approve %v: %v", args, err)
		}
	}
	if after, _ := w.routeRows(t); after != before {
		t.Fatalf("bad approvals changed the routes:\nbefore %s\nafter  %s", before, after)
	}

	// Approve: the route reaches c, and the printer answers, seeing rt's
	// LAN address (SNAT); the printer has no route to the mesh.
	approved := time.Now()
	if _, err := w.run("coordinator", "routes", "approve", "rt", pfx, "--state-dir", w.coordDir); err != nil {
		t.Fatal(err)
	}
	c.waitStatus("rt primary for the route", func(st localapi.Status) bool {
		return slices.Equal(peerRoutes(st, "rt"), []string{pfx})
	})
	took := time.Since(approved)
	t.Logf("approved route in c's status after %v", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("the approved route took %v to reach c (goal 2 s)", took)
	}
	if got := waitWho(t, c.host, printer80, 20*time.Second); got != rtHost.Addr.String() {
		t.Fatalf("the printer saw %s, want rt's LAN address %s (SNAT)", got, rtHost.Addr)
	}
	t.Logf("printer reached %v after approval", time.Since(approved).Round(time.Millisecond))
	st, _ := c.status()
	if p, _ := peerOf(st, "rt"); p.ExitNodeOption || st.Self.ExitNode != "" {
		t.Fatalf("exit node fields without an exit node: self %+v, rt %+v", st.Self, p)
	}

	// Userspace: --accept-routes through the SOCKS5 proxy (the netstack
	// sends the routed destination into the tunnel, to rt).
	uHost := hardNATHost(t, w, "u")
	u := w.startNode("u", uHost, "--userspace", "--socks5", "127.0.0.1:1080", "--accept-routes")
	u.waitStatus("rt primary for the route", func(st localapi.Status) bool {
		return slices.Equal(peerRoutes(st, "rt"), []string{pfx})
	})
	var viaSocks string
	if !poll.Wait(20*time.Second, func() bool {
		viaSocks = strings.TrimSpace(string(curlSocks(uHost, "http://"+printer80+"/")))
		return viaSocks != ""
	}) {
		t.Fatal("the userspace node never reached the printer through SOCKS5")
	}
	if viaSocks != rtHost.Addr.String() {
		t.Fatalf("through SOCKS5 the printer saw %s, want %s", viaSocks, rtHost.Addr)
	}
	u.stop()

	// The policy: 80 on the routed network, not 22. 22 is dropped at rt.
	w.setPolicy(t, fmt.Sprintf(`{
		"acls": [
			{"action": "accept", "src": ["c"], "dst": ["%s:80"]},
			{"action": "accept", "src": ["rt"], "dst": ["*:*"]},
		],
	}`, pfx))
	dropSample := `meshnode_router_forward_drops_total{reason="no_rule"}`
	drops0, _ := metricValue(rt, dropSample)
	if !poll.Wait(20*time.Second, func() bool {
		_, err := askWho(c.host, printer22, time.Second)
		return err != nil
	}) {
		t.Fatal("port 22 on the routed network still reachable under a policy that allows only 80")
	}
	if _, err := askWho(c.host, printer22, 2*time.Second); err == nil {
		t.Fatal("port 22 reachable")
	}
	if got := waitWho(t, c.host, printer80, 10*time.Second); got != rtHost.Addr.String() {
		t.Fatalf("port 80 under the policy: printer saw %s", got)
	}
	drops1, ok := metricValue(rt, dropSample)
	if !ok || drops1 <= drops0 {
		t.Fatalf("rt's %s = %v (present %v), was %v: the drop of port 22 is not counted", dropSample, drops1, ok, drops0)
	}
	t.Logf("router drops (no_rule): %v -> %v", drops0, drops1)

	// Clean exit: nothing left on either node.
	for _, h := range []*lab.Host{c.host, rtHost} {
		if len(routingLeftovers(h)) == 0 {
			t.Fatalf("%s: no routing state installed while running", h.Short)
		}
	}
	rt.stop()
	c.stop()
	for _, h := range []*lab.Host{c.host, rtHost} {
		if left := routingLeftovers(h); len(left) > 0 {
			t.Fatalf("%s: left after a clean exit: %v", h.Short, left)
		}
	}

	// SIGKILL: the rules and backstops stay (so nothing leaks while the
	// daemon is dead); the next start, even without routing flags,
	// removes them.
	c.start()
	c.waitStatus("running again", func(st localapi.Status) bool { return len(st.Self.IPs) > 0 })
	if !poll.Wait(poll.DefaultTimeout, func() bool { return len(routingLeftovers(c.host)) > 0 }) {
		t.Fatal("c installed no routing state after the restart")
	}
	c.cmd.Process.Kill()
	c.cmd.Wait()
	if left := routingLeftovers(c.host); len(left) == 0 {
		t.Fatal("SIGKILL removed the routing state (the backstops should stay)")
	} else {
		t.Logf("after SIGKILL: %v", left)
	}
	c.args = slices.DeleteFunc(c.args, func(a string) bool { return a == "--accept-routes" })
	c.start()
	c.waitStatus("running without routes", func(st localapi.Status) bool { return len(st.Self.IPs) > 0 })
	if left := routingLeftovers(c.host); len(left) > 0 {
		t.Fatalf("left after SIGKILL and a restart: %v", left)
	}
}

// haRuns is how many primary kills TestLabSubnetRouterHA measures
// (WIREMESH_HA_RUNS, default 3; BENCHMARKS.md uses 10).
func haRuns() int {
	if v, err := strconv.Atoi(os.Getenv("WIREMESH_HA_RUNS")); err == nil && v > 0 {
		return v
	}
	return 3
}

// TestLabSubnetRouterHA: two tagged routers advertise the printer's network
// and the policy's autoApprovers approve both with no admin command. A TCP
// client on a node behind another NAT keeps connecting to the printer;
// the primary is SIGKILLed, and the client's traffic resumes through the
// standby. The gap (kill to the first answer through the standby) is
// recorded over several runs; the goal is 3 s.
func TestLabSubnetRouterHA(t *testing.T) {
	w := newWorld(t, "nyc")
	site := newSite(t, w)
	serveWhoami(t, site.printer, "0.0.0.0:80", nil)
	printer80 := netip.AddrPortFrom(site.printer.Addr, 80).String()
	pfx := site.prefix.String()
	w.setPolicy(t, fmt.Sprintf(`{
		"tagOwners": {"tag:router": []},
		"autoApprovers": {"routes": {"%s": ["tag:router"]}},
		"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
	}`, pfx))
	key := w.taggedKey(t, "tag:router")
	hosts := map[string]*lab.Host{}
	routers := map[string]*node{}
	for _, name := range []string{"rt1", "rt2"} {
		hosts[name] = site.host(t, w, name)
		routers[name] = w.startNodeKey(name, hosts[name], key, "--advertise-routes", pfx)
	}
	byAddr := map[string]string{hosts["rt1"].Addr.String(): "rt1", hosts["rt2"].Addr.String(): "rt2"}
	c := w.startNode("c", hardNATHost(t, w, "c"), "--accept-routes")
	primary := func(st localapi.Status) string {
		for _, name := range []string{"rt1", "rt2"} {
			if slices.Equal(peerRoutes(st, name), []string{pfx}) {
				return name
			}
		}
		return ""
	}
	// autoApprovers: both in effect with no `routes approve`.
	c.waitStatus("a primary for the auto-approved route", func(st localapi.Status) bool {
		_, ok1 := peerOf(st, "rt1")
		_, ok2 := peerOf(st, "rt2")
		return ok1 && ok2 && primary(st) != ""
	})
	w.waitAdvertised(t, "rt1", pfx)
	w.waitAdvertised(t, "rt2", pfx)
	_, rows := w.routeRows(t)
	for _, r := range rows {
		if r["approved"] != true || r["auto_approved"] != true {
			t.Fatalf("not auto-approved: %v", rows)
		}
	}
	if len(rows) != 2 {
		t.Fatalf("routes list: %v", rows)
	}

	var gaps, paces []time.Duration
	for run := 0; run < haRuns(); run++ {
		who := waitWho(t, c.host, printer80, 20*time.Second)
		prim := byAddr[who]
		if prim == "" {
			t.Fatalf("printer saw %s, no router's address", who)
		}
		standby := map[string]string{"rt1": "rt2", "rt2": "rt1"}[prim]
		// The standby must be alive in c's view (it may have just
		// restarted): a disco ping answers, then the selector's recovery.
		if !poll.Wait(poll.DefaultTimeout, func() bool {
			_, err := w.run("meshnode", "ping", "-c", "1", "--timeout", "1s", "--state-dir", c.dir, standby)
			return err == nil
		}) {
			t.Fatalf("standby %s never answered c's pings", standby)
		}
		time.Sleep(2 * time.Second)

		// A TCP client that connects every 50 ms (300 ms timeout each).
		type answer struct {
			at  time.Time
			who string
		}
		answers := make(chan answer, 1024)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if got, err := askWho(c.host, printer80, 300*time.Millisecond); err == nil {
					select {
					case answers <- answer{time.Now(), got}:
					default:
					}
				}
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
		time.Sleep(500 * time.Millisecond)
		killed := time.Now()
		routers[prim].cmd.Process.Kill()
		routers[prim].cmd.Wait()
		var gap time.Duration
		var prev time.Time
		deadline := time.After(20 * time.Second)
	wait:
		for {
			select {
			case a := <-answers:
				if a.at.Before(killed) {
					// The client's own pace with a healthy primary: the
					// baseline the gap compares with.
					if !prev.IsZero() {
						paces = append(paces, a.at.Sub(prev))
					}
					prev = a.at
					continue
				}
				if byAddr[a.who] == standby {
					gap = a.at.Sub(killed)
					break wait
				}
			case <-deadline:
				cancel()
				wg.Wait()
				t.Fatalf("run %d: no answer through the standby %s within 20 s of killing %s", run, standby, prim)
			}
		}
		cancel()
		wg.Wait()
		gaps = append(gaps, gap)
		t.Logf("run %d: killed %s, traffic through %s after %v", run, prim, standby, gap.Round(time.Millisecond))
		st, _ := c.status()
		if p := primary(st); p != standby {
			t.Fatalf("run %d: c's status shows primary %q, want %s", run, p, standby)
		}
		routers[prim].start() // same state directory: the same node
	}
	sorted := slices.Clone(gaps)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	med, worst := sorted[len(sorted)/2], sorted[len(sorted)-1]
	slices.Sort(paces)
	pace := time.Duration(0)
	if len(paces) > 0 {
		pace = paces[len(paces)/2]
	}
	t.Logf("failover gap over %d runs: median %v, worst %v; the client's answer interval with a healthy primary (baseline): median %v",
		len(gaps), med.Round(time.Millisecond), worst.Round(time.Millisecond), pace.Round(time.Millisecond))
	if med > 3*time.Second {
		t.Fatalf("median failover gap %v, goal 3 s", med)
	}
	if worst > 6*time.Second {
		t.Fatalf("worst failover gap %v", worst)
	}
}

// TestLabExitNode: a node using an exit node reaches an "internet" host on
// the lab's wan with the exit node's public address as its source, while
// its coordinator and relay stay reachable, and DNS for a non-mesh name is
// asked from the exit node's side; with --exit-node-allow-lan-access a
// node reaches its LAN directly, without it not; a userspace node does the
// same through its SOCKS5 proxy. Before the first netmap (the coordinator
// down at the first start), before the exit node is approved, and after
// it is SIGKILLed, nothing from the client reaches the internet host.
func TestLabExitNode(t *testing.T) {
	w := newWorld(t, "nyc")
	inet, err := w.l.AddHost("inet", nil)
	if err != nil {
		t.Fatal(err)
	}
	var seenTCP atomic.Int64
	serveWhoami(t, inet, "0.0.0.0:8080", &seenTCP)
	var seenUDP atomic.Int64
	udp, err := inet.ListenUDP("0.0.0.0:9999")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := udp.ReadFrom(buf); err != nil {
				return
			}
			seenUDP.Add(1)
		}
	}()
	inetTCP := netip.AddrPortFrom(inet.Addr, 8080).String()
	inetUDP := netip.AddrPortFrom(inet.Addr, 9999).String()
	// sendUDP sends one datagram from h to the internet host (errors,
	// such as "no route to host", are what no leak looks like).
	sendUDP := func(h *lab.Host) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if c, err := h.Dial(ctx, "udp4", inetUDP); err == nil {
			c.Write([]byte("leak?"))
			c.Close()
		}
	}

	// The internet's DNS server answers with the address that asked: c's
	// OS resolver (MagicDNS, which forwards to it) must ask from the exit
	// node's side.
	whoamiDNS(t, inet, inet.Addr)
	exHost := hardNATHost(t, w, "ex")
	ex := w.startNode("ex", exHost, "--advertise-exit-node")
	cHost := hardNATHost(t, w, "c")
	netnsResolvConf(t, cHost, "nameserver "+inet.Addr.String()+"\n")
	// c's first start while the coordinator is down: no netmap yet, and
	// already nothing leaves but the node's own traffic.
	w.stopCoordinator()
	c := w.startNode("c", cHost, "--exit-node", "ex", "--accept-dns")
	// The router installs its policy rules last (after nft and the
	// table's unreachable backstops), so both families' rules into the
	// table mean the whole block is in.
	if !poll.Wait(poll.DefaultTimeout, func() bool { return rulesInstalled(cHost) }) {
		t.Fatalf("no block installed before the first netmap: %q", routingLeftovers(cHost))
	}
	for i := 0; i < 3; i++ {
		askWho(cHost, inetTCP, 500*time.Millisecond)
		sendUDP(cHost)
	}
	if n, u := seenTCP.Load(), seenUDP.Load(); n != 0 || u != 0 {
		t.Fatalf("before the first netmap the internet host saw %d connections and %d datagrams from c", n, u)
	}
	w.startCoordinator(w.relayMap)
	c.waitStatus("ex as a peer", func(st localapi.Status) bool { _, ok := peerOf(st, "ex"); return ok })

	// Not approved yet: c's traffic to the internet stops (it never
	// takes the underlay).
	st := c.waitStatus("exit node configured", func(st localapi.Status) bool { return st.Self.ExitNode == "ex" })
	if st.Self.ExitNodeUp {
		t.Fatalf("exit node up before approval: %+v", st.Self)
	}
	for i := 0; i < 5; i++ {
		askWho(cHost, inetTCP, 500*time.Millisecond)
		sendUDP(cHost)
	}
	if n, u := seenTCP.Load(), seenUDP.Load(); n != 0 || u != 0 {
		t.Fatalf("before approval the internet host saw %d connections and %d datagrams from c; c's routing: %v", n, u, routingLeftovers(cHost))
	}

	w.waitAdvertised(t, "ex", "0.0.0.0/0")
	if _, err := w.run("coordinator", "routes", "approve", "ex", "0.0.0.0/0", "--state-dir", w.coordDir); err != nil {
		t.Fatal(err)
	}
	st = c.waitStatus("exit node in use", func(st localapi.Status) bool {
		p, _ := peerOf(st, "ex")
		return st.Self.ExitNode == "ex" && st.Self.ExitNodeUp && p.ExitNodeOption
	})
	seen := waitWho(t, cHost, inetTCP, 20*time.Second)
	if got := seen; got != exHost.PublicAddr().String() {
		t.Fatalf("internet host saw %s, want the exit node's public address %s (c's own is %s)", got, exHost.PublicAddr(), cHost.PublicAddr())
	}
	t.Logf("internet host saw %s (the exit node's public address; c's own is %s)", seen, cHost.PublicAddr())
	// DNS for a non-mesh name goes through MagicDNS to the OS's
	// nameserver, asked from the exit node's side.
	if !poll.Wait(20*time.Second, func() bool {
		return getent(cHost, "whoami.test") == exHost.PublicAddr().String()+" whoami.test"
	}) {
		t.Fatalf("the nameserver saw the query from %q, want the exit node's %s", getent(cHost, "whoami.test"), exHost.PublicAddr())
	}
	// The coordinator and the relay stay reachable: the stream is up, a
	// netcheck reaches the relay, and a disco ping goes through.
	time.Sleep(2 * time.Second)
	st, _ = c.status()
	if !st.Coordinator.Connected {
		t.Fatalf("coordinator not connected while the exit node is used: %+v", st.Coordinator)
	}
	nc := c.netcheck(t)
	if _, ok := nc.RelayLatencyMS["nyc"]; !ok {
		t.Fatalf("netcheck through an exit node reached no relay: %+v", nc)
	}
	if _, err := w.run("meshnode", "ping", "-c", "2", "--state-dir", c.dir, "ex"); err != nil {
		t.Fatal(err)
	}

	// LAN access: c's own gateway is not reachable (its traffic goes to
	// the exit node); c2, with --exit-node-allow-lan-access, reaches its
	// gateway directly and the internet through the exit node.
	c2Host := hardNATHost(t, w, "c2")
	for _, h := range []*lab.Host{cHost, c2Host} {
		ln, err := h.Router.Listen(netip.AddrPortFrom(h.Gateway, 7070).String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go whoami(ln, nil)
	}
	c2 := w.startNode("c2", c2Host, "--exit-node", "ex", "--exit-node-allow-lan-access")
	c2.waitStatus("exit node in use", func(st localapi.Status) bool { return st.Self.ExitNodeUp })
	if got := waitWho(t, c2Host, netip.AddrPortFrom(c2Host.Gateway, 7070).String(), 10*time.Second); got != c2Host.Addr.String() {
		t.Fatalf("c2's gateway saw %s, want c2's LAN address %s", got, c2Host.Addr)
	}
	if got := waitWho(t, c2Host, inetTCP, 10*time.Second); got != exHost.PublicAddr().String() {
		t.Fatalf("with LAN access the internet host saw %s from c2, want %s", got, exHost.PublicAddr())
	}
	if got, err := askWho(cHost, netip.AddrPortFrom(cHost.Gateway, 7070).String(), 2*time.Second); err == nil {
		t.Fatalf("c reached its LAN (as %s) without --exit-node-allow-lan-access", got)
	}

	// Userspace: the same through SOCKS5.
	uHost := hardNATHost(t, w, "u")
	netnsResolvConf(t, uHost, "nameserver "+inet.Addr.String()+"\n") // u's MagicDNS's OS resolver
	u := w.startNode("u", uHost, "--userspace", "--socks5", "127.0.0.1:1080", "--exit-node", "ex")
	u.waitStatus("exit node in use", func(st localapi.Status) bool { return st.Self.ExitNodeUp })
	// Its MagicDNS asks the nameserver through the netstack, so from the
	// exit node's side too.
	var dnsOut string
	if !poll.Wait(20*time.Second, func() bool {
		dnsOut, _ = w.run("meshnode", "dns", "query", "--json", "--state-dir", u.dir, "whoami.test", "A")
		return strings.Contains(dnsOut, exHost.PublicAddr().String())
	}) {
		t.Fatalf("userspace node's DNS query was not asked from the exit node's side (want %s): %s", exHost.PublicAddr(), dnsOut)
	}
	var got string
	if !poll.Wait(20*time.Second, func() bool {
		got = strings.TrimSpace(string(curlSocks(uHost, "http://"+inetTCP+"/")))
		return got != ""
	}) {
		t.Fatal("userspace node never reached the internet host through its exit node")
	}
	if got != exHost.PublicAddr().String() {
		t.Fatalf("internet host saw %s from the userspace node, want %s", got, exHost.PublicAddr())
	}

	// Kill the exit node: nothing from c or u reaches the internet host
	// for the rest of the test.
	ex.cmd.Process.Kill()
	ex.cmd.Wait()
	killed := time.Now()
	tcp0, udp0 := seenTCP.Load(), seenUDP.Load()
	for time.Since(killed) < 8*time.Second {
		askWho(cHost, inetTCP, 300*time.Millisecond)
		sendUDP(cHost)
		curlSocks(uHost, "http://"+inetTCP+"/")
		time.Sleep(100 * time.Millisecond)
	}
	st = c.waitStatus("exit node down", func(st localapi.Status) bool { return !st.Self.ExitNodeUp })
	if st.Self.ExitNode != "ex" {
		t.Fatalf("exit node in status: %+v", st.Self)
	}
	if !st.Coordinator.Connected {
		t.Fatal("coordinator lost while the exit node is dead")
	}
	time.Sleep(time.Second) // anything in flight
	if n, u := seenTCP.Load()-tcp0, seenUDP.Load()-udp0; n != 0 || u != 0 {
		t.Fatalf("with the exit node dead the internet host saw %d connections and %d datagrams", n, u)
	}
	t.Logf("exit node dead: nothing reached the internet host in %v (before: %d connections)", time.Since(killed).Round(time.Second), tcp0)
	c.stop()
	if left := routingLeftovers(cHost); len(left) > 0 {
		t.Fatalf("left after a clean exit: %v", left)
	}
}

// BenchmarkLabSubnetRouterIperf3 measures iperf3 TCP from a node to the
// printer behind a subnet router (the router's forward filter, SNAT and
// kernel forwarding on the path), beside the same flow to the router's
// own mesh address, in the same run, and reports the ratio. Both nodes
// sit behind easy NATs, so the mesh leg is direct.
func BenchmarkLabSubnetRouterIperf3(b *testing.B) {
	w := newWorld(b, "nyc")
	gw, err := w.l.AddRouter("site", lab.RouterConfig{NAT: lab.Easy})
	if err != nil {
		b.Fatal(err)
	}
	printer, err := w.l.AddHost("printer", gw)
	if err != nil {
		b.Fatal(err)
	}
	rtHost, err := w.l.AddHost("rt", gw)
	if err != nil {
		b.Fatal(err)
	}
	pfx := netip.PrefixFrom(printer.Addr, 24).Masked().String()
	rt := w.startNode("rt", rtHost, "--advertise-routes", pfx)
	c := w.startNode("c", easy.host(b, w, "c"), "--accept-routes")
	c.waitStatus("rt as a peer", func(st localapi.Status) bool { _, ok := peerOf(st, "rt"); return ok })
	w.waitAdvertised(b, "rt", pfx)
	if _, err := w.run("coordinator", "routes", "approve", "rt", pfx, "--state-dir", w.coordDir); err != nil {
		b.Fatal(err)
	}
	c.waitStatus("rt primary", func(st localapi.Status) bool { return slices.Equal(peerRoutes(st, "rt"), []string{pfx}) })
	w.waitEndpoints("rt", "c")
	rtIP := rt.ip()
	c.ping(rtIP, 3)
	c.waitStatus("direct path", func(st localapi.Status) bool { p, _ := peerOf(st, "rt"); return p.Path == "direct" })
	const d = 5 * time.Second
	var routed, own []float64
	for i := 0; i < b.N; i++ {
		rbps, rretr := iperf3(b, c.host.Namespace, printer.Namespace, printer.Addr, d)
		obps, oretr := iperf3(b, c.host.Namespace, rtHost.Namespace, rtIP, d)
		routed, own = append(routed, rbps), append(own, obps)
		st, _ := c.status()
		p, _ := peerOf(st, "rt")
		b.Logf("run %d (%s): through the subnet router %.0f Mbit/s (%d retr), to the router's mesh address %.0f Mbit/s (%d retr), ratio %.3f",
			i, p.Path, rbps/1e6, rretr, obps/1e6, oretr, rbps/obps)
	}
	b.ReportMetric(median(routed)/1e6, "routed-Mbit/s")
	b.ReportMetric(median(own)/1e6, "router-Mbit/s")
	b.ReportMetric(median(routed)/median(own), "ratio")
}

// TestLabSubnetRouterNoSNAT: with --snat-subnet-routes=false the printer
// sees the client's own mesh address, so it needs a route back to the mesh
// through the router: without one its answers are lost, with one (on the
// site's gateway) they arrive.
func TestLabSubnetRouterNoSNAT(t *testing.T) {
	w := newWorld(t, "nyc")
	site := newSite(t, w)
	serveWhoami(t, site.printer, "0.0.0.0:80", nil)
	printer80 := netip.AddrPortFrom(site.printer.Addr, 80).String()
	pfx := site.prefix.String()
	rtHost := site.host(t, w, "rt")
	w.startNode("rt", rtHost, "--advertise-routes", pfx, "--snat-subnet-routes=false")
	c := w.startNode("c", hardNATHost(t, w, "c"), "--accept-routes")
	w.waitAdvertised(t, "rt", pfx)
	if _, err := w.run("coordinator", "routes", "approve", "rt", pfx, "--state-dir", w.coordDir); err != nil {
		t.Fatal(err)
	}
	c.waitStatus("rt primary for the route", func(st localapi.Status) bool {
		return slices.Equal(peerRoutes(st, "rt"), []string{pfx})
	})
	if got, err := askWho(c.host, printer80, 3*time.Second); err == nil {
		t.Fatalf("without SNAT and without a route back the printer answered (saw %s)", got)
	}
	if err := site.gw.IP("route add 100.64.0.0/10 via " + rtHost.Addr.String()); err != nil {
		t.Fatal(err)
	}
	if got := waitWho(t, c.host, printer80, 20*time.Second); got != c.ip().String() {
		t.Fatalf("without SNAT the printer saw %s, want c's mesh address %s", got, c.ip())
	}
}
