//go:build lab

package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// echoServer answers every UDP datagram with the source address it saw.
func echoServer(t *testing.T, h *Host, port int) netip.AddrPort {
	t.Helper()
	c, err := h.ListenUDP(fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_ = n
			c.WriteToUDPAddrPort([]byte(from.String()), from)
		}
	}()
	return netip.AddrPortFrom(h.Addr, uint16(port))
}

// observed sends one datagram from c to srv and returns the source address
// the server saw, retrying a few times for lost packets.
func observed(c *net.UDPConn, srv netip.AddrPort) (netip.AddrPort, error) {
	buf := make([]byte, 100)
	for try := 0; try < 5; try++ {
		if _, err := c.WriteToUDPAddrPort([]byte("?"), srv); err != nil {
			return netip.AddrPort{}, err
		}
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break // timeout: retry
			}
			if from != srv {
				continue
			}
			return netip.ParseAddrPort(string(buf[:n]))
		}
	}
	return netip.AddrPort{}, fmt.Errorf("no answer from %v", srv)
}

// twoServers adds two public echo servers.
func twoServers(t *testing.T, l *Lab) (netip.AddrPort, netip.AddrPort) {
	s1, err := l.AddHost("s1", nil)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := l.AddHost("s2", nil)
	if err != nil {
		t.Fatal(err)
	}
	return echoServer(t, s1, 3478), echoServer(t, s2, 3478)
}

