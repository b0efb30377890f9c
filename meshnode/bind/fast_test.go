package bind

import (
	"bytes"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/internal/poll"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayproto"
	"golang.zx2c4.com/wireguard/conn"
)

// fakeLink is a FastLink: its fast route is set by the test, and packets
// it is asked to send itself (the QUIC/TCP fallback) are recorded.
type fakeLink struct {
	route *relayclient.FastRoute
	mu    sync.Mutex
	sent  [][]byte
}

func (l *fakeLink) Send(_ key.NodePublic, pkt []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sent = append(l.sent, bytes.Clone(pkt))
	return nil
}

func (l *fakeLink) FastRoute() *relayclient.FastRoute { return l.route }

func (l *fakeLink) fallback() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sent
}

// fastRig is an open Bind with a loopback "relay" fast-path socket
// claimed on it, and a loopback socket for a direct peer.
type fastRig struct {
	b       *Bind
	recv    []conn.ReceiveFunc // the UDP ReceiveFuncs
	relay   *net.UDPConn
	direct  *net.UDPConn
	link    *fakeLink
	session [relayproto.SessionLen]byte
	claimed chan []byte // what the claim was passed
	discos  chan Source
}

func newFastRig(t *testing.T) *fastRig {
	t.Helper()
	r := &fastRig{session: [relayproto.SessionLen]byte{1, 2, 3, 4, 5, 6, 7, 8},
		claimed: make(chan []byte, 16), discos: make(chan Source, 16)}
	r.b = New(Config{Relay: noRelay{}, Direct: true, OnDisco: func(src Source, pkt []byte) { r.discos <- src }})
	fns, port, err := r.b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.b.Close() })
	r.recv = fns[1:]
	_ = port
	for _, u := range []**net.UDPConn{&r.relay, &r.direct} {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		*u = c
	}
	tag, release, err := r.b.ClaimFast(r.relay.LocalAddr().(*net.UDPAddr).AddrPort(), func(d []byte) { r.claimed <- bytes.Clone(d) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	r.link = &fakeLink{route: &relayclient.FastRoute{Addr: r.relay.LocalAddr().(*net.UDPAddr).AddrPort(), Session: r.session, Tag: tag}}
	return r
}

// noRelay is a RelaySender that must not be used: every relayed packet
// in these tests has a published link.
type noRelay struct{}

func (noRelay) SendTo(key.NodePublic, []byte) error { return syscall.EHOSTUNREACH }

func (r *fastRig) bindAddr() netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), r.b.Port())
}

// readN reads n datagrams from u.
func readN(t *testing.T, u *net.UDPConn, n int) [][]byte {
	t.Helper()
	var got [][]byte
	buf := make([]byte, 1<<16)
	u.SetReadDeadline(time.Now().Add(10 * time.Second))
	for len(got) < n {
		m, err := u.Read(buf)
		if err != nil {
			t.Fatalf("read %d of %d datagrams: %v", len(got), n, err)
		}
		got = append(got, bytes.Clone(buf[:m]))
	}
	return got
}

func wgPacket(i, size int) []byte {
	p := bytes.Repeat([]byte{byte(i)}, size)
	p[0], p[1], p[2], p[3] = 4, 0, 0, 0 // WireGuard transport data
	return p
}

// checkFastSend checks that d is peer's FastSend of want on the session.
func checkFastSend(t *testing.T, d []byte, session [relayproto.SessionLen]byte, peer key.NodePublic, want []byte) {
	t.Helper()
	fd, err := relayproto.ParseFast(d)
	if err != nil {
		t.Fatalf("relay got a bad datagram: %v", err)
	}
	if fd.Kind != relayproto.FastSend || fd.Session != session || fd.Key != peer || !bytes.Equal(fd.Payload, want) {
		t.Fatalf("relay got kind %#x session %x to %v, %d bytes; want FastSend %x to %v, %d bytes",
			fd.Kind, fd.Session, fd.Key.ShortString(), len(fd.Payload), session, peer.ShortString(), len(want))
	}
}

