package coordinator

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// TestWireMatchesNetmap checks that the hand-assembled frames decode into
// exactly the netmap.MapResponse they stand for.
func TestWireMatchesNetmap(t *testing.T) {
	online, seen := true, time.Unix(7, 0).UTC()
	peer := netmap.Node{ID: 2, Name: "b", NodeKey: key.NewNode().Public(), DiscoKey: key.NewDisco().Public(),
		Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.2/32")}, Online: true}
	pb, _ := json.Marshal(peer)
	filter := &netmap.Filter{Rules: []netmap.FilterRule{}}
	fb, _ := json.Marshal(filter)
	want := netmap.MapResponse{
		Seq: 9, Full: true, Self: &peer, Peers: []netmap.Node{peer, peer}, PeersChanged: []netmap.Node{peer},
		PeersRemoved: []netmap.NodeID{3, 4}, PeersChangedPatch: []netmap.PeerChange{{ID: 5, Online: &online, LastSeen: &seen}}, RelayMap: &netmap.RelayMap{Regions: []netmap.Region{{Code: "nyc", Relays: []netmap.Relay{}}}},
		DNS: &netmap.DNS{Domain: "d", MagicDNS: true}, PacketFilter: filter,
		Admission: &netmap.Admission{Token: "t", Expires: time.Unix(5, 0).UTC()},
	}
	w := wireMapResponse{Seq: 9, Full: true, Self: pb, Peers: []json.RawMessage{pb, pb}, PeersChanged: []json.RawMessage{pb},
		PeersRemoved: want.PeersRemoved, PeersPatch: want.PeersChangedPatch, RelayMap: want.RelayMap, DNS: want.DNS, PacketFilter: fb, Admission: want.Admission}
	for _, c := range []struct {
		w    wireMapResponse
		want netmap.MapResponse
	}{{w, want}, {wireMapResponse{Seq: 1, KeepAlive: true}, netmap.MapResponse{Seq: 1, KeepAlive: true}}} {
		b := c.w.appendJSON(nil)
		std, _ := json.Marshal(c.w)
		got, err := netmap.DecodeMapResponse(b)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if !reflect.DeepEqual(*got, c.want) {
			t.Errorf("decoded %+v\nwant    %+v", *got, c.want)
		}
		if !json.Valid(b) || string(b) != string(std) {
			t.Errorf("hand-made %s\nencoding/json %s", b, std)
		}
	}
}
