// Package bind is Wiremesh's conn.Bind for wireguard-go: WireGuard endpoints
// are peers (node keys), not ip:ports, and each send goes over the peer's
// current path: direct UDP when one is confirmed, else the relay fleet.
//
// Flow:
//
//	wireguard-go Send(bufs, ep) ─► Endpoint.path ─┬─ direct: StdNetBind.Send (sendmmsg, UDP GSO)
//	                                              └─ relay:  RelaySender.SendTo(peer, pkt)
//
//	relay client ─► DeliverRelay ─► relayQueue ─► relay ReceiveFunc ─► wireguard-go
//	UDP socket ─► StdNetBind ReceiveFuncs (recvmmsg, GRO) ─► demux ─┬─ WireGuard ─► wireguard-go
//	                                                                ├─ disco     ─► OnDisco
//	                                                                └─ STUN      ─► OnSTUN
//
// The UDP socket is wireguard-go's own StdNetBind, so the direct path keeps
// its batching. Disco and STUN share that one socket (a STUN answer is only
// meaningful for the socket that asked). Direct packets are accepted only
// from addresses a path has been confirmed to (SetDirect); anything else
// that is not disco or STUN is dropped.
package bind

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/wiremesh/wiremesh/disco"
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
}

// Bind implements conn.Bind. Create it with New.
type Bind struct {
	cfg Config

	// udp mirrors std for the send path, which loads it with no lock.
	udp atomic.Pointer[udpSocket]

	mu      sync.RWMutex // guards the fields below; read-locked per received batch
	std     conn.Bind
	open    bool
	relayIn chan relayPacket
	closing chan struct{}
	peers   map[key.NodePublic]*Endpoint
	byAddr  map[netip.AddrPort]*Endpoint
	udpPort uint16

	txBytes, rxBytes     [3]atomic.Uint64
	txPackets, rxPackets [3]atomic.Uint64
	relayDrops           atomic.Uint64
	unknownDrops         atomic.Uint64
	directErrs           atomic.Uint64
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
		cfg:    cfg,
		peers:  map[key.NodePublic]*Endpoint{},
		byAddr: map[netip.AddrPort]*Endpoint{},
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
	fns := []conn.ReceiveFunc{b.makeReceiveRelay(b.relayIn, b.closing)}
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

// Close implements conn.Bind: every ReceiveFunc returns net.ErrClosed.
func (b *Bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return nil
	}
	b.open = false
	close(b.closing)
	var err error
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

// RemovePeer forgets a peer, its direct address and every address
// accepted for it.
func (b *Bind) RemovePeer(k key.NodePublic) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ep, ok := b.peers[k]
	if !ok {
		return
	}
	for a := range ep.addrs {
		if b.byAddr[a] == ep {
			delete(b.byAddr, a)
		}
	}
	ep.addrs = nil
	ep.publish(func(r *route) { *r = route{} })
	delete(b.peers, k)
}

// TxBytes returns bytes sent to peer k over any path (0 for an unknown
// peer).
func (b *Bind) TxBytes(k key.NodePublic) uint64 {
	b.mu.RLock()
	ep := b.peers[k]
	b.mu.RUnlock()
	if ep == nil {
		return 0
	}
	return ep.txBytes.Load()
}