// TestSendFastPartialBatch: a batch shorter than wireguard-go's batch
// size, with one packet too large for the relay's fast-path buffers: the
// others go to the relay's fast-path address as FastSend datagrams, in
// order, and the large one through the link (QUIC or TCP).
func TestSendFastPartialBatch(t *testing.T) {
	r := newFastRig(t)
	peer := key.NewNode().Public()
	r.b.SetRelay(peer, r.link)
	big := relayproto.MaxFastDatagram - relayproto.FastSendOverhead + 1
	bufs := [][]byte{wgPacket(1, 1312), wgPacket(2, 1312), wgPacket(3, big), wgPacket(4, 1312), wgPacket(5, 100)}
	if err := r.b.Send(bufs, r.b.Peer(peer)); err != nil {
		t.Fatal(err)
	}
	got := readN(t, r.relay, 4)
	for i, want := range [][]byte{bufs[0], bufs[1], bufs[3], bufs[4]} {
		checkFastSend(t, got[i], r.session, peer, want)
	}
	if fb := r.link.fallback(); len(fb) != 1 || !bytes.Equal(fb[0], bufs[2]) {
		t.Fatalf("link carried %d packets, want only the oversized one", len(fb))
	}
	st := r.b.Stats()
	if st.FastTxPackets != 4 || st.TxPackets[PathRelay] != 5 || st.FastSendErrors != 0 {
		t.Fatalf("stats: fast tx %d, relay tx %d, fast errors %d; want 4, 5, 0", st.FastTxPackets, st.TxPackets[PathRelay], st.FastSendErrors)
	}
}

// TestSendFastMixedDestinations: wireguard-go's batches to a direct peer,
// a relayed peer and a tentative peer (direct copy plus relay copy) all
// leave through the one socket, each to its own destination.
func TestSendFastMixedDestinations(t *testing.T) {
	r := newFastRig(t)
	dPeer, rPeer, tPeer := key.NewNode().Public(), key.NewNode().Public(), key.NewNode().Public()
	daddr := r.direct.LocalAddr().(*net.UDPAddr).AddrPort()
	r.b.SetDirect(dPeer, daddr)
	r.b.SetRelay(rPeer, r.link)
	r.b.SetTentative(tPeer, daddr)
	r.b.SetRelay(tPeer, r.link)
	batch := func(tag, n int) [][]byte {
		var bufs [][]byte
		for i := range n {
			bufs = append(bufs, wgPacket(tag*16+i, 1312))
		}
		return bufs
	}
	dBufs, rBufs, tBufs := batch(1, 3), batch(2, 4), batch(3, 2)
	for _, s := range []struct {
		peer key.NodePublic
		bufs [][]byte
	}{{dPeer, dBufs}, {rPeer, rBufs}, {tPeer, tBufs}} {
		if err := r.b.Send(s.bufs, r.b.Peer(s.peer)); err != nil {
			t.Fatal(err)
		}
	}
	direct := readN(t, r.direct, len(dBufs)+len(tBufs))
	for i, want := range append(append([][]byte{}, dBufs...), tBufs...) {
		if !bytes.Equal(direct[i], want) {
			t.Fatalf("direct datagram %d: got %d bytes starting %x, want packet %x", i, len(direct[i]), direct[i][:5], want[4])
		}
	}
	relayed := readN(t, r.relay, len(rBufs)+len(tBufs))
	for i, want := range rBufs {
		checkFastSend(t, relayed[i], r.session, rPeer, want)
	}
	for i, want := range tBufs {
		checkFastSend(t, relayed[len(rBufs)+i], r.session, tPeer, want)
	}
	if fb := r.link.fallback(); len(fb) != 0 {
		t.Fatalf("link carried %d packets, want none", len(fb))
	}
}

// fullSocket wraps the bind's UDP socket and refuses sends to one
// destination with ENOBUFS, as Linux does when that route's queue is full.
type fullSocket struct {
	conn.Bind
	full netip.AddrPort
}

