package coordinator_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/coordinator/policy"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// waitTimeout bounds every wait for a condition. Tests never assert how
// fast something happens, only that it happens within this generous bound.
const waitTimeout = 15 * time.Second

// watcher follows one node's netmap stream.
type watcher struct {
	t      testing.TB
	mu     sync.Mutex
	nm     netmap.NetworkMap
	frames []*netmap.MapResponse
	err    error
	update chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

func watch(t testing.TB, n *coordtest.Node, mr netmap.MapRequest) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{t: t, update: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	if mr.DiscoKey.IsZero() {
		mr.DiscoKey = n.Disco.Public()
	}
	go func() {
		defer close(w.done)
		err := n.Client.Watch(ctx, mr, func(nm *netmap.NetworkMap, m *netmap.MapResponse) error {
			w.mu.Lock()
			w.nm = copyMap(nm)
			w.frames = append(w.frames, m)
			w.mu.Unlock()
			select {
			case w.update <- struct{}{}:
			default:
			}
			return nil
		})
		w.mu.Lock()
		w.err = err
		w.mu.Unlock()
		select {
		case w.update <- struct{}{}:
		default:
		}
	}()
	t.Cleanup(w.stop)
	return w
}

func copyMap(nm *netmap.NetworkMap) netmap.NetworkMap {
	c := *nm
	c.Peers = make(map[netmap.NodeID]netmap.Node, len(nm.Peers))
	for k, v := range nm.Peers {
		c.Peers[k] = v
	}
	return c
}

func (w *watcher) stop() {
	w.cancel()
	<-w.done
}

// waitFor waits until cond holds for the current map.
func (w *watcher) waitFor(what string, cond func(nm *netmap.NetworkMap) bool) netmap.NetworkMap {
	w.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		w.mu.Lock()
		nm, err, ok := w.nm, w.err, w.nm.Peers != nil && cond(&w.nm)
		w.mu.Unlock()
		if ok {
			return nm
		}
		if err != nil {
			w.t.Fatalf("waiting for %s: stream ended: %v", what, err)
		}
		select {
		case <-w.update:
		case <-deadline:
			w.t.Fatalf("timed out waiting for %s; map: %+v", what, nm)
		}
	}
}

// waitEnd waits for the stream to end and returns its error.
func (w *watcher) waitEnd() error {
	w.t.Helper()
	select {
	case <-w.done:
	case <-time.After(waitTimeout):
		w.t.Fatal("stream did not end")
	}
	return w.err
}

