// Package bind is Wiremesh's conn.Bind for wireguard-go: WireGuard endpoints
// are peers (node keys), not ip:ports, and each send goes over the peer's
// current path: direct UDP when one is confirmed, else the relay fleet.
//
// Flow:
//
//	wireguard-go Send(bufs, ep) ─► Endpoint.route ─┬─ direct: StdNetBind.Send (sendmmsg, UDP GSO)
//	                                               ├─ relay, fast path on our socket: FastSend batch ─► StdNetBind.Send
//	                                               └─ relay otherwise: RelayLink.Send / RelaySender.SendTo per packet
//
//	relay client ─► DeliverRelay ─► relayQueue ─► relay ReceiveFunc ─► wireguard-go
//	UDP socket ─► StdNetBind ReceiveFuncs (recvmmsg, GRO) ─► demux ─┬─ WireGuard ─► wireguard-go
//	                                                                ├─ FastRecv from a relay ─► wireguard-go
//	                                                                ├─ disco     ─► OnDisco
//	                                                                └─ STUN      ─► OnSTUN
//
// The UDP socket is wireguard-go's own StdNetBind, so the direct path keeps
// its batching. Disco and STUN share that one socket (a STUN answer is only
// meaningful for the socket that asked). Direct packets are accepted only
// from addresses a path has been confirmed to (SetDirect); anything else
// that is not disco or STUN is dropped. Relay connections may share the
// socket for their fast paths (ClaimFast, WriteFast; see fast.go): their
// relayed packets then travel in the socket's batches both ways.
package bind

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/wiremesh/wiremesh/key"
	"golang.zx2c4.com/wireguard/conn"
)

// relayQueueLen bounds packets received from relays and not yet read by
// wireguard-go. wireguard-go reads in batches of BatchSize (128) on its own
// goroutine; 1024 absorbs a burst of several batches. Beyond it, packets
// are dropped (and counted): WireGuard's inner TCP backs off as on any loss.
const relayQueueLen = 1024

// maxPacket is the largest packet accepted from a relay: a WireGuard
// transport message carrying a 65535-byte inner packet is impossible on
// our MTUs, so this bounds buffer size at the largest UDP payload.
const maxPacket = 65535

// Path is how packets to a peer travel.
type Path int

// Paths.
const (
	PathNone Path = iota
	PathRelay
	PathDirect
)

func (p Path) String() string {
	switch p {
	case PathRelay:
		return "relay"
	case PathDirect:
		return "direct"
	}
	return "none"
}

// RelaySender sends one packet to a peer through the relay fleet (the
// peer's home relay, or ours). It must not retain pkt.
type RelaySender interface {
	SendTo(peer key.NodePublic, pkt []byte) error
}

// RelayLink is one relay connection's send path (a relayclient.Client). It
// must not retain pkt, and should take no lock.
type RelayLink interface {
	Send(peer key.NodePublic, pkt []byte) error
}

// Source says where a disco packet came from: a relay (Peer set, Addr
// invalid) or the UDP socket (Addr set).
type Source struct {
	Peer key.NodePublic
	Addr netip.AddrPort
}

// Config configures a Bind.
type Config struct {
	Relay RelaySender
	// Direct enables the UDP socket (wireguard-go opens it on the device's
	// listen port). Without it every packet goes through relays.
	Direct bool
	// OnDisco receives disco packets from either path. It must not retain
	// pkt. May be nil.
	OnDisco func(src Source, pkt []byte)
	// OnSTUN receives STUN packets from the UDP socket. May be nil.
	OnSTUN func(src netip.AddrPort, pkt []byte)
	// OnRelaySend, if set, is told that packets to a peer went through the
	// relay (the first batch, then one in 1024), so the path manager can
	// try to upgrade. It must not block.
	OnRelaySend func(peer key.NodePublic)
}

// relayNotifyMask limits OnRelaySend calls to the first relayed batch
// and one in every 1024 after it, per peer: the send path pays one atomic
// add per batch and no clock. The path machine rate-limits upgrade
// attempts itself, and retries active peers on its own timer.
const relayNotifyMask = 1023

// Stats are cumulative counters, by path.
type Stats struct {
	TxBytes, RxBytes     [3]uint64 // indexed by Path
	TxPackets, RxPackets [3]uint64
	RelayQueueDrops      uint64
	UnknownSourceDrops   uint64
	DirectSendErrors     uint64
	// FastTxPackets and FastRxPackets count relayed packets that went
	// through the UDP socket's batches (the relay fast path on the shared
	// socket); FastSendErrors counts such batches the socket refused.
	FastTxPackets, FastRxPackets uint64
	FastSendErrors               uint64
}