func (f fullSocket) Send(bufs [][]byte, ep conn.Endpoint) error {
	if ep.(*conn.StdNetEndpoint).AddrPort == f.full {
		return syscall.ENOBUFS
	}
	return f.Bind.Send(bufs, ep)
}

// TestSendFastDestinationFull: when the socket refuses the relay
// destination's batch, that batch goes packet by packet through the link
// (whose own fast-path write fails over to QUIC or TCP) and is counted,
// while a direct peer's batch on the same socket still goes out.
func TestSendFastDestinationFull(t *testing.T) {
	r := newFastRig(t)
	rPeer, dPeer := key.NewNode().Public(), key.NewNode().Public()
	r.b.SetRelay(rPeer, r.link)
	r.b.SetDirect(dPeer, r.direct.LocalAddr().(*net.UDPAddr).AddrPort())
	u := r.b.udp.Load()
	r.b.udp.Store(&udpSocket{fullSocket{Bind: u.Bind, full: r.link.route.Addr}})
	rBufs := [][]byte{wgPacket(1, 1312), wgPacket(2, 1312), wgPacket(3, 600)}
	if err := r.b.Send(rBufs, r.b.Peer(rPeer)); err != nil {
		t.Fatal(err)
	}
	dBufs := [][]byte{wgPacket(7, 1312)}
	if err := r.b.Send(dBufs, r.b.Peer(dPeer)); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, r.direct, 1); !bytes.Equal(got[0], dBufs[0]) {
		t.Fatal("direct packet altered")
	}
	fb := r.link.fallback()
	if len(fb) != len(rBufs) {
		t.Fatalf("link carried %d packets, want the whole refused batch (%d)", len(fb), len(rBufs))
	}
	for i := range rBufs {
		if !bytes.Equal(fb[i], rBufs[i]) {
			t.Fatalf("fallback packet %d altered", i)
		}
	}
	st := r.b.Stats()
	if st.FastSendErrors != 1 || st.FastTxPackets != 0 || st.TxPackets[PathRelay] != 3 {
		t.Fatalf("stats: fast errors %d, fast tx %d, relay tx %d; want 1, 0, 3", st.FastSendErrors, st.FastTxPackets, st.TxPackets[PathRelay])
	}
}

// receiveAll calls the UDP ReceiveFuncs until want packets came back.
func (r *fastRig) receiveAll(t *testing.T, want int) (pkts [][]byte, eps []conn.Endpoint) {
	t.Helper()
	type res struct {
		pkts [][]byte
		eps  []conn.Endpoint
	}
	out := make(chan res, 64)
	for _, fn := range r.recv {
		go func() {
			bufs := make([][]byte, conn.IdealBatchSize)
			for i := range bufs {
				bufs[i] = make([]byte, 1<<16)
			}
			sizes := make([]int, len(bufs))
			es := make([]conn.Endpoint, len(bufs))
			for {
				n, err := fn(bufs, sizes, es)
				if err != nil {
					return
				}
				var rr res
				for i := range n {
					rr.pkts = append(rr.pkts, bytes.Clone(bufs[i][:sizes[i]]))
					rr.eps = append(rr.eps, es[i])
				}
				out <- rr
			}
		}()
	}
	deadline := time.After(10 * time.Second)
	for len(pkts) < want {
		select {
		case rr := <-out:
			pkts, eps = append(pkts, rr.pkts...), append(eps, rr.eps...)
		case <-deadline:
			t.Fatalf("received %d of %d packets", len(pkts), want)
		}
	}
	return pkts, eps
}

