package bind

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"
	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
	"golang.zx2c4.com/wireguard/conn"
)

// FuzzDemux drives the UDP receive path and the relay delivery path with
// one arbitrary packet, from a known peer's address or a stranger's: it
// must never crash, and each packet must end in exactly the place its
// kind says (disco handler, STUN handler, wireguard-go for a known
// source, or dropped and counted).
func FuzzDemux(f *testing.F) {
	dk, dk2 := key.NewDisco(), key.NewDisco()
	sk := key.Precompute(dk, dk2.Public())
	f.Add(disco.Seal(nil, dk.Public(), &sk, &disco.Ping{TxID: disco.NewTxID()}), true)
	req, _ := stun.Build(stun.TransactionID, stun.BindingSuccess)
	f.Add(req.Raw, false)
	f.Add([]byte{4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, true)
	f.Add([]byte{1, 0, 0, 0}, false)
	f.Add([]byte{}, true)
	f.Fuzz(func(t *testing.T, pkt []byte, known bool) {
		var discos, stuns int
		b := New(Config{Relay: discard{}, OnDisco: func(Source, []byte) { discos++ }, OnSTUN: func(netip.AddrPort, []byte) { stuns++ }})
		peer := key.NewNode().Public()
		peerAddr := netip.MustParseAddrPort("198.18.0.2:41641")
		b.AcceptFrom(peer, peerAddr)
		src := netip.MustParseAddrPort("198.18.0.9:1")
		if known {
			src = peerAddr
		}
		// The UDP path, with a receive func that returns pkt once, then
		// a WireGuard packet from the peer, so that a filtered-out batch
		// ends the read.
		sent := 0
		next := []byte{4, 0, 0, 0, 9, 9, 9, 9}
		recv := b.wrapDirect(func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			p, from := pkt, src
			if sent > 0 {
				p, from = next, peerAddr
			}
			sent++
			sizes[0] = copy(packets[0], p)
			eps[0] = &conn.StdNetEndpoint{AddrPort: from}
			return 1, nil
		})
		bufs := [][]byte{make([]byte, 1<<16)}
		sizes, eps := make([]int, 1), make([]conn.Endpoint, 1)
		before := b.Stats().UnknownSourceDrops
		n, err := recv(bufs, sizes, eps)
		if err != nil {
			t.Fatal(err)
		}
		kind := classify(pkt)
		drops := b.Stats().UnknownSourceDrops - before
		switch {
		case sent > 2:
			t.Fatalf("%d reads for one packet", sent)
		case kind == kindDisco && discos != 1, kind == kindSTUN && stuns != 1:
			t.Fatalf("%v packet not handed to its handler (disco %d, stun %d)", kind, discos, stuns)
		case kind == kindWireGuard && known && (sent != 1 || n != 1 || eps[0].(*Endpoint).Key() != peer):
			t.Fatalf("known peer's packet not delivered: n=%d sent=%d", n, sent)
		case kind == kindWireGuard && !known && drops != 1:
			t.Fatalf("stranger's packet not dropped: %d drops", drops)
		}
		// The relay path: disco to the handler; the rest queued for the
		// peer, or dropped for a stranger; nothing over maxPacket.
		b.Open(0)
		defer b.Close()
		discos = 0
		from := peer
		if !known {
			from = key.NewNode().Public()
		}
		b.DeliverRelay(from, pkt)
		if len(pkt) > 0 && len(pkt) <= maxPacket && disco.LooksLikeDisco(pkt) && discos != 1 {
			t.Fatal("relay disco not handed to OnDisco")
		}
	})
}

type discard struct{}

func (discard) SendTo(key.NodePublic, []byte) error { return nil }

// FuzzFastDemux drives the UDP receive path with one arbitrary datagram
// from a claimed relay fast-path address: a FastRecv from a known peer
// reaches wireguard-go with its header stripped, relayed disco reaches
// OnDisco, and everything else goes to the claim, exactly once each.
func FuzzFastDemux(f *testing.F) {
	known := key.NewNode().Public()
	kr := known.Raw()
	f.Add(append(append([]byte{relayproto.FastRecv}, kr[:]...), 4, 0, 0, 0, 1, 2, 3), true)
	f.Add(append([]byte{relayproto.FastChallenge}, make([]byte, 16)...), false)
	f.Add([]byte{relayproto.FastRecv}, false)
	f.Add([]byte{4, 0, 0, 0}, false)
	f.Fuzz(func(t *testing.T, pkt []byte, fromKnown bool) {
		var discos, claimed int
		b := New(Config{Relay: discard{}, OnDisco: func(Source, []byte) { discos++ }})
		b.Peer(known)
		relayAddr := netip.MustParseAddrPort("198.18.0.1:444")
		b.fastSrc[relayAddr] = &fastClaim{fn: func([]byte) { claimed++ }}
		if fromKnown && len(pkt) > relayproto.FastRecvOverhead {
			pkt = append(append([]byte{relayproto.FastRecv}, kr[:]...), pkt[relayproto.FastRecvOverhead:]...)
		}
		sent := 0
		next := []byte{relayproto.FastRecv}
		next = append(append(next, kr[:]...), 4, 0, 0, 0, 9)
		recv := b.wrapDirect(func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			p := pkt
			if sent > 0 {
				p = next
			}
			sent++
			sizes[0] = copy(packets[0], p)
			eps[0] = &conn.StdNetEndpoint{AddrPort: relayAddr}
			return 1, nil
		})
		bufs := [][]byte{make([]byte, 1<<16)}
		sizes, eps := make([]int, 1), make([]conn.Endpoint, 1)
		n, err := recv(bufs, sizes, eps)
		if err != nil || n != 1 {
			t.Fatalf("n=%d err=%v", n, err)
		}
		isFast := isFastKind(pkt)
		isRecv := isFast && pkt[0] == relayproto.FastRecv && len(pkt) > relayproto.FastRecvOverhead
		forKnown := isRecv && [32]byte(pkt[1:relayproto.FastRecvOverhead]) == kr
		isDisco := isRecv && disco.LooksLikeDisco(pkt[relayproto.FastRecvOverhead:])
		switch {
		case sent > 2:
			t.Fatalf("%d reads for one datagram", sent)
		case isDisco && discos != 1:
			t.Fatal("relayed disco not handed to OnDisco")
		case forKnown && !isDisco && (sent != 1 || !bytes.Equal(bufs[0][:sizes[0]], pkt[relayproto.FastRecvOverhead:])):
			t.Fatalf("known peer's relayed packet not delivered (sent %d)", sent)
		case isFast && !isDisco && !forKnown && claimed != 1:
			t.Fatalf("datagram for the claim handed over %d times", claimed)
		case !isFast && claimed != 0:
			t.Fatal("non-fast-path datagram handed to the claim")
		}
		if eps[0].(*Endpoint).Key() != known {
			t.Fatal("delivered as someone else's packet")
		}
	})
}