// Send implements conn.Bind. It reads the peer's route with one atomic
// load and takes no lock and reads no clock: the path machine and the
// relay router publish routes, Send only follows them.
func (b *Bind) Send(bufs [][]byte, cep conn.Endpoint) error {
	ep, ok := cep.(*Endpoint)
	if !ok {
		return ErrNotPeer
	}
	var n uint64
	for _, p := range bufs {
		n += uint64(len(p))
	}
	r := ep.route.Load()
	if r.directEP != nil {
		if u := b.udp.Load(); u != nil {
			err := u.Send(bufs, r.directEP)
			switch {
			case err != nil:
				// The direct path failed (network gone, address
				// changed): this batch goes through the relay, and the
				// path state machine will notice the missing pongs.
				b.directErrs.Add(1)
			case r.both:
				// Unconfirmed direct path: the relay carries a copy.
				b.txBytes[PathDirect].Add(n)
				b.txPackets[PathDirect].Add(uint64(len(bufs)))
			default:
				b.txBytes[PathDirect].Add(n)
				b.txPackets[PathDirect].Add(uint64(len(bufs)))
				ep.txBytes.Add(n)
				return nil
			}
		}
	}
	if b.cfg.Relay == nil && r.relay == nil {
		return errors.New("bind: no relay configured")
	}
	if b.cfg.OnRelaySend != nil && ep.relayBatches.Add(1)&relayNotifyMask == 1 {
		b.cfg.OnRelaySend(ep.key)
	}
	var firstErr error
	for _, p := range bufs {
		if err := b.sendRelay(ep, r, p); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	b.txBytes[PathRelay].Add(n)
	b.txPackets[PathRelay].Add(uint64(len(bufs)))
	ep.txBytes.Add(n)
	return firstErr
}

// sendRelay sends one packet over the peer's published relay link, or,
// when there is none or it fails (not connected yet, gone), through the
// RelaySender, which picks a relay, queues while it connects and
// publishes the link for the next packets.
func (b *Bind) sendRelay(ep *Endpoint, r *route, p []byte) error {
	if r.relay != nil {
		if err := r.relay.Send(ep.key, p); err == nil || b.cfg.Relay == nil {
			return err
		}
	}
	return b.cfg.Relay.SendTo(ep.key, p)
}

// DeliverRelay hands wireguard-go a packet a relay delivered from peer.
// Disco packets go to OnDisco instead. pkt is copied. If wireguard-go is
// behind by relayQueueLen packets, the packet is dropped and counted.
func (b *Bind) DeliverRelay(from key.NodePublic, pkt []byte) {
	if len(pkt) == 0 || len(pkt) > maxPacket {
		return
	}
	if disco.LooksLikeDisco(pkt) {
		if b.cfg.OnDisco != nil {
			b.cfg.OnDisco(Source{Peer: from}, pkt)
		}
		return
	}
	b.mu.Lock()
	ep, known := b.peers[from]
	in, open := b.relayIn, b.open
	b.mu.Unlock()
	if !known || !open {
		b.unknownDrops.Add(1)
		return
	}
	buf := bufPool.Get().(*[]byte)
	n := copy(*buf, pkt)
	select {
	case in <- relayPacket{from: ep, buf: buf, n: n}:
	default:
		bufPool.Put(buf)
		b.relayDrops.Add(1)
	}
}

func (b *Bind) makeReceiveRelay(in chan relayPacket, closing chan struct{}) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var p relayPacket
		select {
		case p = <-in:
		case <-closing:
			return 0, net.ErrClosed
		}
		n := 0
		for {
			sizes[n] = copy(packets[n], (*p.buf)[:p.n])
			eps[n] = p.from
			b.rxBytes[PathRelay].Add(uint64(sizes[n]))
			p.from.rxBytes.Add(uint64(sizes[n]))
			bufPool.Put(p.buf)
			n++
			if n == len(packets) {
				break
			}
			select {
			case p = <-in:
				continue
			default:
			}
			break
		}
		b.rxPackets[PathRelay].Add(uint64(n))
		return n, nil
	}
}

