package bind

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// relayNet connects binds in memory, as a relay server would.
type relayNet struct {
	mu    sync.Mutex
	binds map[key.NodePublic]*Bind
}

func (n *relayNet) sender(self key.NodePublic) RelaySender { return &relayHop{n: n, self: self} }

type relayHop struct {
	n    *relayNet
	self key.NodePublic
	mu   sync.Mutex
	sent int
}

func (h *relayHop) SendTo(peer key.NodePublic, pkt []byte) error {
	h.n.mu.Lock()
	b := h.n.binds[peer]
	h.n.mu.Unlock()
	if b == nil {
		return fmt.Errorf("peer %v not connected", peer.ShortString())
	}
	h.mu.Lock()
	h.sent++
	h.mu.Unlock()
	b.DeliverRelay(h.self, pkt)
	return nil
}

func (h *relayHop) Sent() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sent
}

type node struct {
	priv  key.NodePrivate
	bind  *Bind
	dev   *device.Device
	net   *netstack.Net
	ip    netip.Addr
	hop   *relayHop
	disco chan Source
}

func newNode(t testing.TB, rn *relayNet, ip string, direct bool) *node {
	t.Helper()
	n := &node{priv: key.NewNode(), ip: netip.MustParseAddr(ip), disco: make(chan Source, 16)}
	n.hop = rn.sender(n.priv.Public()).(*relayHop)
	n.bind = New(Config{Relay: n.hop, Direct: direct, OnDisco: func(src Source, pkt []byte) {
		select {
		case n.disco <- src:
		default:
		}
	}})
	rn.mu.Lock()
	rn.binds[n.priv.Public()] = n.bind
	rn.mu.Unlock()
	tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{n.ip}, nil, 1280)
	if err != nil {
		t.Fatal(err)
	}
	n.net = tnet
	n.dev = device.NewDevice(tdev, n.bind, device.NewLogger(device.LogLevelSilent, ""))
	t.Cleanup(n.dev.Close)
	if err := n.dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=0\n", n.priv.UAPI())); err != nil {
		t.Fatal(err)
	}
	if err := n.dev.Up(); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *node) addPeer(t testing.TB, p *node) {
	t.Helper()
	cfg := fmt.Sprintf("public_key=%s\nendpoint=%s\nallowed_ip=%s/32\n", p.priv.Public().UAPI(), p.priv.Public(), p.ip)
	if err := n.dev.IpcSet(cfg); err != nil {
		t.Fatal(err)
	}
}

// nextPort gives each transfer its own port: gVisor keeps a closed
// listener's port busy for a while.
var nextPort atomic.Uint32

// transfer sends size bytes over TCP from a to b through the mesh and
// checks the SHA-256 on arrival.
func transfer(t testing.TB, a, b *node, size int) {
	t.Helper()
	port := uint16(8000 + nextPort.Add(1))
	ln, err := b.net.ListenTCPAddrPort(netip.AddrPortFrom(b.ip, port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(got)
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		got <- [32]byte(h.Sum(nil))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := a.net.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(b.ip, port))
	if err != nil {
		t.Fatalf("dial over mesh: %v", err)
	}
	data := bytes.Repeat([]byte("wiremesh"), size/8)
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case sum := <-got:
		if sum != sha256.Sum256(data) {
			t.Fatal("checksum mismatch")
		}
	case <-ctx.Done():
		t.Fatal("transfer timed out")
	}
}

func TestRelayPath(t *testing.T) {
	rn := &relayNet{binds: map[key.NodePublic]*Bind{}}
	a := newNode(t, rn, "100.64.0.1", false)
	b := newNode(t, rn, "100.64.0.2", false)
	a.addPeer(t, b)
	b.addPeer(t, a)
	transfer(t, a, b, 1<<20)
	if p := a.bind.Peer(b.priv.Public()).Path(); p != PathRelay {
		t.Fatalf("path %v, want relay", p)
	}
	st := a.bind.Stats()
	if st.TxBytes[PathRelay] < 1<<20 || st.TxBytes[PathDirect] != 0 {
		t.Fatalf("stats %+v", st)
	}
	if tx, _ := a.bind.Peer(b.priv.Public()).Bytes(); tx < 1<<20 {
		t.Fatalf("peer tx %d", tx)
	}
}

