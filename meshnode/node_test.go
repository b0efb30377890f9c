package meshnode

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/wiremesh/wiremesh/internal/poll"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/relayd"
	"github.com/wiremesh/wiremesh/relayd/relaytest"
	"golang.org/x/net/proxy"
)

// mesh is an in-process coordinator with relays in two regions.
type mesh struct {
	coord   *coordtest.Server
	relays  map[string]*relaytest.Relay
	authKey string
}

func newMesh(t testing.TB, regions ...string) *mesh {
	t.Helper()
	return newMeshWith(t, nil, regions...)
}

// newMeshWith is newMesh with mod applied to each relay's config.
func newMeshWith(t testing.TB, mod func(*relayd.Config), regions ...string) *mesh {
	t.Helper()
	signer := key.NewSigning()
	dir := t.TempDir()
	if err := key.WriteKeyFile(filepath.Join(dir, "signing.key"), signer); err != nil {
		t.Fatal(err)
	}
	m := &mesh{relays: map[string]*relaytest.Relay{}}
	var regs []string
	for _, code := range regions {
		rc := relayd.Config{
			Region: code, Listen: "127.0.0.1:0", StateDir: t.TempDir(),
			Trusted: []key.SigningPublic{signer.Public()}, DrainGrace: 100 * time.Millisecond,
		}
		if mod != nil {
			mod(&rc)
		}
		r := relaytest.StartWith(t, rc, signer)
		m.relays[code] = r
		in := r.Info()
		regs = append(regs, fmt.Sprintf(`{"code":%q,"name":%q,"relays":[{"name":"%s-1","addr":%q,"pin":%q,"key":%q}]}`,
			code, strings.ToUpper(code), code, in.Addr, in.Pin, in.Key))
	}
	rm := filepath.Join(t.TempDir(), "relays.json")
	os.WriteFile(rm, []byte(`{"regions":[`+strings.Join(regs, ",")+`]}`), 0o600)
	m.coord = coordtest.Start(t, func(c *coordinator.Config) { c.StateDir = dir; c.RelayMapFile = rm })
	m.authKey = m.coord.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	return m
}

type testNode struct {
	name  string
	dir   string
	socks string
	api   *localapi.Client
	done  chan error
	stop  context.CancelFunc
}

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func testLogger(t testing.TB, name string) *slog.Logger {
	if os.Getenv("WIREMESH_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
	}
	return slog.New(slog.DiscardHandler)
}

func (m *mesh) startNode(t testing.TB, name string, dir string) *testNode {
	t.Helper()
	return m.startNodeWith(t, name, dir, nil)
}