func TestRegisterStreamAndDelta(t *testing.T) {
	s := coordtest.Start(t, func(c *coordinator.Config) {
		c.DNSDomain = "test.internal"
	})
	key1 := s.AuthKey(t, coordinator.AuthKeyRequest{})
	a := s.Register(t, key1, "Alpha Laptop.example.com")
	if a.Self.Name != "alpha-laptop" {
		t.Errorf("name = %q, want DNS-safe alpha-laptop", a.Self.Name)
	}
	if len(a.Self.Addresses) != 1 || !netip.MustParsePrefix("100.64.0.0/10").Contains(a.Self.Addresses[0].Addr()) {
		t.Errorf("address %v not in 100.64.0.0/10", a.Self.Addresses)
	}
	if d := time.Until(a.Self.KeyExpiry); d < 179*24*time.Hour || d > 181*24*time.Hour {
		t.Errorf("key expiry in %v, want 180 days", d)
	}
	// A single-use key works once.
	other := s.NewClient()
	_, err := other.Client.Register(context.Background(), key1, other.Disco.Public(), "x", "linux")
	if !coordclient.IsUnauthorized(err) || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("second use of a single-use key: %v", err)
	}
	reusable := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	b := s.Register(t, reusable, "alpha-laptop")
	if b.Self.Name != "alpha-laptop-2" || b.Self.Addresses[0] == a.Self.Addresses[0] {
		t.Errorf("second node: name %q address %v; want a deduplicated name and its own address", b.Self.Name, b.Self.Addresses)
	}
	// Registering again with the same node key returns the same node.
	again, err := b.Client.Register(context.Background(), reusable, b.Disco.Public(), "other", "linux")
	if err != nil || again.Node.ID != b.Self.ID || again.Node.Name != b.Self.Name {
		t.Fatalf("re-register: %+v, %v", again, err)
	}

	wa := watch(t, a, netmap.MapRequest{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:41641")}, HomeRelay: "nyc"})
	nm := wa.waitFor("full map with b", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("alpha-laptop-2"); return ok })
	if nm.Self.Name != "alpha-laptop" || nm.Self.HomeRelay != "nyc" || nm.DNS.Domain != "test.internal" || !nm.DNS.MagicDNS {
		t.Errorf("self/dns wrong: %+v %+v", nm.Self, nm.DNS)
	}
	if len(nm.Filter.Rules) != 1 || nm.Filter.Rules[0].SrcIPs[0].Bits() != 0 {
		t.Errorf("no policy should allow all: %+v", nm.Filter)
	}
	if nm.RelayMap.Regions == nil {
		t.Errorf("full map lacks a relay map")
	}
	tok, err := base64.RawURLEncoding.DecodeString(nm.Admission.Token)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admit.Verify(tok, s.Info.AdmitKeys, a.Key.Public(), "nyc", time.Now()); err != nil {
		t.Errorf("admission token does not verify: %v", err)
	}
	peer, _ := nm.PeerByName("alpha-laptop-2")
	if peer.Online || !peer.NodeKey.Equal(b.Key.Public()) || peer.DiscoKey != b.Disco.Public() {
		t.Errorf("peer b: %+v", peer)
	}

	// b comes online and reports an endpoint: a sees both as deltas.
	wb := watch(t, b, netmap.MapRequest{})
	wa.waitFor("b online", func(nm *netmap.NetworkMap) bool { p, _ := nm.PeerByName("alpha-laptop-2"); return p.Online })
	wa.mu.Lock()
	patched := false
	for _, f := range wa.frames {
		for _, pc := range f.PeersChangedPatch {
			patched = patched || pc.ID == b.Self.ID && pc.Online != nil && *pc.Online
		}
	}
	wa.mu.Unlock()
	if !patched {
		t.Error("b going online did not arrive as a patch")
	}
	wb.waitFor("a in b's map with endpoint", func(nm *netmap.NetworkMap) bool {
		p, _ := nm.PeerByName("alpha-laptop")
		return p.Online && len(p.Endpoints) == 1 && p.HomeRelay == "nyc"
	})
	ep := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:41641")}
	home := "fra"
	if err := b.Client.Update(context.Background(), netmap.UpdateRequest{Endpoints: &ep, HomeRelay: &home,
		Netcheck: &netmap.Netcheck{UDP: true, PreferredRelay: "fra"}}); err != nil {
		t.Fatal(err)
	}
	wa.waitFor("b's new endpoint", func(nm *netmap.NetworkMap) bool {
		p, _ := nm.PeerByName("alpha-laptop-2")
		return len(p.Endpoints) == 1 && p.Endpoints[0] == ep[0] && p.HomeRelay == "fra"
	})
	wa.mu.Lock()
	var fulls int
	for _, f := range wa.frames {
		if f.Full {
			fulls++
		}
	}
	wa.mu.Unlock()
	if fulls != 1 {
		t.Errorf("a got %d full maps, want 1 then deltas only", fulls)
	}

	// b goes away: a sees it offline.
	wb.stop()
	wa.waitFor("b offline", func(nm *netmap.NetworkMap) bool { p, _ := nm.PeerByName("alpha-laptop-2"); return !p.Online })

	// The node list shows what operators need.
	var found bool
	for _, n := range s.Nodes() {
		if n.Name == "alpha-laptop-2" {
			found = true
			if n.HomeRelay != "fra" || n.Online || n.LastSeen.IsZero() || n.IP == "" || !strings.Contains(string(n.Netcheck), `"preferred_relay":"fra"`) {
				t.Errorf("nodes list row: %+v", n)
			}
		}
	}
	if !found {
		t.Error("nodes list lacks b")
	}
}