// wrapDirect filters a StdNetBind ReceiveFunc: WireGuard packets from
// confirmed addresses pass with their peer's endpoint; disco and STUN go to
// their handlers; the rest is dropped.
func (b *Bind) wrapDirect(recv conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for {
			n, err := recv(packets, sizes, eps)
			if err != nil {
				return 0, err
			}
			kept := 0
			// One read lock per batch, and the previous packet's sender
			// reused: a batch is usually one peer's packets.
			b.mu.RLock()
			var lastSrc netip.AddrPort
			var lastEP *Endpoint
			for i := 0; i < n; i++ {
				pkt := packets[i][:sizes[i]]
				se, _ := eps[i].(*conn.StdNetEndpoint)
				if se == nil {
					continue
				}
				src := netip.AddrPortFrom(se.AddrPort.Addr().Unmap(), se.AddrPort.Port())
				switch classify(pkt) {
				case kindDisco:
					if b.cfg.OnDisco != nil {
						b.mu.RUnlock()
						b.cfg.OnDisco(Source{Addr: src}, pkt)
						b.mu.RLock()
					}
					continue
				case kindSTUN:
					if b.cfg.OnSTUN != nil {
						b.mu.RUnlock()
						b.cfg.OnSTUN(src, pkt)
						b.mu.RLock()
					}
					continue
				}
				ep := lastEP
				if src != lastSrc || ep == nil {
					ep = b.byAddr[src]
					lastSrc, lastEP = src, ep
				}
				if ep == nil {
					b.unknownDrops.Add(1)
					continue
				}
				if kept != i {
					// Compact by copying, not by swapping slices:
					// wireguard-go reads its own buffer arrays back, not
					// the slice headers it passed in. Only a batch that
					// also held disco, STUN or dropped packets pays this.
					copy(packets[kept], pkt)
				}
				sizes[kept] = len(pkt)
				eps[kept] = ep
				b.rxBytes[PathDirect].Add(uint64(len(pkt)))
				ep.rxBytes.Add(uint64(len(pkt)))
				kept++
			}
			b.mu.RUnlock()
			if kept > 0 {
				b.rxPackets[PathDirect].Add(uint64(kept))
				return kept, nil
			}
			// Nothing for wireguard-go in this batch; read again rather
			// than return 0, which wireguard-go treats as a spin.
		}
	}
}

type packetKind int

const (
	kindWireGuard packetKind = iota
	kindDisco
	kindSTUN
)

// stunMagicCookie is RFC 5389's fixed value at bytes 4-8 of every message.
const stunMagicCookie = 0x2112A442

func classify(p []byte) packetKind {
	switch {
	case disco.LooksLikeDisco(p):
		return kindDisco
	case len(p) >= 20 && p[0]&0xc0 == 0 && binary.BigEndian.Uint32(p[4:8]) == stunMagicCookie:
		return kindSTUN
	}
	return kindWireGuard
}

// WriteTo sends a raw packet (disco, STUN) from the UDP socket.
func (b *Bind) WriteTo(pkt []byte, dst netip.AddrPort) error {
	u := b.udp.Load()
	if u == nil {
		return errors.New("bind: direct path is off")
	}
	return u.Send([][]byte{pkt}, &conn.StdNetEndpoint{AddrPort: dst})
}

// SetDirect makes addr the peer's direct path (or, with an invalid addr,
// clears it so that packets go through the relay). A failed direct send
// falls back to the relay.
func (b *Bind) SetDirect(k key.NodePublic, addr netip.AddrPort) {
	b.setDirect(k, addr, false)
}

// SetTentative makes addr the peer's direct path while it is unconfirmed:
// packets go both to addr and through the relay, so none is lost if the
// path turns out not to work. SetDirect with the same address confirms it.
func (b *Bind) SetTentative(k key.NodePublic, addr netip.AddrPort) {
	b.setDirect(k, addr, true)
}

func (b *Bind) setDirect(k key.NodePublic, addr netip.AddrPort, both bool) {
	ep := b.Peer(k)
	if !addr.IsValid() {
		ep.publish(func(r *route) { r.direct, r.directEP, r.both = netip.AddrPort{}, nil, false })
		return
	}
	b.mu.Lock()
	b.acceptLocked(ep, addr, true)
	b.mu.Unlock()
	ep.publish(func(r *route) {
		r.direct, r.directEP, r.both = addr, &conn.StdNetEndpoint{AddrPort: addr}, both
	})
}

// SetRelay publishes the relay connection packets to peer k go over; nil
// sends them through the RelaySender until a link is published again.
func (b *Bind) SetRelay(k key.NodePublic, link RelayLink) {
	b.Peer(k).publish(func(r *route) { r.relay = link })
}

// AcceptFrom lets WireGuard packets from addr count as peer k's without
// making addr the send path: used while a path is being confirmed. An
// address stays accepted until ForgetAddr or RemovePeer; past the bounds
// (per peer and in all) new addresses are refused.
func (b *Bind) AcceptFrom(k key.NodePublic, addr netip.AddrPort) {
	ep := b.Peer(k)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.acceptLocked(ep, addr, false)
}