// Bind implements conn.Bind. Create it with New.
type Bind struct {
	cfg Config

	// udp mirrors std for the send path, which loads it with no lock.
	udp atomic.Pointer[udpSocket]

	mu       sync.RWMutex // guards the fields below; read-locked per received batch
	std      conn.Bind
	open     bool
	relayIn  chan relayPacket
	sideIn   chan relayPacket // WireGuard packets read from side sockets
	closing  chan struct{}
	peers    map[key.NodePublic]*Endpoint
	byAddr   map[netip.AddrPort]*Endpoint
	udpPort  uint16
	fastSrc  map[netip.AddrPort]*fastClaim // relay fast-path addresses (ClaimFast)
	sides    map[key.NodePublic]*sideConn  // side sockets (AddSide), by peer
	sideAddr map[netip.AddrPort]*sideConn  // the same, by the peer's address

	txBytes, rxBytes     [3]atomic.Uint64
	txPackets, rxPackets [3]atomic.Uint64
	relayDrops           atomic.Uint64
	unknownDrops         atomic.Uint64
	directErrs           atomic.Uint64
	fastTx               atomic.Uint64 // relayed packets sent in fast-path batches
	fastErrs             atomic.Uint64 // fast-path batches the socket refused
	fastRx               atomic.Uint64 // relayed packets received on the socket
}

type udpSocket struct{ conn.Bind }

type relayPacket struct {
	from *Endpoint
	buf  *[]byte
	n    int
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, maxPacket); return &b }}

// New returns a Bind.
func New(cfg Config) *Bind {
	return &Bind{
		cfg:      cfg,
		peers:    map[key.NodePublic]*Endpoint{},
		byAddr:   map[netip.AddrPort]*Endpoint{},
		fastSrc:  map[netip.AddrPort]*fastClaim{},
		sides:    map[key.NodePublic]*sideConn{},
		sideAddr: map[netip.AddrPort]*sideConn{},
	}
}

var (
	_ conn.Bind     = (*Bind)(nil)
	_ conn.Endpoint = (*Endpoint)(nil)
)

// ErrNotPeer is returned by ParseEndpoint for anything but a node key.
var ErrNotPeer = errors.New("bind: endpoint is not a node key")

// Open implements conn.Bind. It opens the UDP socket when Direct is set.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	b.relayIn = make(chan relayPacket, relayQueueLen)
	b.closing = make(chan struct{})
	b.sideIn = make(chan relayPacket, relayQueueLen)
	fns := []conn.ReceiveFunc{b.makeReceiveQueue(b.relayIn, b.closing, PathRelay),
		b.makeReceiveQueue(b.sideIn, b.closing, PathDirect)}
	actual := port
	if b.cfg.Direct {
		b.std = conn.NewStdNetBind()
		sfns, p, err := b.std.Open(port)
		if err != nil {
			return nil, 0, fmt.Errorf("bind: open udp port %d: %w", port, err)
		}
		actual = p
		b.udp.Store(&udpSocket{b.std})
		for _, f := range sfns {
			fns = append(fns, b.wrapDirect(f))
		}
	}
	b.udpPort = actual
	b.open = true
	return fns, actual, nil
}

// Close implements conn.Bind: every ReceiveFunc returns net.ErrClosed,
// and side sockets are closed (their peers' paths fall back to the relay
// once their pongs stop).
func (b *Bind) Close() error {
	b.mu.Lock()
	if !b.open {
		b.mu.Unlock()
		return nil
	}
	sides := b.takeSidesLocked()
	b.mu.Unlock()
	b.closeSides(sides)
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return nil
	}
	b.open = false
	close(b.closing)
	var err error
	// Relay fast-path claims outlive a reopen: after one (a new port),
	// the relay challenges the new address and the claim passes that to
	// its connection, which re-confirms.
	if b.std != nil {
		b.udp.Store(nil)
		err = b.std.Close()
		b.std = nil
	}
	return err
}

// SetMark implements conn.Bind.
func (b *Bind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.std != nil {
		return b.std.SetMark(mark)
	}
	return nil
}

// BatchSize implements conn.Bind.
func (b *Bind) BatchSize() int { return conn.IdealBatchSize }

// Port returns the bound UDP port (0 when the direct path is off).
func (b *Bind) Port() uint16 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.std == nil {
		return 0
	}
	return b.udpPort
}

// ParseEndpoint implements conn.Bind: s is a node key ("nodekey:<hex>").
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	k, err := key.ParseNodePublic(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotPeer, err)
	}
	return b.Peer(k), nil
}

// Peer returns the endpoint for node key k, creating it on first use.
func (b *Bind) Peer(k key.NodePublic) *Endpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	ep, ok := b.peers[k]
	if !ok {
		ep = &Endpoint{key: k, bind: b}
		ep.route.Store(&route{})
		b.peers[k] = ep
	}
	return ep
}

// Stats returns the counters.
func (b *Bind) Stats() Stats {
	var s Stats
	for i := range s.TxBytes {
		s.TxBytes[i] = b.txBytes[i].Load()
		s.RxBytes[i] = b.rxBytes[i].Load()
		s.TxPackets[i] = b.txPackets[i].Load()
		s.RxPackets[i] = b.rxPackets[i].Load()
	}
	s.RelayQueueDrops = b.relayDrops.Load()
	s.UnknownSourceDrops = b.unknownDrops.Load()
	s.DirectSendErrors = b.directErrs.Load()
	s.FastTxPackets = b.fastTx.Load()
	s.FastRxPackets = b.fastRx.Load()
	s.FastSendErrors = b.fastErrs.Load()
	return s
}
