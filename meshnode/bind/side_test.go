package bind

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
	"golang.zx2c4.com/wireguard/conn"
)

func listenLoopback(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

// readFrom reads one datagram from c within a second.
func readFrom(t *testing.T, c *net.UDPConn) ([]byte, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(time.Second))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

// TestSideSocket: a peer's side socket carries its direct path both ways
// (WireGuard through Send and the side receive queue, disco through
// WriteTo and OnDisco), other sources are dropped, and RemoveSide closes
// the socket and returns sends to the main socket.
func TestSideSocket(t *testing.T) {
	discoIn := make(chan Source, 4)
	b := New(Config{Relay: &relayHop{n: &relayNet{binds: map[key.NodePublic]*Bind{}}}, Direct: true,
		OnDisco: func(src Source, _ []byte) { discoIn <- src }})
	fns, _, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	peer := key.NewNode().Public()
	remote := listenLoopback(t) // the peer, on the far side of the path
	defer remote.Close()
	side := listenLoopback(t)
	sideAddr := addrOf(side)
	if err := b.AddSide(peer, side, addrOf(remote)); err != nil {
		t.Fatal(err)
	}
	if !b.HasSide(peer) {
		t.Fatal("HasSide = false after AddSide")
	}
	b.SetDirect(peer, addrOf(remote))

	// WireGuard out: from the side socket, not the main one.
	wg := []byte{4, 0, 0, 0, 1, 2, 3, 4}
	if err := b.Send([][]byte{wg}, b.Peer(peer)); err != nil {
		t.Fatal(err)
	}
	got, from := readFrom(t, remote)
	if !bytes.Equal(got, wg) || from != sideAddr {
		t.Fatalf("peer got %x from %v, want %x from the side socket %v", got, from, wg, sideAddr)
	}
	// Disco out through WriteTo: the side socket too.
	a, c := key.NewDisco(), key.NewDisco()
	shared := key.Precompute(a, c.Public())
	ping := disco.Seal(nil, a.Public(), &shared, &disco.Ping{TxID: disco.NewTxID()})
	if err := b.WriteTo(ping, addrOf(remote)); err != nil {
		t.Fatal(err)
	}
	if _, from := readFrom(t, remote); from != sideAddr {
		t.Fatalf("disco left from %v, want %v", from, sideAddr)
	}

	// In: disco to OnDisco with the peer's address; WireGuard to the side
	// queue's ReceiveFunc (fns[1]) as the peer's.
	if _, err := remote.WriteToUDPAddrPort(ping, sideAddr); err != nil {
		t.Fatal(err)
	}
	select {
	case src := <-discoIn:
		if src.Addr != addrOf(remote) {
			t.Fatalf("disco from %v, want %v", src.Addr, addrOf(remote))
		}
	case <-time.After(time.Second):
		t.Fatal("no disco from the side socket")
	}
	stranger := listenLoopback(t)
	defer stranger.Close()
	stranger.WriteToUDPAddrPort([]byte{4, 0, 0, 0, 9, 9, 9, 9}, sideAddr) // not the peer's address: dropped
	if _, err := remote.WriteToUDPAddrPort(wg, sideAddr); err != nil {
		t.Fatal(err)
	}
	packets := [][]byte{make([]byte, 2048)}
	sizes, eps := make([]int, 1), make([]conn.Endpoint, 1)
	n, err := fns[1](packets, sizes, eps)
	if err != nil || n != 1 {
		t.Fatalf("side receive: %d, %v", n, err)
	}
	if !bytes.Equal(packets[0][:sizes[0]], wg) || eps[0].(*Endpoint).Key() != peer {
		t.Fatalf("side receive: %x from %v", packets[0][:sizes[0]], eps[0].DstToString())
	}
	if s := b.Stats(); s.UnknownSourceDrops != 1 || s.RxPackets[PathDirect] != 1 {
		t.Fatalf("stats: %d unknown-source drops, %d direct rx packets; want 1 and 1", s.UnknownSourceDrops, s.RxPackets[PathDirect])
	}

	// RemoveSide: the socket is closed, and sends use the main socket.
	b.RemoveSide(peer)
	if b.HasSide(peer) {
		t.Fatal("HasSide after RemoveSide")
	}
	if _, err := side.WriteToUDPAddrPort([]byte("x"), addrOf(remote)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("side socket still open: %v", err)
	}
	if err := b.Send([][]byte{wg}, b.Peer(peer)); err != nil {
		t.Fatal(err)
	}
	if _, from := readFrom(t, remote); from.Port() != b.Port() {
		t.Fatalf("after RemoveSide the packet came from %v, want the main port %d", from, b.Port())
	}
}

// TestSideClosedWithBind: Close closes side sockets; AddSide on a closed
// bind closes the socket it was given.
func TestSideClosedWithBind(t *testing.T) {
	b := New(Config{Direct: true})
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	peer := key.NewNode().Public()
	side := listenLoopback(t)
	if err := b.AddSide(peer, side, netip.MustParseAddrPort("127.0.0.1:9")); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if _, err := side.WriteToUDPAddrPort([]byte("x"), netip.MustParseAddrPort("127.0.0.1:9")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("side socket open after Close: %v", err)
	}
	late := listenLoopback(t)
	if err := b.AddSide(peer, late, netip.MustParseAddrPort("127.0.0.1:9")); err == nil {
		t.Fatal("AddSide on a closed bind succeeded")
	}
	if _, err := late.WriteToUDPAddrPort([]byte("x"), netip.MustParseAddrPort("127.0.0.1:9")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("refused socket left open: %v", err)
	}
}