func TestDirectPath(t *testing.T) {
	rn := &relayNet{binds: map[key.NodePublic]*Bind{}}
	a := newNode(t, rn, "100.64.0.1", true)
	b := newNode(t, rn, "100.64.0.2", true)
	a.addPeer(t, b)
	b.addPeer(t, a)
	lo := netip.MustParseAddr("127.0.0.1")
	a.bind.SetDirect(b.priv.Public(), netip.AddrPortFrom(lo, b.bind.Port()))
	b.bind.SetDirect(a.priv.Public(), netip.AddrPortFrom(lo, a.bind.Port()))
	transfer(t, a, b, 1<<20)
	if n := a.hop.Sent() + b.hop.Sent(); n != 0 {
		t.Fatalf("relay used on a direct path: %d packets", n)
	}
	if st := b.bind.Stats(); st.RxBytes[PathDirect] < 1<<20 {
		t.Fatalf("stats %+v", st)
	}
	// Clearing the direct path falls back to the relay at once.
	a.bind.SetDirect(b.priv.Public(), netip.AddrPort{})
	b.bind.SetDirect(a.priv.Public(), netip.AddrPort{})
	transfer(t, a, b, 64<<10)
	if a.hop.Sent() == 0 {
		t.Fatal("no relayed packets after the direct path was cleared")
	}
}