func TestAuthKeyKinds(t *testing.T) {
	var skew atomic.Int64 // the coordinator's clock runs this far ahead
	s := coordtest.Start(t, func(c *coordinator.Config) {
		// Long enough that eph connects before the sweeper may delete it
		// for being offline since registration.
		c.EphemeralTimeout = 2 * time.Second
		c.SweepInterval = 20 * time.Millisecond
		c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	ctx := context.Background()
	if _, err := s.CreateAuthKey(ctx, coordinator.AuthKeyRequest{Tags: []string{"Bad Tag"}}); err == nil {
		t.Error("bad tag accepted")
	}
	if _, err := s.CreateAuthKey(ctx, coordinator.AuthKeyRequest{Expiry: "soon"}); err == nil {
		t.Error("bad expiry accepted")
	}
	tagged := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Tags: []string{"tag:server"}}), "srv")
	if len(tagged.Self.Tags) != 1 || tagged.Self.Tags[0] != "tag:server" {
		t.Errorf("tags = %v", tagged.Self.Tags)
	}

	exp, err := s.CreateAuthKey(ctx, coordinator.AuthKeyRequest{Reusable: true, Expiry: "1ms"})
	if err != nil {
		t.Fatal(err)
	}
	skew.Store(int64(time.Second)) // the coordinator's clock passes the key's expiry
	n := s.NewClient()
	if _, err := n.Client.Register(ctx, exp.Key, n.Disco.Public(), "late", "linux"); !coordclient.IsUnauthorized(err) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired key: %v", err)
	}
	// A key this coordinator never made, and a malformed one.
	forged := netmap.FormatAuthKey(netmap.NewSecret(), s.Pin())
	if _, err := n.Client.Register(ctx, forged, n.Disco.Public(), "x", "linux"); !coordclient.IsUnauthorized(err) {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := n.Client.Register(ctx, "wmauth.zz", n.Disco.Public(), "x", "linux"); !coordclient.IsUnauthorized(err) {
		t.Fatalf("malformed key: %v", err)
	}

	// An ephemeral node is deleted once it goes offline.
	watcherOfTagged := watch(t, tagged, netmap.MapRequest{})
	eph := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Ephemeral: true}), "eph")
	we := watch(t, eph, netmap.MapRequest{})
	watcherOfTagged.waitFor("eph online", func(nm *netmap.NetworkMap) bool { p, _ := nm.PeerByName("eph"); return p.Online })
	if len(s.Nodes()) != 2 {
		t.Fatalf("ephemeral node deleted while online")
	}
	we.stop()
	watcherOfTagged.waitFor("eph deleted", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("eph"); return !ok })
	for _, ni := range s.Nodes() {
		if ni.Name == "eph" {
			t.Fatal("ephemeral node still listed")
		}
	}
}

func TestExpireAndDelete(t *testing.T) {
	s := coordtest.Start(t)
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	a, b, c := s.Register(t, ak, "a"), s.Register(t, ak, "b"), s.Register(t, ak, "c")
	wa := watch(t, a, netmap.MapRequest{})
	wa.waitFor("b and c", func(nm *netmap.NetworkMap) bool { return len(nm.Peers) == 2 })
	wb := watch(t, b, netmap.MapRequest{})
	wa.waitFor("b online", func(nm *netmap.NetworkMap) bool { p, _ := nm.PeerByName("b"); return p.Online })

	if err := s.ExpireNode(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}
	wa.waitFor("b gone after expiry", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("b"); return !ok })
	wb.waitEnd()
	ep := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.9:1")}
	if err := b.Client.Update(context.Background(), netmap.UpdateRequest{Endpoints: &ep}); !coordclient.IsUnauthorized(err) {
		t.Fatalf("expired node's update: %v", err)
	}
	// Re-registering with a new key revives it with the same name and address.
	resp, err := b.Client.Register(context.Background(), ak, b.Disco.Public(), "b", "linux")
	if err != nil || resp.Node.Name != "b" || resp.Node.Addresses[0] != b.Self.Addresses[0] {
		t.Fatalf("re-register after expiry: %+v %v", resp, err)
	}
	wa.waitFor("b back", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("b"); return ok })

	if err := s.DeleteNode(context.Background(), "c"); err != nil {
		t.Fatal(err)
	}
	wa.waitFor("c deleted", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("c"); return !ok })
	if err := c.Client.Update(context.Background(), netmap.UpdateRequest{Endpoints: &ep}); !coordclient.IsUnauthorized(err) {
		t.Fatalf("deleted node's update: %v", err)
	}
	if err := s.DeleteNode(context.Background(), "c"); err == nil {
		t.Fatal("deleting a missing node succeeded")
	}
}

