package meshnode

import (
	"context"
	"github.com/wiremesh/wiremesh/internal/poll"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/netmap"
)

func testPeer(id int, ip string) netmap.Node {
	pfx := []netip.Prefix{netip.MustParsePrefix(ip + "/32")}
	return netmap.Node{ID: netmap.NodeID(id), Name: "p" + ip, NodeKey: key.NewNode().Public(), DiscoKey: key.NewDisco().Public(),
		Addresses: pfx, AllowedIPs: pfx}
}

func selfNode() netmap.Node {
	return netmap.Node{ID: 1, Name: "self", NodeKey: key.NewNode().Public(),
		Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}}
}

// newTestNode builds a node (not started) whose engine comes up on the
// first map: userspace, relays only, no coordinator.
func newTestNode(t *testing.T, now func() time.Time) *Node {
	t.Helper()
	return newTestNodeWith(t, Config{testNow: now})
}

// newTestNodeWith is newTestNode with more of cfg (userspace, relays only
// and the state directory are always set).
func newTestNodeWith(t *testing.T, cfg Config) *Node {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st := stateDir(t.TempDir())
	cfg.Userspace, cfg.RelayOnly, cfg.StateDir, cfg.Log = true, true, string(st), testLogger(t, "self")
	n := newNode(ctx, cfg, st, key.NewNode())
	t.Cleanup(func() { n.stop(cancel) })
	return n
}

// TestApplyFrameDelta: a delta changes exactly the peers it names, in the
// configured set and in the path machine, and removes the ones it drops.
func TestApplyFrameDelta(t *testing.T) {
	n := newTestNode(t, nil)
	b, c, d := testPeer(2, "100.64.0.2"), testPeer(3, "100.64.0.3"), testPeer(4, "100.64.0.4")
	self := selfNode()
	self.NodeKey = n.priv.Public()
	if err := n.applyFrame(&netmap.MapResponse{Full: true, Self: &self, Peers: []netmap.Node{b, c}}); err != nil {
		t.Fatal(err)
	}
	if len(n.mu.applied) != 2 {
		t.Fatalf("after the full map: %d peers", len(n.mu.applied))
	}
	b2 := b
	b2.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("198.18.3.2:41641")}
	if err := n.applyFrame(&netmap.MapResponse{PeersChanged: []netmap.Node{b2, d}, PeersRemoved: []netmap.NodeID{c.ID}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.mu.applied[c.NodeKey]; ok || len(n.mu.applied) != 2 {
		t.Fatalf("after the delta: %v", n.mu.applied)
	}
	if got := n.paths.Candidates(b.NodeKey); len(got) != 1 || got[0] != b2.Endpoints[0] {
		t.Fatalf("b's candidates %v", got)
	}
	if n.paths.Candidates(c.NodeKey) != nil {
		t.Fatal("removed peer still in the path machine")
	}
	if changes := n.peerDiffLocked(b2, b2, time.Now()); len(changes) != 1 || !changes[0].had {
		t.Fatalf("an unchanged peer's diff: %+v", changes)
	}
	// A delta before any full map is refused.
	if err := newTestNode(t, nil).applyFrame(&netmap.MapResponse{PeersChanged: []netmap.Node{b}}); err == nil {
		t.Fatal("delta without a full map applied")
	}
}

// TestPeerKeyExpiryEnforced: a peer whose key expired is dropped at expiry
// + KeyExpiryGrace by the node itself, with the coordinator unreachable;
// an expired peer in the cache is never configured.
func TestPeerKeyExpiryEnforced(t *testing.T) {
	var mu sync.Mutex
	offset := time.Duration(0)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return time.Now().Add(offset) }
	url, ak := deadCoordinator(t)
	dir := t.TempDir()
	start := time.Now()
	b, c, d := testPeer(2, "100.64.0.2"), testPeer(3, "100.64.0.3"), testPeer(4, "100.64.0.4")
	b.KeyExpiry = start.Add(time.Hour)
	c.KeyExpiry = start.Add(-KeyExpiryGrace / 2) // expired, but within the grace
	d.KeyExpiry = start.Add(-2 * KeyExpiryGrace) // long expired
	self := selfNode()
	nm := &netmap.NetworkMap{Self: self, Peers: map[netmap.NodeID]netmap.Node{b.ID: b, c.ID: c, d.ID: d}}
	if err := stateDir(dir).writeJSON(netmapFile, nm); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := runAsync(ctx, Config{Coordinator: url, AuthKey: ak, StateDir: dir, Userspace: true, RelayOnly: true,
		Log: testLogger(t, "self"), testNow: now})
	defer func() { cancel(); waitRun(t, done) }()
	api := localapi.NewClient(filepath.Join(dir, localapi.SocketName))
	names := func() map[string]bool {
		st, err := api.Status(context.Background())
		out := map[string]bool{}
		if err != nil {
			return nil
		}
		for _, p := range st.Peers {
			out[p.Name] = true
		}
		return out
	}
	poll.Until(t, "peers from the cache", func() bool { got := names(); return got[b.Name] && got[c.Name] })
	if names()[d.Name] {
		t.Fatal("long-expired peer configured")
	}
	poll.Until(t, "c dropped at its expiry plus the grace", func() bool { got := names(); return !got[c.Name] && got[b.Name] })
	mu.Lock()
	offset = time.Hour + KeyExpiryGrace + time.Second
	mu.Unlock()
	poll.Until(t, "b dropped at its expiry plus the grace", func() bool { got := names(); return got != nil && !got[b.Name] })
}