func (m *mesh) startNodeWith(t testing.TB, name string, dir string, mod func(*Config)) *testNode {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	n := &testNode{name: name, dir: dir, socks: freeAddr(t), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	n.stop = cancel
	cfg := Config{Coordinator: m.coord.URL(), AuthKey: m.authKey, Hostname: name, StateDir: dir,
		Userspace: true, Socks5: n.socks, Log: testLogger(t, name), AcceptDNS: true,
		// Test servers pick free ports after the nodes start: forward
		// them all (forward_test.go tests the forwarding rules).
		ForwardPorts: allPorts(t),
		// Everything runs on this host: offer loopback only, never the
		// machine's other addresses.
		EndpointPrefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	if mod != nil {
		mod(&cfg)
	}
	go func() { n.done <- Run(ctx, cfg) }()
	t.Cleanup(func() { n.shutdown(t) })
	n.api = localapi.NewClient(filepath.Join(dir, localapi.SocketName))
	return n
}

func (n *testNode) shutdown(t testing.TB) {
	n.stop()
	select {
	case err := <-n.done:
		if err != nil {
			t.Errorf("node %s: %v", n.name, err)
		}
		n.done <- nil // later calls return at once
	case <-time.After(15 * time.Second):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Errorf("node %s did not stop:\n%s", n.name, buf)
	}
}

// waitStatus polls status until cond holds.
func (n *testNode) waitStatus(t testing.TB, what string, cond func(localapi.Status) bool) localapi.Status {
	t.Helper()
	var st localapi.Status
	var err error
	if !poll.Wait(poll.DefaultTimeout, func() bool {
		st, err = n.api.Status(context.Background())
		return err == nil && cond(st)
	}) {
		b, _ := json.Marshal(st)
		t.Fatalf("%s: %s never happened (last status %s, err %v)", n.name, what, b, err)
	}
	return st
}

func peerNamed(st localapi.Status, name string) (localapi.PeerStatus, bool) {
	for _, p := range st.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return localapi.PeerStatus{}, false
}

// TestUserspaceMeshOverRelays is the demo as a test: three userspace nodes,
// two relay regions, and an HTTP page served on C fetched from A over the
// mesh through A's SOCKS5 proxy.
func TestUserspaceMeshOverRelays(t *testing.T) {
	m := newMesh(t, "nyc", "fra")
	a := m.startNode(t, "a", "")
	b := m.startNode(t, "b", "")
	c := m.startNode(t, "c", "")
	for _, n := range []*testNode{a, b, c} {
		n.waitStatus(t, "two peers", func(st localapi.Status) bool { return len(st.Peers) == 2 && st.Coordinator.Connected })
	}

	// C serves a page on localhost; C's node forwards mesh connections to it.
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "hello from c")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	d, err := proxy.SOCKS5("tcp", a.socks, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.(proxy.ContextDialer).DialContext}, Timeout: 20 * time.Second}
	resp, err := hc.Get(fmt.Sprintf("http://c:%d/", port))
	if err != nil {
		t.Fatalf("fetch from c over the mesh: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello from c" {
		t.Fatalf("got %q", body)
	}

	// All nodes share this host's loopback, so after the first packets
	// through the relay the pair upgrades to a direct path.
	st := a.waitStatus(t, "direct path to c", func(st localapi.Status) bool {
		p, ok := peerNamed(st, "c")
		return ok && p.Path == "direct" && p.LastHandshake != nil
	})
	pc, _ := peerNamed(st, "c")
	if !strings.HasPrefix(pc.Endpoint, "127.0.0.1:") || pc.Relay != "" || pc.TxBytes == 0 || pc.RxBytes == 0 || !pc.Online || pc.RTTMs <= 0 {
		t.Fatalf("peer c status %+v", pc)
	}
	if st.Self.HomeRelay == "" || st.Self.Name != "a" || len(st.Self.IPs) != 1 {
		t.Fatalf("self %+v", st.Self)
	}

	// Disco ping over the relay.
	var got []localapi.PingResult
	err = a.api.Ping(context.Background(), localapi.PingRequest{Peer: "b", Count: 2, Timeout: 5 * time.Second},
		func(r localapi.PingResult) { got = append(got, r) })
	// Every pong reports its path; on loopback the pair also goes direct.
	if err != nil || len(got) == 0 {
		t.Fatalf("ping b: %+v %v", got, err)
	}
	for _, r := range got {
		if r.RTTMs <= 0 || r.Path == "relay" && r.Via == "" || r.Path == "direct" && !strings.HasPrefix(r.Via, "127.0.0.1:") {
			t.Fatalf("ping b result %+v", r)
		}
	}
	if err := a.api.Ping(context.Background(), localapi.PingRequest{Peer: "nobody", Count: 1}, func(localapi.PingResult) {}); err == nil {
		t.Fatal("ping of unknown peer succeeded")
	}
}

// TestRestartFromCacheWhileCoordinatorDown restarts a node with the
// coordinator stopped: the cached netmap brings the mesh back.
func TestRestartFromCacheWhileCoordinatorDown(t *testing.T) {
	m := newMesh(t, "nyc")
	a := m.startNode(t, "a", "")
	b := m.startNode(t, "b", "")
	for _, n := range []*testNode{a, b} {
		n.waitStatus(t, "one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	// Let the cache be written, then stop a and the coordinator.
	poll.Until(t, "netmap cache written", func() bool {
		_, err := os.Stat(filepath.Join(a.dir, netmapFile))
		return err == nil
	})
	a.shutdown(t)
	m.coord.Stop()
	a2 := m.startNode(t, "a", a.dir)
	st := a2.waitStatus(t, "peer from cache", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	if st.Coordinator.Connected {
		t.Fatal("coordinator reported connected while stopped")
	}
	// WireGuard keys are stable, so data flows from the cache alone. (Disco
	// pings would not: a's disco key is fresh on each start and only the
	// coordinator can tell b about it.)
	if body := fetch(t, a2, "b"); body != "hello" {
		t.Fatalf("fetch from b with coordinator down: %q", body)
	}
}

// fetch gets a page from peer through n's SOCKS5 proxy; the peer forwards
// the connection to a server on localhost that says hello.
func fetch(t testing.TB, n *testNode, peer string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello") })}
	go srv.Serve(ln)
	defer srv.Close()
	d, err := proxy.SOCKS5("tcp", n.socks, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.(proxy.ContextDialer).DialContext, DisableKeepAlives: true}, Timeout: 20 * time.Second}
	resp, err := hc.Get(fmt.Sprintf("http://%s:%d/", peer, ln.Addr().(*net.TCPAddr).Port))
	if err != nil {
		t.Fatalf("fetch from %s: %v", peer, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestHomeRelayFailover stops the home relay of two relay-only nodes: both
// move to the other region, tell the coordinator, and relayed traffic
// between them resumes.
func TestHomeRelayFailover(t *testing.T) {
	m := newMesh(t, "nyc", "fra")
	relayOnly := func(c *Config) { c.RelayOnly = true }
	a := m.startNodeWith(t, "a", "", relayOnly)
	b := m.startNodeWith(t, "b", "", relayOnly)
	var home string
	for _, n := range []*testNode{a, b} {
		st := n.waitStatus(t, "a peer and a home", func(st localapi.Status) bool { return len(st.Peers) == 1 && st.Self.HomeRelay != "" })
		home = st.Self.HomeRelay
	}
	if body := fetch(t, a, "b"); body != "hello" {
		t.Fatalf("before failover: %q", body)
	}
	m.relays[home].Stop()
	for _, n := range []*testNode{a, b} {
		n.waitStatus(t, "a new home", func(st localapi.Status) bool { return st.Self.HomeRelay != "" && st.Self.HomeRelay != home })
	}
	if body := fetch(t, a, "b"); body != "hello" {
		t.Fatalf("after failover: %q", body)
	}
	st, _ := a.api.Status(context.Background())
	if p, _ := peerNamed(st, "b"); p.Path != "relay" || p.Relay == home {
		t.Fatalf("a's path to b after failover: %+v", p)
	}
}
