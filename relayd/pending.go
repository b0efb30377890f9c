package relayd

import (
	"container/list"
	"net"
	"net/netip"
	"sync"
)

// Pending connections: every connection that has not been admitted yet
// (QUIC after its handshake, waiting for the control stream and the hello;
// TCP from accept, through the TLS handshake, to the hello) holds one slot
// of a single budget shared by both transports. Two limits apply:
//
//   - per source (an IPv4 address, or an IPv6 /64, which one host usually
//     owns whole): Config.MaxPendingPerSource;
//   - in total: Config.MaxPending.
//
// A new connection over either limit sheds the OLDEST pending connection of
// that source (per-source limit) or of all (total limit), never itself: the
// newest connection is the one most likely to be a live client that will
// finish its hello at once, while the oldest has had the longest to do so
// and has not. One address holding idle connections therefore only ever
// evicts its own, and a legitimate client from another address still gets
// in (TestTCPIdleFloodFromOneAddress).

// Pending budget defaults. A legitimate connection is pending for one or two
// round trips (TLS handshake plus hello), so even a relay taking 1,000 new
// clients a second after a restart holds well under 1,024 at once; 32 per
// source leaves room for a NAT with many nodes behind it reconnecting
// together, while one host can never take more than 1/32 of the budget.
const (
	DefaultMaxPending          = 1024
	DefaultMaxPendingPerSource = 32
)

// Reasons a pending connection is dropped: the values of
// relayd_pending_dropped_total's reason label.
const (
	shedSource     = "source_limit"    // the source held its limit; its oldest was closed
	shedTotal      = "total_limit"     // the budget was full; the oldest of all was closed
	shedHandshakes = "handshake_limit" // a new QUIC handshake was refused: too many in flight
	// shedHandshakeFailed: a TCP connection's TLS handshake failed or
	// missed its deadline (QUIC's are quic-go's and not seen here).
	shedHandshakeFailed = "handshake_failed"
)

var pendingDropReasons = []string{shedSource, shedTotal, shedHandshakes, shedHandshakeFailed}

// pendingSet is the budget. Its zero value is not usable; see newPendingSet.
type pendingSet struct {
	max, perSource int
	m              *metrics

	mu    sync.Mutex                // guards all, bySrc and every pendingConn's fields
	all   *list.List                // of *pendingConn, oldest first
	bySrc map[netip.Addr]*list.List // of *pendingConn, oldest first
}

// pendingConn is one slot. shed closes the connection it guards.
type pendingConn struct {
	src      netip.Addr
	shed     func()
	allElem  *list.Element
	srcElem  *list.Element
	released bool
}

func newPendingSet(max, perSource int, m *metrics) *pendingSet {
	return &pendingSet{max: max, perSource: perSource, m: m, all: list.New(), bySrc: map[netip.Addr]*list.List{}}
}

// sourceOf returns the budget key of addr: the IPv4 address, or the IPv6 /64.
func sourceOf(addr net.Addr) netip.Addr {
	var ap netip.AddrPort
	switch a := addr.(type) {
	case *net.UDPAddr:
		ap = a.AddrPort()
	case *net.TCPAddr:
		ap = a.AddrPort()
	default:
		ap, _ = netip.ParseAddrPort(addr.String())
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// add takes a slot for a connection from addr, shedding the oldest pending
// connection of its source or of all when a limit is reached. shed is
// called (without the lock held) to close a connection that loses its
// slot; it must not block. Release the slot with release.
func (p *pendingSet) add(addr net.Addr, shed func()) *pendingConn {
	pc := &pendingConn{src: sourceOf(addr), shed: shed}
	var victims []*pendingConn
	p.mu.Lock()
	sl := p.bySrc[pc.src]
	if sl == nil {
		sl = list.New()
		p.bySrc[pc.src] = sl
	}
	for sl.Len() >= p.perSource {
		v := sl.Front().Value.(*pendingConn)
		p.removeLocked(v)
		victims = append(victims, v)
		p.m.pendingDropped.WithLabelValues(shedSource).Inc()
	}
	for p.all.Len() >= p.max {
		v := p.all.Front().Value.(*pendingConn)
		p.removeLocked(v)
		victims = append(victims, v)
		p.m.pendingDropped.WithLabelValues(shedTotal).Inc()
	}
	if sl = p.bySrc[pc.src]; sl == nil { // removeLocked may have dropped it
		sl = list.New()
		p.bySrc[pc.src] = sl
	}
	pc.allElem = p.all.PushBack(pc)
	pc.srcElem = sl.PushBack(pc)
	p.m.pending.Set(float64(p.all.Len()))
	p.mu.Unlock()
	for _, v := range victims {
		v.shed()
	}
	return pc
}

// release gives the slot back: the connection was admitted or has failed.
// It is safe to call more than once and after the slot was shed.
func (p *pendingSet) release(pc *pendingConn) {
	p.mu.Lock()
	p.removeLocked(pc)
	p.m.pending.Set(float64(p.all.Len()))
	p.mu.Unlock()
}

// holds reports whether pc still holds its slot (not shed, not released).
func (p *pendingSet) holds(pc *pendingConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !pc.released
}

// len returns how many connections are pending.
func (p *pendingSet) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.all.Len()
}

func (p *pendingSet) removeLocked(pc *pendingConn) {
	if pc.released {
		return
	}
	pc.released = true
	p.all.Remove(pc.allElem)
	if sl := p.bySrc[pc.src]; sl != nil {
		sl.Remove(pc.srcElem)
		if sl.Len() == 0 {
			delete(p.bySrc, pc.src)
		}
	}
}