func mappings(t *testing.T, h *Host, localPort int, servers ...netip.AddrPort) []netip.AddrPort {
	t.Helper()
	c, err := h.ListenUDP(fmt.Sprintf(":%d", localPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out []netip.AddrPort
	for _, s := range servers {
		m, err := observed(c, s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func TestLabNATMapping(t *testing.T) {
	for _, tc := range []struct {
		name       string
		build      func(l *Lab) (*Router, error)
		wantStable bool
	}{
		{"easy", func(l *Lab) (*Router, error) { return l.AddRouter("r", RouterConfig{NAT: Easy}) }, true},
		{"hard", func(l *Lab) (*Router, error) { return l.AddRouter("r", RouterConfig{NAT: Hard}) }, false},
		{"double", func(l *Lab) (*Router, error) {
			outer, err := l.AddRouter("cgnat", RouterConfig{NAT: Easy})
			if err != nil {
				return nil, err
			}
			return l.AddRouter("home", RouterConfig{NAT: Easy, Upstream: outer})
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := New(t)
			s1, s2 := twoServers(t, l)
			r, err := tc.build(l)
			if err != nil {
				t.Fatal(err)
			}
			h, err := l.AddHost("a", r)
			if err != nil {
				t.Fatal(err)
			}
			m := mappings(t, h, 41641, s1, s2)
			t.Logf("host %v (public %v) mapped to %v and %v", h.Addr, h.PublicAddr(), m[0], m[1])
			for _, a := range m {
				if a.Addr() != h.PublicAddr() {
					t.Fatalf("server saw %v, want public address %v", a, h.PublicAddr())
				}
				if a.Addr() == h.Addr {
					t.Fatalf("no NAT happened: server saw the host's own address %v", a)
				}
			}
			if stable := m[0] == m[1]; stable != tc.wantStable {
				t.Fatalf("mapping towards two servers: %v and %v; stable=%v, want %v", m[0], m[1], stable, tc.wantStable)
			}
		})
	}
}

// TestLabUnsolicitedProbe checks the Linux NAT quirk the Bare router kind
// exists for: a probe from outside to the router's port P, before the inside
// host sends from P, makes masquerade give the host's flow another port. A
// Home router drops the probe before conntrack confirms it, so the host
// keeps P.
func TestLabUnsolicitedProbe(t *testing.T) {
	for _, tc := range []struct {
		fw       Firewall
		wantKeep bool
	}{
		{Home, true},
		{Bare, false},
	} {
		t.Run(tc.fw.String(), func(t *testing.T) {
			l := New(t)
			srv, err := l.AddHost("s", nil)
			if err != nil {
				t.Fatal(err)
			}
			r, err := l.AddRouter("r", RouterConfig{NAT: Easy, Firewall: tc.fw})
			if err != nil {
				t.Fatal(err)
			}
			h, err := l.AddHost("a", r)
			if err != nil {
				t.Fatal(err)
			}
			const port = 41641
			sc, err := srv.ListenUDP(":3478")
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			// The early probe: server ip:3478 → router WAN:41641.
			if _, err := sc.WriteToUDPAddrPort([]byte("punch"), netip.AddrPortFrom(r.WAN, port)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Millisecond) // let the probe reach the router
			hc, err := h.ListenUDP(fmt.Sprintf(":%d", port))
			if err != nil {
				t.Fatal(err)
			}
			defer hc.Close()
			if _, err := hc.WriteToUDPAddrPort([]byte("hello"), netip.AddrPortFrom(srv.Addr, 3478)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64)
			sc.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, from, err := sc.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("server got nothing from the host: %v", err)
			}
			kept := from.Port() == port
			t.Logf("%s router: host flow seen as %v", tc.fw, from)
			if kept != tc.wantKeep {
				t.Fatalf("%s router: port kept=%v (seen %v), want %v", tc.fw, kept, from, tc.wantKeep)
			}
		})
	}
}

func TestLabUDPBlocked(t *testing.T) {
	l := New(t)
	s1, _ := twoServers(t, l)
	r, err := l.AddRouter("r", RouterConfig{NAT: Easy, BlockUDP: true})
	if err != nil {
		t.Fatal(err)
	}
	h, err := l.AddHost("a", r)
	if err != nil {
		t.Fatal(err)
	}
	c, err := h.ListenUDP(":0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if m, err := observed(c, s1); err == nil {
		t.Fatalf("UDP passed a UDP-blocking router: server saw %v", m)
	}
	// TCP to the same server passes.
	srvHost := l.nsByShort("s1")
	ln, err := srvHost.Listen(":8080")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("tcp ok"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	tc, err := h.Dial(ctx, "tcp4", netip.AddrPortFrom(s1.Addr(), 8080).String())
	if err != nil {
		t.Fatalf("TCP through UDP-blocking router: %v", err)
	}
	defer tc.Close()
	buf := make([]byte, 16)
	tc.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, _ := tc.Read(buf)
	if string(buf[:n]) != "tcp ok" {
		t.Fatalf("TCP read %q", buf[:n])
	}
	// And a host behind a normal router still has UDP: the block is the
	// router's doing, not the lab's.
	r2, _ := l.AddRouter("r2", RouterConfig{NAT: Easy})
	h2, _ := l.AddHost("b", r2)
	c2, err := h2.ListenUDP(":0")
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := observed(c2, s1); err != nil {
		t.Fatalf("UDP through a normal router: %v", err)
	}
}

func (l *Lab) nsByShort(name string) *Namespace {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ns := range l.nss {
		if ns.Short == name {
			return ns
		}
	}
	return nil
}

// rtts measures n UDP echo round trips from c to srv.
func rtts(t *testing.T, c *net.UDPConn, srv netip.AddrPort, n int) []time.Duration {
	t.Helper()
	buf := make([]byte, 100)
	var out []time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		c.WriteToUDPAddrPort([]byte("?"), srv)
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err != nil {
			continue
		}
		out = append(out, time.Since(start))
	}
	if len(out) < n/2 {
		t.Fatalf("only %d of %d echoes answered", len(out), n)
	}
	slices.Sort(out)
	return out
}

func TestLabDelay(t *testing.T) {
	l := New(t)
	s1, s2 := twoServers(t, l)
	h, err := l.AddHost("a", nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := h.ListenUDP(":0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const oneWay = 20 * time.Millisecond
	d, err := l.AddDelay(h.Addr, s1.Addr(), oneWay, 2*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	delayed := rtts(t, c, s1, 20)
	direct := rtts(t, c, s2, 20)
	med, base := delayed[len(delayed)/2], direct[len(direct)/2]
	t.Logf("median RTT: delayed %v, undelayed %v", med, base)
	// Loose bounds: the RTT carries 2×oneWay (±jitter) of added latency, and
	// the undelayed path is unaffected.
	if med < 2*oneWay-4*time.Millisecond || med > 2*oneWay+40*time.Millisecond {
		t.Fatalf("delayed median RTT %v, want about %v", med, 2*oneWay)
	}
	if base > oneWay {
		t.Fatalf("undelayed path median %v also slowed", base)
	}
	if passed, _ := d.Stats(); passed < 2*uint64(len(delayed)) {
		t.Fatalf("stage passed %d packets, want at least %d", passed, 2*len(delayed))
	}
	// Removing the stage removes the latency.
	d.Close()
	after := rtts(t, c, s1, 20)
	if m := after[len(after)/2]; m > oneWay {
		t.Fatalf("after Close median RTT %v, want undelayed", m)
	}
}

func TestLabDelayBehindNAT(t *testing.T) {
	// A delay between a router's public address and a server slows the
	// NATed host's traffic: how relay-choice tests place regions.
	l := New(t)
	s1, _ := twoServers(t, l)
	r, _ := l.AddRouter("r", RouterConfig{NAT: Easy})
	h, err := l.AddHost("a", r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.AddDelay(r.WAN, s1.Addr(), 15*time.Millisecond, 0); err != nil {
		t.Fatal(err)
	}
	c, _ := h.ListenUDP(":0")
	defer c.Close()
	got := rtts(t, c, s1, 10)
	if m := got[len(got)/2]; m < 28*time.Millisecond {
		t.Fatalf("median RTT %v behind NAT, want ≥ 30ms", m)
	}
}

func TestLabMoveHost(t *testing.T) {
	l := New(t)
	s1, _ := twoServers(t, l)
	r1, _ := l.AddRouter("r1", RouterConfig{NAT: Easy})
	r2, _ := l.AddRouter("r2", RouterConfig{NAT: Easy})
	h, err := l.AddHost("a", r1)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := h.ListenUDP(":41641")
	defer c.Close()
	m1, err := observed(c, s1)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.MoveTo(r2); err != nil {
		t.Fatal(err)
	}
	m2, err := observed(c, s1) // the same socket keeps working
	if err != nil {
		t.Fatal(err)
	}
	if m1.Addr() != r1.WAN || m2.Addr() != r2.WAN {
		t.Fatalf("before/after move: %v, %v; want via %v then %v", m1, m2, r1.WAN, r2.WAN)
	}
}

func TestLabCleanup(t *testing.T) {
	Require(t)
	l, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	r, _ := l.AddRouter("r", RouterConfig{})
	l.AddHost("a", r)
	p, err := l.Core.Start(context.Background(), "sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	if n := countNS(t, l.Tag()); n != 3 {
		t.Fatalf("%d namespaces before close, want 3", n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if n := countNS(t, l.Tag()); n != 0 {
		t.Fatalf("%d namespaces left after close", n)
	}
	if p.ProcessState == nil {
		t.Fatal("started process not reaped")
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := l.AddHost("late", nil); err == nil {
		t.Fatal("AddHost after Close succeeded")
	}
}

func TestLabSweep(t *testing.T) {
	l := New(t) // a live one, which must survive
	// A namespace named as a dead process's lab would be.
	dead := fmt.Sprintf("%s%d-dead00-x", namePrefix, 1<<22+12345)
	if err := run(nil, "ip", "netns", "add", dead); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run(nil, "ip", "netns", "del", dead) })
	swept, err := Sweep()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(swept, dead) {
		t.Fatalf("Sweep removed %v, want %s", swept, dead)
	}
	if countNS(t, l.Tag()) != 1 {
		t.Fatal("Sweep removed a live lab's namespace")
	}
}

func TestLabPanicCleanup(t *testing.T) {
	Require(t)
	if os.Getenv("WM_LAB_PANIC_CHILD") == "1" {
		l := New(t)
		fmt.Println("TAG=" + l.Tag())
		panic("boom")
	}
	// Run this test again in a child that panics after building a lab;
	// its namespaces must be gone when it exits.
	exe, _ := os.Executable()
	cmd := execCommand(exe, "-test.run=^TestLabPanicCleanup$", "-test.v")
	cmd.Env = append(os.Environ(), "WM_LAB_PANIC_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("child did not fail:\n%s", out)
	}
	var tag string
	for _, line := range strings.Split(string(out), "\n") {
		if s, ok := strings.CutPrefix(line, "TAG="); ok {
			tag = s
		}
	}
	if tag == "" {
		t.Fatalf("child printed no tag:\n%s", out)
	}
	if n := countNS(t, tag); n != 0 {
		t.Fatalf("panicking test left %d namespaces", n)
	}
}

func countNS(t *testing.T, tag string) int {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tag+"-") {
			n++
		}
	}
	return n
}

// BenchmarkLabTopology10 builds and tears down a 10-namespace topology:
// core, two public servers, an easy, a hard and a double NAT (two routers)
// router, and three hosts.
func BenchmarkLabTopology10(b *testing.B) {
	if err := Check(); err != nil {
		b.Skip(err)
	}
	var setup, teardown time.Duration
	for b.Loop() {
		start := time.Now()
		l, err := Open()
		if err != nil {
			b.Fatal(err)
		}
		must := func(err error) {
			if err != nil {
				l.Close()
				b.Fatal(err)
			}
		}
		_, err = l.AddHost("s1", nil)
		must(err)
		_, err = l.AddHost("s2", nil)
		must(err)
		easy, err := l.AddRouter("easy", RouterConfig{NAT: Easy})
		must(err)
		hard, err := l.AddRouter("hard", RouterConfig{NAT: Hard})
		must(err)
		cg, err := l.AddRouter("cgnat", RouterConfig{NAT: Easy})
		must(err)
		home, err := l.AddRouter("home", RouterConfig{NAT: Easy, Upstream: cg})
		must(err)
		for i, r := range []*Router{easy, hard, home} {
			_, err = l.AddHost(fmt.Sprintf("h%d", i), r)
			must(err)
		}
		mid := time.Now()
		must(l.Close())
		setup += mid.Sub(start)
		teardown += time.Since(mid)
	}
	b.ReportMetric(float64(setup.Milliseconds())/float64(b.N), "setup-ms/op")
	b.ReportMetric(float64(teardown.Milliseconds())/float64(b.N), "teardown-ms/op")
}

// BenchmarkLabBaselineNetns10 is the floor for BenchmarkLabTopology10: ten
// bare namespaces added and deleted by one `ip -batch` each, with no links,
// addresses or rules.
func BenchmarkLabBaselineNetns10(b *testing.B) {
	if err := Check(); err != nil {
		b.Skip(err)
	}
	for b.Loop() {
		var add, del strings.Builder
		for i := 0; i < 10; i++ {
			fmt.Fprintf(&add, "netns add %s%d-bench-%d\n", namePrefix, os.Getpid(), i)
			fmt.Fprintf(&del, "netns del %s%d-bench-%d\n", namePrefix, os.Getpid(), i)
		}
		if err := run(strings.NewReader(add.String()), "ip", "-batch", "-"); err != nil {
			b.Fatal(err)
		}
		if err := run(strings.NewReader(del.String()), "ip", "-batch", "-"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLabOwnResolvConf: every namespace reads a resolv.conf of its own
// (so a daemon that rewrites it leaves the host's alone), and the file
// goes with the lab.
func TestLabOwnResolvConf(t *testing.T) {
	Require(t)
	l, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	h, err := l.AddHost("a", nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := h.Command(context.Background(), "cat", "/etc/resolv.conf").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "lab namespace "+h.Name) {
		t.Fatalf("namespace sees the host's resolv.conf:\n%s", out)
	}
	host, _ := os.ReadFile("/etc/resolv.conf")
	if strings.Contains(string(host), "lab namespace") {
		t.Fatal("the host's resolv.conf is the lab's")
	}
	dir := filepath.Join(netnsEtc, h.Name)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s left after close: %v", dir, err)
	}
}