func (b *Bind) acceptLocked(ep *Endpoint, addr netip.AddrPort, force bool) {
	if _, ok := ep.addrs[addr]; ok {
		return
	}
	if !force && (len(ep.addrs) >= maxAddrsPerPeer || len(b.byAddr) >= maxAcceptedAddrs) {
		return
	}
	if prev := b.byAddr[addr]; prev != nil && prev != ep {
		delete(prev.addrs, addr) // the address moved to another peer
	}
	if ep.addrs == nil {
		ep.addrs = map[netip.AddrPort]struct{}{}
	}
	ep.addrs[addr] = struct{}{}
	b.byAddr[addr] = ep
}

// ForgetAddr stops accepting packets from addr as peer k's, unless it is
// the peer's direct path.
func (b *Bind) ForgetAddr(k key.NodePublic, addr netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ep := b.peers[k]
	if ep == nil {
		return
	}
	if ep.route.Load().direct == addr {
		return
	}
	delete(ep.addrs, addr)
	if b.byAddr[addr] == ep {
		delete(b.byAddr, addr)
	}
}

// Address table bounds: a peer has at most a few dozen candidates (the
// path machine keeps 64), and the table as a whole stays a few MB.
const (
	maxAddrsPerPeer  = 128
	maxAcceptedAddrs = 1 << 16
)

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
	return s
}

// Endpoint is a peer, as wireguard-go sees it.
type Endpoint struct {
	key              key.NodePublic
	bind             *Bind
	route            atomic.Pointer[route] // never nil
	routeMu          sync.Mutex            // serializes publishers
	txBytes, rxBytes atomic.Uint64
	relayBatches     atomic.Uint64               // batches sent through the relay, for OnRelaySend
	addrs            map[netip.AddrPort]struct{} // accepted source addresses; guarded by Bind.mu
}

// route is a peer's path, published whole (copy on write) so that Send
// reads it with one atomic load.
type route struct {
	direct   netip.AddrPort       // valid: send over UDP
	directEP *conn.StdNetEndpoint // the same, prebuilt for StdNetBind.Send
	both     bool                 // direct path unconfirmed: the relay carries a copy
	relay    RelayLink            // the peer's relay connection; nil: ask the RelaySender
}

// publish applies change to a copy of the route and publishes the copy.
func (e *Endpoint) publish(change func(*route)) {
	e.routeMu.Lock()
	defer e.routeMu.Unlock()
	r := *e.route.Load()
	change(&r)
	e.route.Store(&r)
}

// Key returns the peer's node key.
func (e *Endpoint) Key() key.NodePublic { return e.key }

// Path returns the peer's current path. A tentative direct path reports
// as relay until it is confirmed.
func (e *Endpoint) Path() Path {
	if r := e.route.Load(); r.directEP != nil && !r.both {
		return PathDirect
	}
	if e.bind.cfg.Relay != nil {
		return PathRelay
	}
	return PathNone
}

// Direct returns the peer's direct address, if any.
func (e *Endpoint) Direct() (netip.AddrPort, bool) {
	d := e.route.Load().direct
	return d, d.IsValid()
}

// Bytes returns bytes sent to and received from the peer over any path.
func (e *Endpoint) Bytes() (tx, rx uint64) { return e.txBytes.Load(), e.rxBytes.Load() }

// ClearSrc implements conn.Endpoint.
func (e *Endpoint) ClearSrc() {}

// SrcToString implements conn.Endpoint.
func (e *Endpoint) SrcToString() string { return "" }

// DstToString implements conn.Endpoint: the node key, which ParseEndpoint
// accepts back.
func (e *Endpoint) DstToString() string { return e.key.String() }

// DstToBytes implements conn.Endpoint. wireguard-go mixes it into cookie
// MACs; the node key identifies the peer on every path.
func (e *Endpoint) DstToBytes() []byte {
	r := e.key.Raw()
	return r[:]
}

// DstIP implements conn.Endpoint: the direct address's IP, if any.
func (e *Endpoint) DstIP() netip.Addr {
	return e.route.Load().direct.Addr()
}

// SrcIP implements conn.Endpoint.
func (e *Endpoint) SrcIP() netip.Addr { return netip.Addr{} }
