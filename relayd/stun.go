package relayd

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v3"
)

// stunMaxPacket bounds a STUN request we read; Binding requests are 20
// bytes plus a few attributes, and anything past 1500 is not ours.
const stunMaxPacket = 1500

// STUN rate limits. STUN is unauthenticated UDP, so a spoofed source can
// aim the answers at a victim; each source IP gets stunSourceRate answers a
// second (burst stunSourceBurst: a NAT with dozens of nodes probing every
// few seconds stays well inside it), and all sources together
// stunGlobalRate, which caps what spoofing many sources can reflect at
// about 1 MB/s. stunMaxSources bounds the per-source table; when it fills
// it starts afresh (every source gets a full burst once more, still under
// the global limit).
const (
	stunSourceRate  = 20
	stunSourceBurst = 40
	stunGlobalRate  = 20_000
	stunMaxSources  = 8192
)

// stunLimiter rate-limits STUN answers per source IP and in total. One
// goroutine per STUN socket uses it, hence the mutex.
type stunLimiter struct {
	mu      sync.Mutex
	global  *limiter
	sources map[netip.Addr]*limiter
}

func newSTUNLimiter(now time.Time) *stunLimiter {
	return &stunLimiter{global: newLimiter(stunGlobalRate, stunGlobalRate, now), sources: map[netip.Addr]*limiter{}}
}

// allow reports whether a request from ip may be answered at now.
func (l *stunLimiter) allow(ip netip.Addr, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	src := l.sources[ip]
	if src == nil {
		if len(l.sources) >= stunMaxSources {
			clear(l.sources)
		}
		src = newLimiter(stunSourceRate, stunSourceBurst, now)
		l.sources[ip] = src
	}
	return src.allow(1, now) && l.global.allow(1, now)
}

// stunResponse answers a STUN Binding request from `from` with its
// XOR-MAPPED-ADDRESS, or reports false for anything else. The answer is
// no larger than it must be (RFC 8489 §14: no SOFTWARE; a FINGERPRINT
// only if the request carried one): 32 bytes for a bare 20-byte IPv4
// request, 40 for one with a fingerprint. It never panics on any input
// (FuzzSTUN).
func stunResponse(req []byte, from *net.UDPAddr) ([]byte, bool) {
	if !stun.IsMessage(req) {
		return nil, false
	}
	m := &stun.Message{Raw: append([]byte(nil), req...)}
	if err := m.Decode(); err != nil {
		return nil, false
	}
	if m.Type != stun.BindingRequest {
		return nil, false
	}
	setters := []stun.Setter{
		stun.NewTransactionIDSetter(m.TransactionID),
		stun.BindingSuccess,
		&stun.XORMappedAddress{IP: from.IP, Port: from.Port},
	}
	if m.Contains(stun.AttrFingerprint) {
		setters = append(setters, stun.Fingerprint)
	}
	resp, err := stun.Build(setters...)
	if err != nil {
		return nil, false
	}
	return resp.Raw, true
}

// serveSTUNQUIC answers STUN on the QUIC port: quic-go hands over every
// packet whose first two bits are zero, which STUN's always are.
func (s *Server) serveSTUNQUIC(ctx context.Context) {
	buf := make([]byte, stunMaxPacket)
	for {
		n, addr, err := s.tr.ReadNonQUICPacket(ctx, buf)
		if err != nil {
			return
		}
		s.answerSTUN(buf[:n], addr, func(b []byte, a net.Addr) { s.tr.WriteTo(b, a) })
	}
}

// serveSTUNUDP answers STUN on the extra plain port (--stun-listen).
func (s *Server) serveSTUNUDP(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { s.stun.Close() })
	defer stop()
	buf := make([]byte, stunMaxPacket)
	for {
		n, addr, err := s.stun.ReadFromUDP(buf)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		s.answerSTUN(buf[:n], addr, func(b []byte, a net.Addr) { s.stun.WriteTo(b, a) })
	}
}

func (s *Server) answerSTUN(req []byte, addr net.Addr, send func([]byte, net.Addr)) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return
	}
	if !s.stunLim.allow(ua.AddrPort().Addr().Unmap(), time.Now()) {
		s.m.stunRequests.WithLabelValues("rate_limited").Inc()
		return
	}
	resp, ok := stunResponse(req, ua)
	if !ok {
		s.m.stunRequests.WithLabelValues("invalid").Inc()
		return
	}
	s.m.stunRequests.WithLabelValues("ok").Inc()
	send(resp, addr)
}