func TestPolicyPeersFiltersAndRejectedTests(t *testing.T) {
	s := coordtest.Start(t)
	ctx := context.Background()
	web := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Tags: []string{"tag:web"}}), "web")
	db := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Tags: []string{"tag:db"}}), "db")
	laptop := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "laptop")

	wWeb := watch(t, web, netmap.MapRequest{})
	wDB := watch(t, db, netmap.MapRequest{})
	wLaptop := watch(t, laptop, netmap.MapRequest{})
	wLaptop.waitFor("all peers under allow-all", func(nm *netmap.NetworkMap) bool { return len(nm.Peers) == 2 })

	good := `{
		"tagOwners": {"tag:web": [], "tag:db": []},
		"acls": [
			{"action": "accept", "src": ["laptop"], "dst": ["tag:web:443"]},
			{"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]},
		],
		"tests": [
			{"src": "laptop", "accept": ["tag:web:443"], "deny": ["tag:db:5432", "tag:web:22"]},
			{"src": "web", "accept": ["db:5432"]},
		],
	}`
	if err := s.SetPolicy(ctx, []byte(good)); err != nil {
		t.Fatal(err)
	}
	// laptop sees web only; db sees web only; web sees both (either direction).
	wLaptop.waitFor("laptop sees only web", func(nm *netmap.NetworkMap) bool {
		_, w := nm.PeerByName("web")
		return w && len(nm.Peers) == 1
	})
	wDB.waitFor("db sees only web", func(nm *netmap.NetworkMap) bool {
		_, w := nm.PeerByName("web")
		return w && len(nm.Peers) == 1
	})
	nm := wWeb.waitFor("web sees both, filter for 443 from laptop", func(nm *netmap.NetworkMap) bool {
		return len(nm.Peers) == 2 && len(nm.Filter.Rules) == 1 && nm.Filter.Rules[0].DstPorts[0].First == 443
	})
	r := nm.Filter.Rules[0]
	if len(r.SrcIPs) != 1 || r.SrcIPs[0] != laptop.Self.Addresses[0] || len(r.DstPorts) != 1 || r.DstPorts[0].First != 443 || r.DstPorts[0].Last != 443 {
		t.Errorf("web's filter: %+v", nm.Filter)
	}
	nmDB := wDB.waitFor("db filter", func(nm *netmap.NetworkMap) bool {
		return len(nm.Filter.Rules) == 1 && nm.Filter.Rules[0].DstPorts[0].First == 5432
	})
	if nmDB.Filter.Rules[0].SrcIPs[0] != web.Self.Addresses[0] {
		t.Errorf("db's filter: %+v", nmDB.Filter)
	}
	// laptop is no destination: an empty filter, which drops everything.
	wLaptop.waitFor("laptop empty filter", func(nm *netmap.NetworkMap) bool { return nm.Filter.Rules != nil && len(nm.Filter.Rules) == 0 })

	// A policy whose own test fails is rejected and the old one stays.
	bad := strings.Replace(good, `"deny": ["tag:db:5432", "tag:web:22"]`, `"deny": ["tag:web:443"]`, 1)
	err := s.SetPolicy(ctx, []byte(bad))
	if !errors.Is(err, policy.ErrTestFailed) {
		t.Fatalf("failing policy test: %v", err)
	}
	if s.Policy() != good {
		t.Fatal("rejected policy replaced the old one")
	}
	// Tests resolve node names to registered nodes: "web" is tagged tag:web.
	if err := s.SetPolicy(ctx, []byte(`{"tagOwners": {"tag:web": []}, "acls": [{"action": "accept", "src": ["tag:web"], "dst": ["*:80"]}],
		"tests": [{"src": "laptop", "accept": ["web:80"]}]}`)); !errors.Is(err, policy.ErrTestFailed) {
		t.Fatalf("untagged laptop passed a tag:web test: %v", err)
	}
	if err := s.SetPolicy(ctx, []byte(`{"acls": [`)); !errors.Is(err, policy.ErrInvalid) {
		t.Fatalf("malformed policy: %v", err)
	}
	// A node registered later is placed by the policy in force.
	web2 := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Tags: []string{"tag:web"}}), "web2")
	wLaptop.waitFor("laptop sees web2", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("web2"); return ok })
	wDB.waitFor("db filter has web2", func(nm *netmap.NetworkMap) bool {
		return len(nm.Filter.Rules) == 1 && len(nm.Filter.Rules[0].SrcIPs) == 2
	})
	_ = web2
}