// TestReceiveFastDemux: on the shared socket, FastRecv datagrams from the
// claimed relay address reach wireguard-go as their sender's packets,
// header stripped, beside direct packets; relayed disco goes to OnDisco;
// challenges and packets from unknown senders go to the claim; FastRecv
// from an address nobody claimed is dropped.
func TestReceiveFastDemux(t *testing.T) {
	r := newFastRig(t)
	rPeer, dPeer := key.NewNode().Public(), key.NewNode().Public()
	r.b.Peer(rPeer)
	r.b.SetDirect(dPeer, r.direct.LocalAddr().(*net.UDPAddr).AddrPort())
	to := net.UDPAddrFromAddrPort(r.bindAddr())
	relayed := [][]byte{wgPacket(1, 1312), wgPacket(2, 1312), wgPacket(3, 80)}
	for _, p := range relayed {
		r.relay.WriteToUDP(relayproto.AppendFastRecv(nil, rPeer, p), to)
	}
	directPkt := wgPacket(9, 200)
	r.direct.WriteToUDP(directPkt, to)
	// From an address nobody claimed or accepted, a FastRecv is dropped.
	other, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.WriteToUDP(relayproto.AppendFastRecv(nil, rPeer, wgPacket(5, 50)), to)
	// Disco through the relay, a challenge, and a packet from a stranger.
	discoPkt := append([]byte(disco.Magic), make([]byte, 200)...)
	r.relay.WriteToUDP(relayproto.AppendFastRecv(nil, rPeer, discoPkt), to)
	chal := append(append([]byte{relayproto.FastChallenge}, r.session[:]...), 9, 9, 9, 9, 9, 9, 9, 9)
	r.relay.WriteToUDP(chal, to)
	stranger := relayproto.AppendFastRecv(nil, key.NewNode().Public(), wgPacket(6, 60))
	r.relay.WriteToUDP(stranger, to)

	pkts, eps := r.receiveAll(t, len(relayed)+1)
	var gotRelayed [][]byte
	for i, p := range pkts {
		ep := eps[i].(*Endpoint)
		switch ep.Key() {
		case rPeer:
			gotRelayed = append(gotRelayed, p)
		case dPeer:
			if !bytes.Equal(p, directPkt) {
				t.Fatal("direct packet altered")
			}
		default:
			t.Fatalf("packet from %v", ep.Key().ShortString())
		}
	}
	if len(gotRelayed) != len(relayed) {
		t.Fatalf("%d relayed packets, want %d", len(gotRelayed), len(relayed))
	}
	for i := range relayed {
		if !bytes.Equal(gotRelayed[i], relayed[i]) {
			t.Fatalf("relayed packet %d: %d bytes, want %d (header stripped)", i, len(gotRelayed[i]), len(relayed[i]))
		}
	}
	poll.Until(t, "the stray FastRecv dropped", func() bool { return r.b.Stats().UnknownSourceDrops == 1 })
	if src := <-r.discos; src.Peer != rPeer || src.Addr.IsValid() {
		t.Fatalf("disco source %+v, want the relayed peer", src)
	}
	for _, want := range [][]byte{chal, stranger} {
		if got := <-r.claimed; !bytes.Equal(got, want) {
			t.Fatalf("claim got kind %#x, want %#x", got[0], want[0])
		}
	}
	st := r.b.Stats()
	if st.FastRxPackets != 3 || st.RxPackets[PathRelay] != 3 || st.RxPackets[PathDirect] != 1 {
		t.Fatalf("stats: fast rx %d, relay rx %d, direct rx %d; want 3, 3, 1", st.FastRxPackets, st.RxPackets[PathRelay], st.RxPackets[PathDirect])
	}
}

// TestSendFastNoAllocs: a relayed batch over the shared socket allocates
// nothing (the arena comes from a pool, the endpoint is prebuilt).
func TestSendFastNoAllocs(t *testing.T) {
	r := newFastRig(t)
	peer := key.NewNode().Public()
	r.b.SetRelay(peer, r.link)
	ep := r.b.Peer(peer)
	var bufs [][]byte
	for i := range 8 {
		bufs = append(bufs, wgPacket(i, 1312))
	}
	if a := testing.AllocsPerRun(100, func() {
		if err := r.b.Send(bufs, ep); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Fatalf("%.1f allocations per Send, want 0", a)
	}
}