func TestDemux(t *testing.T) {
	rn := &relayNet{binds: map[key.NodePublic]*Bind{}}
	a := newNode(t, rn, "100.64.0.1", true)
	b := newNode(t, rn, "100.64.0.2", true)
	a.addPeer(t, b)
	// A disco packet through the relay reaches OnDisco with the peer key.
	dk, dk2 := key.NewDisco(), key.NewDisco()
	sk := key.Precompute(dk, dk2.Public())
	pkt := disco.Seal(nil, dk.Public(), &sk, &disco.Ping{TxID: disco.NewTxID()})
	a.bind.DeliverRelay(b.priv.Public(), pkt)
	select {
	case src := <-a.disco:
		if src.Peer != b.priv.Public() || src.Addr.IsValid() {
			t.Fatalf("relay disco source %+v", src)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("relay disco not delivered")
	}
	// And one over UDP reaches it with the source address.
	lo := netip.MustParseAddr("127.0.0.1")
	if err := b.bind.WriteTo(pkt, netip.AddrPortFrom(lo, a.bind.Port())); err != nil {
		t.Fatal(err)
	}
	select {
	case src := <-a.disco:
		if src.Addr.Port() != b.bind.Port() {
			t.Fatalf("udp disco source %+v, want port %d", src, b.bind.Port())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("udp disco not delivered")
	}
	// WireGuard-looking junk from an unknown address is dropped and counted.
	junk := []byte{4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17}
	b.bind.WriteTo(junk, netip.AddrPortFrom(lo, a.bind.Port()))
	deadline := time.Now().Add(5 * time.Second)
	for a.bind.Stats().UnknownSourceDrops == 0 {
		if time.Now().After(deadline) {
			t.Fatal("unknown-source packet not counted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Relay packets from strangers are dropped too.
	before := a.bind.Stats().UnknownSourceDrops
	a.bind.DeliverRelay(key.NewNode().Public(), junk)
	if a.bind.Stats().UnknownSourceDrops != before+1 {
		t.Fatal("relay packet from unknown peer not counted")
	}
}

func TestParseEndpoint(t *testing.T) {
	b := New(Config{})
	k := key.NewNode().Public()
	ep, err := b.ParseEndpoint(k.String())
	if err != nil || ep.(*Endpoint).Key() != k || ep.DstToString() != k.String() {
		t.Fatalf("ParseEndpoint: %v %v", ep, err)
	}
	if ep2, _ := b.ParseEndpoint(k.String()); ep2 != ep {
		t.Fatal("endpoint not reused")
	}
	if _, err := b.ParseEndpoint("198.18.0.1:41641"); err == nil {
		t.Fatal("ip:port accepted as endpoint")
	}
	if b.Peer(k).Path() != PathNone {
		t.Fatal("path without relay")
	}
}

func TestClassify(t *testing.T) {
	stun := make([]byte, 20)
	stun[1] = 1
	stun[4], stun[5], stun[6], stun[7] = 0x21, 0x12, 0xA4, 0x42
	if classify(stun) != kindSTUN {
		t.Fatal("stun not recognised")
	}
	if classify([]byte{1, 0, 0, 0}) != kindWireGuard {
		t.Fatal("wireguard misclassified")
	}
}

// BenchmarkRelayTransfer moves 4 MB over TCP between two wireguard-go
// devices (netstack) joined by an in-memory relay: the bind's relay path
// with WireGuard crypto and a userspace TCP stack on top.
func BenchmarkRelayTransfer(b *testing.B) {
	rn := &relayNet{binds: map[key.NodePublic]*Bind{}}
	tb := testing.TB(b)
	x := newNode(tb, rn, "100.64.0.1", false)
	y := newNode(tb, rn, "100.64.0.2", false)
	x.addPeer(tb, y)
	y.addPeer(tb, x)
	const size = 4 << 20
	b.SetBytes(size)
	for b.Loop() {
		transfer(tb, x, y, size)
	}
}

// TestDirectBatchCompaction sends disco and WireGuard traffic to one bind
// in the same bursts: the WireGuard packets must reach wireguard-go intact
// (a batch mixing kinds is compacted in place).
func TestDirectBatchCompaction(t *testing.T) {
	rn := &relayNet{binds: map[key.NodePublic]*Bind{}}
	a := newNode(t, rn, "100.64.0.1", true)
	b := newNode(t, rn, "100.64.0.2", true)
	a.addPeer(t, b)
	b.addPeer(t, a)
	lo := netip.MustParseAddr("127.0.0.1")
	a.bind.SetDirect(b.priv.Public(), netip.AddrPortFrom(lo, b.bind.Port()))
	b.bind.SetDirect(a.priv.Public(), netip.AddrPortFrom(lo, a.bind.Port()))
	dk, dk2 := key.NewDisco(), key.NewDisco()
	sk := key.Precompute(dk, dk2.Public())
	pkt := disco.Seal(nil, dk.Public(), &sk, &disco.Ping{TxID: disco.NewTxID()})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for i := 0; i < 8; i++ {
				a.bind.WriteTo(pkt, netip.AddrPortFrom(lo, b.bind.Port()))
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	transfer(t, a, b, 4<<20)
}

// TestAddressTablePruned: removing peers frees every address accepted for
// them, so the table never fills up for good; one peer cannot fill it.
func TestAddressTablePruned(t *testing.T) {
	b := New(Config{})
	addr := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), uint16(i>>16+1))
	}
	var peers []key.NodePublic
	for i := 0; len(b.byAddr) < maxAcceptedAddrs; i++ {
		k := key.NewNode().Public()
		peers = append(peers, k)
		for j := range maxAddrsPerPeer + 10 {
			b.AcceptFrom(k, addr(i*maxAddrsPerPeer+j))
		}
		if n := len(b.Peer(k).addrs); n > maxAddrsPerPeer {
			t.Fatalf("peer holds %d addresses, more than %d", n, maxAddrsPerPeer)
		}
	}
	late := key.NewNode().Public()
	b.AcceptFrom(late, netip.MustParseAddrPort("198.19.0.1:1"))
	if b.byAddr[netip.MustParseAddrPort("198.19.0.1:1")] != nil {
		t.Fatal("full table accepted another address")
	}
	for _, k := range peers {
		b.RemovePeer(k)
	}
	if len(b.byAddr) != 0 {
		t.Fatalf("%d addresses left after removing every peer", len(b.byAddr))
	}
	b.AcceptFrom(late, netip.MustParseAddrPort("198.19.0.1:1"))
	if b.byAddr[netip.MustParseAddrPort("198.19.0.1:1")] == nil {
		t.Fatal("address refused after the table was pruned")
	}
	// ForgetAddr drops an accepted address but never the direct path.
	d := netip.MustParseAddrPort("198.19.0.2:1")
	b.SetDirect(late, d)
	b.ForgetAddr(late, d)
	b.ForgetAddr(late, netip.MustParseAddrPort("198.19.0.1:1"))
	if b.byAddr[d] == nil || b.byAddr[netip.MustParseAddrPort("198.19.0.1:1")] != nil {
		t.Fatalf("after ForgetAddr: %v", b.byAddr)
	}
}