func TestProofOfPossession(t *testing.T) {
	s := coordtest.Start(t)
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	a := s.Register(t, ak, "a")
	ctx := context.Background()
	ep := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:1")}

	// A client that claims a's key but holds another private key.
	impostor := coordclient.New(s.URL(), s.HTTP, s.Info, key.NewNode())
	if err := impostor.Update(ctx, netmap.UpdateRequest{Endpoints: &ep}); !coordclient.IsUnauthorized(err) {
		t.Fatalf("unregistered key: %v", err)
	}
	// Raw requests: missing, malformed, wrong-key and replayed proofs.
	body := []byte(`{"endpoints":["198.18.0.1:1"]}`)
	post := func(hdr string) int {
		req, _ := newRawRequest(s.URL()+coordinator.PathUpdate, body, hdr)
		resp, err := s.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := post(""); c != 401 {
		t.Errorf("no proof: %d", c)
	}
	if c := post(a.Key.Public().String() + " !!!"); c != 401 {
		t.Errorf("malformed proof: %d", c)
	}
	wrong := key.Precompute(key.NewNode(), s.Info.Key)
	if c := post(netmap.MakeProof(&wrong, a.Key.Public().String(), "POST", coordinator.PathUpdate, body, time.Now())); c != 401 {
		t.Errorf("proof sealed by another key: %d", c)
	}
	right := key.Precompute(a.Key, s.Info.Key)
	stale := netmap.MakeProof(&right, a.Key.Public().String(), "POST", coordinator.PathUpdate, body, time.Now().Add(-time.Hour))
	if c := post(stale); c != 401 {
		t.Errorf("stale proof: %d", c)
	}
	otherPath := netmap.MakeProof(&right, a.Key.Public().String(), "POST", coordinator.PathMap, body, time.Now())
	if c := post(otherPath); c != 401 {
		t.Errorf("proof for another path: %d", c)
	}
	good := netmap.MakeProof(&right, a.Key.Public().String(), "POST", coordinator.PathUpdate, body, time.Now())
	if c := post(good); c != 200 {
		t.Errorf("good proof: %d", c)
	}
	if c := post(good); c != 401 {
		t.Errorf("replayed proof: %d", c)
	}
}

func TestRestartKeepsNodes(t *testing.T) {
	dir := t.TempDir()
	s := coordtest.Start(t, func(c *coordinator.Config) { c.StateDir = dir })
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	var nodes []*coordtest.Node
	for _, h := range []string{"n1", "n2", "n3"} {
		nodes = append(nodes, s.Register(t, ak, h))
	}
	ep := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.3:41641")}
	if err := nodes[2].Client.Update(context.Background(), netmap.UpdateRequest{Endpoints: &ep}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNode(context.Background(), "n2"); err != nil {
		t.Fatal(err)
	}
	pin := s.Pin()
	s.Stop()

	s2 := coordtest.Start(t, func(c *coordinator.Config) { c.StateDir = dir })
	if s2.Pin() != pin {
		t.Error("certificate pin changed across restart")
	}
	got := map[string]coordinator.NodeInfo{}
	for _, n := range s2.Nodes() {
		got[n.Name] = n
	}
	if len(got) != 2 {
		t.Fatalf("after restart: %+v", got)
	}
	for _, n := range []*coordtest.Node{nodes[0], nodes[2]} {
		g := got[n.Self.Name]
		if g.IP != n.Self.Addresses[0].Addr().String() || g.NodeKey != n.Key.Public().String() {
			t.Errorf("node %s after restart: %+v, want ip %v", n.Self.Name, g, n.Self.Addresses)
		}
	}
	if len(got["n3"].Endpoints) != 1 {
		t.Errorf("endpoints lost: %+v", got["n3"])
	}
	// The reusable key still works; the new node gets a fresh address, not
	// n2's and not any other.
	n4 := s2.Register(t, ak, "n4")
	for _, n := range nodes {
		if n4.Self.Addresses[0] == n.Self.Addresses[0] {
			t.Errorf("n4 got %v, already used by %s", n4.Self.Addresses[0], n.Self.Name)
		}
	}
	// Existing nodes authenticate with their keys alone.
	n1 := *nodes[0]
	n1.Client = coordclient.New(s2.URL(), s2.HTTP, s2.Info, n1.Key)
	w := watch(t, &n1, netmap.MapRequest{})
	w.waitFor("peers after restart", func(nm *netmap.NetworkMap) bool { return len(nm.Peers) == 2 })
}

func TestStateDirAndFlagsRejected(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]coordinator.Config{
		"postgres":        {Listen: "127.0.0.1:0", StateDir: dir, DB: "postgres://x"},
		"insecure public": {Listen: "0.0.0.0:0", StateDir: dir, InsecureHTTP: true},
		"no state dir":    {Listen: "127.0.0.1:0"},
		"bad relay map":   {Listen: "127.0.0.1:0", StateDir: dir, RelayMapFile: writeFile(t, `{"regions":[{"code":"Bad Code"}]}`)},
		"failing policy": {Listen: "127.0.0.1:0", StateDir: dir, PolicyFile: writeFile(t,
			`{"acls": [], "tests": [{"src": "1.2.3.4", "accept": ["5.6.7.8:1"]}]}`)},
	}
	for name, cfg := range cases {
		cfg.NoAdminSocket = true
		if srv, err := coordinator.New(context.Background(), cfg); err == nil {
			srv.Run(canceled())
			t.Errorf("%s: accepted", name)
		}
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func writeFile(t *testing.T, s string) string {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAdmissionTokenRefreshed checks that a streaming node gets a new
// admission token once half of the previous one's lifetime is over.
func TestAdmissionTokenRefreshed(t *testing.T) {
	s := coordtest.Start(t, func(c *coordinator.Config) {
		c.TokenLifetime = 2 * time.Second // refreshed after 1 s
		c.SweepInterval = 50 * time.Millisecond
	})
	n := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "n")
	w := watch(t, n, netmap.MapRequest{})
	first := w.waitFor("first token", func(nm *netmap.NetworkMap) bool { return nm.Admission.Token != "" }).Admission
	second := w.waitFor("refreshed token", func(nm *netmap.NetworkMap) bool {
		return nm.Admission.Token != "" && nm.Admission.Token != first.Token
	}).Admission
	if !second.Expires.After(first.Expires) {
		t.Errorf("refreshed token expires %v, first %v", second.Expires, first.Expires)
	}
	tok, err := base64.RawURLEncoding.DecodeString(second.Token)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admit.Verify(tok, s.Info.AdmitKeys, n.Key.Public(), "", time.Now()); err != nil {
		t.Errorf("refreshed token: %v", err)
	}
}

// TestConcurrentRegistrations registers many nodes with the same hostname
// at once: names and addresses stay unique although the store commits them
// in groups.
func TestConcurrentRegistrations(t *testing.T) {
	s := coordtest.Start(t)
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	const n = 60
	var wg sync.WaitGroup
	nodes := make([]netmap.Node, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := s.NewClient()
			resp, err := c.Client.Register(context.Background(), ak, c.Disco.Public(), "same", "linux")
			if err == nil {
				nodes[i] = resp.Node
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	names, ips := map[string]bool{}, map[netip.Prefix]bool{}
	for i, nd := range nodes {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if names[nd.Name] || ips[nd.Addresses[0]] {
			t.Fatalf("duplicate name %q or address %v", nd.Name, nd.Addresses[0])
		}
		names[nd.Name], ips[nd.Addresses[0]] = true, true
	}
	if got := len(s.Nodes()); got != n {
		t.Fatalf("%d nodes listed, want %d", got, n)
	}
}

// TestKeyExpiryBySweeper checks that a node key that runs out on its own
// (no admin command) disappears from its peers' maps and ends its stream.
func TestKeyExpiryBySweeper(t *testing.T) {
	dir := t.TempDir()
	// a registers with the default 180-day expiry; after a restart with a
	// 2 s expiry, b registers and its key runs out while a watches.
	s := coordtest.Start(t, func(c *coordinator.Config) { c.StateDir = dir })
	a := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "a")
	s.Stop()
	s = coordtest.Start(t, func(c *coordinator.Config) {
		c.StateDir = dir
		c.KeyExpiry = 2 * time.Second
		c.SweepInterval = 20 * time.Millisecond
	})
	a.Client = coordclient.New(s.URL(), s.HTTP, s.Info, a.Key)
	wa := watch(t, a, netmap.MapRequest{})
	b := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "b")
	wb := watch(t, b, netmap.MapRequest{})
	wa.waitFor("b present", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("b"); return ok })
	wa.waitFor("b gone after its key expired", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("b"); return !ok })
	wb.waitEnd()
	for _, n := range s.Nodes() {
		if n.Name == "b" && !n.Expired {
			t.Errorf("b not listed as expired: %+v", n)
		}
		if n.Name == "a" && n.Expired {
			t.Errorf("a expired too: %+v", n)
		}
	}
}
