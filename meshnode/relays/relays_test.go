package relays

import (
	"testing"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/bind"
	"github.com/wiremesh/wiremesh/netmap"
)

// links records published links.
type links map[key.NodePublic]bind.RelayLink

func (l links) SetRelay(p key.NodePublic, link bind.RelayLink) { l[p] = link }

var testMap = netmap.RelayMap{Regions: []netmap.Region{
	{Code: "fra", Relays: []netmap.Relay{{Addr: "198.18.1.2:443", Healthy: true}}},
	{Code: "nyc", Relays: []netmap.Relay{{Addr: "198.18.2.2:443", Healthy: true}}},
}}

// TestRelayForPeerGone: a peer-gone notice from the peer's home relay sends
// its packets through our home relay until the netmap names its new home.
func TestRelayForPeerGone(t *testing.T) {
	r := New(Config{Bind: links{}})
	pk := key.NewNode().Public()
	r.SetRelayMap(testMap)
	home, _ := Pick(testMap, "nyc")
	r.SetHome(home)
	r.UpsertPeer(pk, "fra")
	if rel, _ := r.RelayFor(pk); rel.Region != "fra" {
		t.Fatalf("before: via %s, want the peer's home fra", rel.Region)
	}
	r.PeerGone(pk, "fra")
	if rel, _ := r.RelayFor(pk); rel.Region != "nyc" {
		t.Fatalf("after peer-gone: via %s, want our home nyc", rel.Region)
	}
	r.UpsertPeer(pk, "fra") // unchanged home: still gone
	if rel, _ := r.RelayFor(pk); rel.Region != "nyc" {
		t.Fatalf("same home again: via %s, want our home nyc", rel.Region)
	}
	r.PeerPresent(pk)
	if rel, _ := r.RelayFor(pk); rel.Region != "fra" {
		t.Fatalf("after peer-present: via %s, want fra", rel.Region)
	}
	r.PeerGone(pk, "fra")
	r.UpsertPeer(pk, "nyc") // the map names its new home
	if rel, _ := r.RelayFor(pk); rel.Region != "nyc" || len(r.gone) != 0 {
		t.Fatalf("after the map moved it: via %s, gone %v", rel.Region, r.gone)
	}
}

// TestLinksUnpublished: every change that can move a peer's relay takes
// its published link back, so the next packet picks again.
func TestLinksUnpublished(t *testing.T) {
	l := links{}
	r := New(Config{Bind: l})
	pk := key.NewNode().Public()
	r.SetRelayMap(testMap)
	r.UpsertPeer(pk, "fra")
	for _, change := range []func(){
		func() { r.UpsertPeer(pk, "nyc") },
		func() { r.PeerGone(pk, "nyc") },
		func() { r.PeerPresent(pk) },
		func() { r.SetRelayMap(testMap) },
		func() { home, _ := Pick(testMap, "fra"); r.SetHome(home) },
		func() { r.RemovePeer(pk) },
	} {
		r.linked[pk] = true
		l[pk] = fakeLink{}
		change()
		if l[pk] != nil || r.linked[pk] {
			t.Fatal("link still published after a change")
		}
	}
}

type fakeLink struct{}

func (fakeLink) Send(key.NodePublic, []byte) error { return nil }

// TestGoneBounded: the peer-gone table is bounded and only holds peers.
func TestGoneBounded(t *testing.T) {
	r := New(Config{Bind: links{}})
	r.PeerGone(key.NewNode().Public(), "fra") // unknown peer: ignored
	if len(r.gone) != 0 {
		t.Fatal("unknown peer recorded as gone")
	}
	for range maxGone + 10 {
		k := key.NewNode().Public()
		r.UpsertPeer(k, "fra")
		r.PeerGone(k, "fra")
	}
	if len(r.gone) != maxGone {
		t.Fatalf("gone table holds %d, bound %d", len(r.gone), maxGone)
	}
}
