//go:build lab

package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"github.com/wiremesh/wiremesh/internal/poll"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"golang.org/x/net/proxy"
)

// hardNATHost puts a host behind its own hard NAT (home firewall): two such
// hosts cannot reach each other over direct UDP, so they use the relay.
func hardNATHost(t testing.TB, w *world, name string) *lab.Host {
	t.Helper()
	r, err := w.l.AddRouter("r-"+name, lab.RouterConfig{NAT: lab.Hard})
	if err != nil {
		t.Fatal(err)
	}
	h, err := w.l.AddHost(name, r)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// relayedPair starts nodes a and b, each behind its own hard NAT (so
// relayed), waits until each has the other as its one peer, and pings b
// from a once. It returns the nodes and b's mesh address.
func relayedPair(t testing.TB, w *world) (a, b *node, bIP netip.Addr) {
	t.Helper()
	a = w.startNode("a", hardNATHost(t, w, "a"))
	b = w.startNode("b", hardNATHost(t, w, "b"))
	for _, n := range []*node{a, b} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	bIP = b.ip()
	if err := a.ping(bIP, 1); err != nil {
		t.Fatal(err)
	}
	return a, b, bIP
}

// transfer sends size bytes over TCP from src to dst's mesh address and
// checks the SHA-256 on arrival.
func transfer(t *testing.T, src, dst *node, dstIP netip.Addr, size int) {
	t.Helper()
	ln, err := dst.host.Listen(netip.AddrPortFrom(dstIP, 5001).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		h := sha256.New()
		n, err := io.Copy(h, c)
		got <- result{[32]byte(h.Sum(nil)), n, err}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := src.host.Dial(ctx, "tcp4", netip.AddrPortFrom(dstIP, 5001).String())
	if err != nil {
		t.Fatalf("dial %v over the mesh: %v", dstIP, err)
	}
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	start := time.Now()
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	c.Close()
	r := <-got
	if r.err != nil || r.n != int64(size) {
		t.Fatalf("received %d of %d bytes: %v", r.n, size, r.err)
	}
	if r.sum != sha256.Sum256(data) {
		t.Fatal("checksum mismatch")
	}
	t.Logf("%d MB %s→%s in %v (%.0f Mbit/s)", size>>20, src.name, dst.name, time.Since(start).Round(time.Millisecond),
		float64(size)*8/time.Since(start).Seconds()/1e6)
}

// canConnect reports whether a TCP connection from src to addr opens.
func canConnect(src *node, addr netip.AddrPort, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := src.host.Dial(ctx, "tcp4", addr.String())
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// TestLabMeshOverRelay: three kernel-TUN nodes behind hard NATs reach each
// other through the relay: ping, a 50 MB transfer with its checksum, and
// status showing the relay path.
func TestLabMeshOverRelay(t *testing.T) {
	w := newWorld(t, "nyc")
	a := w.startNode("a", hardNATHost(t, w, "a"))
	b := w.startNode("b", hardNATHost(t, w, "b"))
	c := w.startNode("c", hardNATHost(t, w, "c"))
	for _, n := range []*node{a, b, c} {
		n.waitStatus("two peers", func(st localapi.Status) bool { return len(st.Peers) == 2 })
	}
	bIP, cIP := b.ip(), c.ip()
	if err := a.ping(bIP, 3); err != nil {
		t.Fatal(err)
	}
	if err := b.ping(cIP, 3); err != nil {
		t.Fatal(err)
	}
	transfer(t, a, b, bIP, 50<<20)
	st := a.waitStatus("relay path to b", func(st localapi.Status) bool {
		p, ok := peerOf(st, "b")
		return ok && p.Path == "relay" && p.LastHandshake != nil
	})
	if p, _ := peerOf(st, "b"); p.Relay != "nyc" || p.TxBytes < 50<<20 || p.Endpoint != "" {
		t.Fatalf("a's view of b: %+v", p)
	}
	// The transfer went through the relay fast path on each node's own
	// UDP socket, in wireguard-go's batches: 50 MB is over 38,000 packets
	// of 1,312 bytes.
	for _, c := range []struct {
		n    *node
		dir  string
		want float64
	}{{a, "tx", 38000}, {b, "rx", 38000}} {
		sample := `meshnode_relay_fastpath_batched_packets_total{direction="` + c.dir + `"}`
		if v, ok := metricValue(c.n, sample); !ok || v < c.want {
			t.Errorf("%s: %s = %v (present %v), want at least %v", c.n.name, sample, v, ok, c.want)
		}
	}
	// meshnode ping: a disco ping through the relay.
	out, err := w.run("meshnode", "ping", "--json", "-c", "2", "--state-dir", a.dir, "c")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"path":"relay"`) || !strings.Contains(out, `"via":"nyc"`) {
		t.Fatalf("meshnode ping output: %s", out)
	}
}

// TestLabACL: a policy that lets a reach b but not c. c still sees a (c may
// reach everyone), so a's packets to c arrive, and c's filter drops them.
func TestLabACL(t *testing.T) {
	w := newWorld(t, "nyc")
	a := w.startNode("a", hardNATHost(t, w, "a"))
	b := w.startNode("b", hardNATHost(t, w, "b"))
	c := w.startNode("c", hardNATHost(t, w, "c"))
	policy := `{
		// a may reach b only; b and c may reach anyone.
		"acls": [
			{"action": "accept", "src": ["a"], "dst": ["b:*"]},
			{"action": "accept", "src": ["b", "c"], "dst": ["*:*"]},
		],
	}`
	pf := filepath.Join(t.TempDir(), "policy.hujson")
	os.WriteFile(pf, []byte(policy), 0o600)
	if _, err := w.run("coordinator", "policy", "set", pf, "--state-dir", w.coordDir); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*node{a, b, c} {
		n.waitStatus("two peers", func(st localapi.Status) bool { return len(st.Peers) == 2 })
	}
	bIP, cIP := b.ip(), c.ip()
	for _, n := range []*node{b, c} {
		ln, err := n.host.Listen(netip.AddrPortFrom(map[*node]netip.Addr{b: bIP, c: cIP}[n], 7000).String())
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go greet(ln, "")
	}
	// a→b works (retry while the policy's filter reaches b).
	deadline := time.Now().Add(20 * time.Second)
	for !canConnect(a, netip.AddrPortFrom(bIP, 7000), 2*time.Second) {
		if time.Now().After(deadline) {
			t.Fatal("a cannot reach b although the policy allows it")
		}
	}
	if canConnect(a, netip.AddrPortFrom(cIP, 7000), 3*time.Second) {
		t.Fatal("a reached c although the policy denies it")
	}
	// c→a works: c started the flow, so a's replies pass c's filter.
	lnA, err := a.host.Listen(netip.AddrPortFrom(a.ip(), 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer lnA.Close()
	go greet(lnA, "")
	if !canConnect(c, netip.AddrPortFrom(a.ip(), 7000), 5*time.Second) {
		t.Fatal("c cannot reach a")
	}
}

// TestLabUserspaceAndRestart: a userspace node (no TUN) is reached through
// its SOCKS5 proxy, forwards the ports it lists (and no other) to its
// localhost, and a node restarted while the coordinator is down reaches
// its peers again from its cached netmap.
func TestLabUserspaceAndRestart(t *testing.T) {
	w := newWorld(t, "nyc")
	a := w.startNode("a", hardNATHost(t, w, "a"))
	uh := hardNATHost(t, w, "u")
	u := w.startNode("u", uh, "--userspace", "--socks5", "127.0.0.1:1080", "--forward-ports", "9090")
	for _, n := range []*node{a, u} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	aIP := a.ip()
	// A service on a's mesh address, reached from u through u's SOCKS5.
	ln, err := a.host.Listen(netip.AddrPortFrom(aIP, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go greet(ln, "hello from a")
	var got string
	err = uh.Do(func() error {
		d, err := proxy.SOCKS5("tcp", "127.0.0.1:1080", nil, proxy.Direct)
		if err != nil {
			return err
		}
		var dialErr error
		if !poll.Wait(20*time.Second, func() bool {
			cc, err := d.Dial("tcp", "a:8080")
			if err != nil {
				dialErr = err
				return false
			}
			b, _ := io.ReadAll(cc)
			cc.Close()
			got = string(b)
			return true
		}) {
			return fmt.Errorf("socks5 dial a:8080: %w", dialErr)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != "hello from a" {
		t.Fatalf("got %q through SOCKS5", got)
	}
	// And u's own mesh address serves on u's localhost: a reaches it.
	lnU, err := uh.Listen("127.0.0.1:9090")
	if err != nil {
		t.Fatal(err)
	}
	defer lnU.Close()
	go greet(lnU, "hello from u")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc, err := a.host.Dial(ctx, "tcp4", netip.AddrPortFrom(u.ip(), 9090).String())
	if err != nil {
		t.Fatalf("a → u inbound forward: %v", err)
	}
	b, _ := io.ReadAll(cc)
	cc.Close()
	if string(b) != "hello from u" {
		t.Fatalf("inbound forward gave %q", b)
	}
	// A localhost-only service on a port u does not list, and u's own
	// SOCKS5 proxy, are not reachable from the mesh.
	lnPrivate, err := uh.Listen("127.0.0.1:9091")
	if err != nil {
		t.Fatal(err)
	}
	defer lnPrivate.Close()
	go greet(lnPrivate, "private")
	for _, port := range []uint16{9091, 1080} {
		if cc, err := a.host.Dial(ctx, "tcp4", netip.AddrPortFrom(u.ip(), port).String()); err == nil {
			b, _ := io.ReadAll(cc)
			cc.Close()
			t.Fatalf("a reached u's unlisted localhost port %d: %q", port, b)
		}
	}

	// Restart a with the coordinator down.
	w.stopCoordinator()
	a.stop()
	a.start()
	st := a.waitStatus("peer from cache", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	if st.Coordinator.Connected {
		t.Fatal("coordinator reported connected while down")
	}
	if err := a.ping(u.ip(), 3); err != nil {
		t.Fatalf("after restart from cache: %v", err)
	}
}

// greet accepts connections on ln until it is closed, writes msg to each
// and closes it.
func greet(ln net.Listener, msg string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.Write([]byte(msg))
		c.Close()
	}
}

// metricValue reads one sample (name with its labels, as exposed) from a
// node's metrics; false if absent.
func metricValue(n *node, sample string) (float64, bool) {
	out := metricsOf(n.host.Namespace, "http://127.0.0.1:9100/metrics", sample)
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == sample {
			v, err := strconv.ParseFloat(f[1], 64)
			return v, err == nil
		}
	}
	return 0, false
}
