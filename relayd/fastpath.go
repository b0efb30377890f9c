package relayd

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
)

// The UDP fast path (see relayproto/fastpath.go for the exchange). One
// goroutine serves the fast-path socket: read, look up the session, check
// the source address, write to the destination's validated address — the
// same work as a plain UDP forwarder, plus a map lookup. Destinations
// without a fast path get the packet through their normal queue.
//
// Authentication. The session id is not a secret: it travels in cleartext
// in every Bind and FastSend datagram. So:
//
//   - the challenge the relay sends to a Bind's source is
//     HMAC-SHA256(relay secret, session ‖ source address)[:8], and a
//     Confirm validates only the candidate address whose challenge it
//     echoes. Someone who saw the session id and races a Bind from its own
//     address receives the challenge for its own address, which it cannot
//     confirm (that takes the client's TLS session); the victim's Confirm
//     still validates the victim's address.
//   - data is accepted only from the validated address. A datagram with a
//     valid session from another address is dropped and answered, at most
//     fastChallengeRate times a second per session, with a challenge for
//     that address: if the client's NAT moved it, the client sees the
//     challenge on its socket and confirms it over TLS (re-confirmation on
//     address change); anyone else cannot.
//
// Per-packet MACs (a per-session key and a truncated tag) would also stop
// a spoofer who can forge the validated source address exactly, but that
// attacker gains nothing from it: WireGuard authenticates every payload end
// to end, so forged packets die at the peer. The address check costs one
// comparison per packet; BenchmarkFastPathAuth measures what a MAC would
// add (BENCHMARKS.md).

// Fast-path limits.
const (
	// fastCandidates bounds the Bind sources remembered per session while
	// waiting for a Confirm: the client's own plus a few racing ones.
	fastCandidates = 4
	// fastChallengeRate and fastChallengeBurst bound challenges sent per
	// session, per second: a Bind is 9 bytes and a challenge 17, so this
	// caps what a spoofed Bind flood can reflect at 170 B/s per session.
	fastChallengeRate  = 10
	fastChallengeBurst = 10
)

// fastState is one client's fast path. session never changes; the
// candidates are guarded by mu; addr is read per packet.
type fastState struct {
	session [relayproto.SessionLen]byte
	// conn is the client's own fast-path socket (see startFastPath), or
	// nil when it shares the relay's --fastpath-listen socket.
	conn *net.UDPConn
	bc   batchConn                      // batches on conn (or on the shared socket)
	addr atomic.Pointer[netip.AddrPort] // validated: data goes here
	lim  *limiter                       // challenges sent (count, not bytes)

	mu struct {
		sync.Mutex
		cands [fastCandidates]netip.AddrPort // recent Bind sources, not yet proven
		next  int
	}
}

// addCandidate remembers a, replacing the oldest candidate when full.
func (fs *fastState) addCandidate(a netip.AddrPort) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, c := range fs.mu.cands {
		if c == a {
			return
		}
	}
	fs.mu.cands[fs.mu.next] = a
	fs.mu.next = (fs.mu.next + 1) % fastCandidates
}

// fastChallenge is the challenge for session at addr.
func (s *Server) fastChallenge(session [relayproto.SessionLen]byte, addr netip.AddrPort) [relayproto.ChallengeLen]byte {
	h := hmac.New(sha256.New, s.fastKey[:])
	h.Write([]byte("wiremesh fastpath challenge v1"))
	h.Write(session[:])
	ip := addr.Addr().As16()
	h.Write(ip[:])
	h.Write([]byte{byte(addr.Port() >> 8), byte(addr.Port())})
	var out [relayproto.ChallengeLen]byte
	copy(out[:], h.Sum(nil))
	return out
}

// fastAddr reports whether cl has a validated fast path, and where.
func (cl *client) fastAddr() (netip.AddrPort, bool) {
	fs := cl.fast.Load()
	if fs == nil {
		return netip.AddrPort{}, false
	}
	a := fs.addr.Load()
	if a == nil {
		return netip.AddrPort{}, false
	}
	return *a, true
}

// startFastPath answers a FastPathRequest with an offer (port 0 when the
// relay has no fast path).
//
// Each client gets its own UDP socket, on the --fastpath-listen IP and an
// ephemeral port, served by its own goroutine. That is what makes the fast
// path fair: a client flooding its socket overflows only its own kernel
// buffer, and Go's scheduler shares the CPU between the clients' loops,
// where one shared socket would drop everyone's packets alike. The shared
// --fastpath-listen socket still accepts Binds and data for relays whose
// firewall only opens that one port (Config.FastShared).
func (cl *client) startFastPath() {
	s := cl.s
	if s.fast == nil {
		cl.enqueueCtrl(relayproto.FrameFastPathOffer, (&relayproto.FastPathOffer{}).Append(nil))
		return
	}
	fs := cl.fast.Load()
	if fs == nil {
		fs = &fastState{lim: newLimiter(fastChallengeRate, fastChallengeBurst, time.Now()), bc: s.fastBC}
		rand.Read(fs.session[:])
		if !s.cfg.FastShared {
			ip := s.fast.LocalAddr().(*net.UDPAddr).IP
			c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
			if err != nil {
				s.log.Warn("fast path socket", "err", err)
				cl.enqueueCtrl(relayproto.FrameFastPathOffer, (&relayproto.FastPathOffer{}).Append(nil))
				return
			}
			c.SetReadBuffer(fastClientBuffer)
			c.SetWriteBuffer(fastClientBuffer)
			fs.conn, fs.bc = c, newBatchConn(c)
		}
		// cl.fast first: handleFast looks the session up and then
		// dereferences cl.fast.
		cl.fast.Store(fs)
		s.mu.Lock()
		s.mu.sessions[fs.session] = cl
		s.mu.Unlock()
		if fs.conn != nil {
			s.spawn(func() { s.serveFastConn(fs.conn, fs.bc, cl.done) })
		}
	}
	port := s.fast.LocalAddr().(*net.UDPAddr).Port
	if fs.conn != nil {
		port = fs.conn.LocalAddr().(*net.UDPAddr).Port
	}
	o := relayproto.FastPathOffer{Port: uint16(port), Session: fs.session}
	cl.enqueueCtrl(relayproto.FrameFastPathOffer, o.Append(nil))
}

// fastClientBuffer is each per-client fast-path socket's buffer: room for
// ~1,600 full-size packets, about 16 ms at 1 Gbit/s, and only committed
// while packets actually wait. 256 KB overflowed under one TCP flow through
// the lab's relay path (16,589 UdpRcvbufErrors in a 5 s iperf3 run, each a
// TCP retransmit); at 2 MB there were none. The kernel caps it at
// net.core.rmem_max.
const fastClientBuffer = 2 << 20

// confirmFastPath validates the candidate address whose challenge the
// client echoed.
func (cl *client) confirmFastPath(body []byte) error {
	ch, err := relayproto.ParseChallenge(body)
	if err != nil {
		return cl.badFrame(err)
	}
	fs := cl.fast.Load()
	if fs == nil {
		cl.s.m.fastConfirms.WithLabelValues("mismatch").Inc()
		return nil
	}
	fs.mu.Lock()
	var found *netip.AddrPort
	for _, c := range fs.mu.cands {
		if want := cl.s.fastChallenge(fs.session, c); c.IsValid() && hmac.Equal(want[:], ch[:]) {
			found = &c
			fs.mu.cands = [fastCandidates]netip.AddrPort{}
			break
		}
	}
	fs.mu.Unlock()
	if found == nil {
		// Stale, or for an address that is no longer a candidate: the
		// client times out (or rebinds) and stays on QUIC meanwhile.
		cl.s.m.fastConfirms.WithLabelValues("mismatch").Inc()
		return nil
	}
	fs.addr.Store(found)
	cl.s.m.fastConfirms.WithLabelValues("ok").Inc()
	cl.enqueueCtrl(relayproto.FrameFastPathReady, nil)
	return nil
}

// sendChallenge makes from a candidate of fs and sends it its challenge,
// within the session's challenge rate.
func (s *Server) sendChallenge(conn *net.UDPConn, fs *fastState, from netip.AddrPort) {
	if !fs.lim.allow(1, time.Now()) {
		s.m.fastChallenges.WithLabelValues("rate_limited").Inc()
		return
	}
	fs.addCandidate(from)
	var ch [1 + relayproto.SessionLen + relayproto.ChallengeLen]byte
	ch[0] = relayproto.FastChallenge
	copy(ch[1:], fs.session[:])
	c := s.fastChallenge(fs.session, from)
	copy(ch[1+relayproto.SessionLen:], c[:])
	conn.WriteToUDPAddrPort(ch[:], from)
	s.m.fastChallenges.WithLabelValues("sent").Inc()
}

// fastBufPool holds scratch buffers for single fast-path writes (packets
// from QUIC or TCP senders to a fast-path client).
var fastBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// sendFast writes a FastRecv datagram to dst's validated address, from the
// socket dst bound to (its own, or the shared one).
func (s *Server) sendFast(dst *client, addr netip.AddrPort, src key.NodePublic, payload []byte) error {
	conn := s.fast
	if fs := dst.fast.Load(); fs != nil && fs.conn != nil {
		conn = fs.conn
	}
	bp := fastBufPool.Get().(*[]byte)
	b := relayproto.AppendFastRecv((*bp)[:0], src, payload)
	_, err := conn.WriteToUDPAddrPort(b, addr)
	*bp = b
	fastBufPool.Put(bp)
	return err
}

// serveFast serves the shared --fastpath-listen socket.
func (s *Server) serveFast(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { s.fast.Close() })
	defer stop()
	s.fastLoop(s.fast, s.fastBC, false)
}

// serveFastConn serves one client's own fast-path socket until the client
// goes away (done) or the socket fails.
func (s *Server) serveFastConn(conn *net.UDPConn, bc batchConn, done <-chan struct{}) {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-done:
		case <-stop:
		}
		conn.Close()
	}()
	s.fastLoop(conn, bc, true)
}

// handleFast acts on one fast-path datagram that arrived on conn; packets
// it forwards over the fast path join b, written when the batch is done.
// d is rewritten in place.
func (s *Server) handleFast(conn *net.UDPConn, d []byte, from netip.AddrPort, b *fastBatch) {
	fd, err := relayproto.ParseFast(d)
	if err != nil {
		s.m.badFrames.WithLabelValues(relayproto.BadFrameReason(err)).Inc()
		return // connectionless: count and ignore
	}
	s.mu.RLock()
	cl := s.mu.sessions[fd.Session]
	s.mu.RUnlock()
	if cl == nil {
		s.m.dropFastUnvalidated.Inc()
		return
	}
	fs := cl.fast.Load()
	if fs.conn != nil && fs.conn != conn {
		s.m.dropFastUnvalidated.Inc() // a session is only valid on its own socket
		return
	}
	switch fd.Kind {
	case relayproto.FastBind:
		s.sendChallenge(conn, fs, from)
	case relayproto.FastSend:
		if a := fs.addr.Load(); a == nil || *a != from {
			s.m.dropFastUnvalidated.Inc()
			if a != nil {
				// Maybe the client's NAT moved it: let it re-confirm.
				s.sendChallenge(conn, fs, from)
			}
			return
		}
		s.forwardFast(cl, fd.Key, d, fd.Payload, b)
	default:
		s.m.badFrames.WithLabelValues("unexpected").Inc()
	}
}

// forwardFast routes a packet that arrived on the fast path as the
// FastSend datagram d (payload aliases it). A destination with a fast path
// gets it, rewritten in place into a FastRecv, in the batch b; anything
// else takes the normal path with a copy. d is only valid until b is
// flushed.
func (s *Server) forwardFast(src *client, dstKey key.NodePublic, d, payload []byte, b *fastBatch) {
	s.mu.RLock()
	dst := s.mu.clients[dstKey]
	s.mu.RUnlock()
	if dst != nil {
		if addr, ok := dst.fastAddr(); ok {
			if src.lim != nil && !src.lim.allow(len(payload), time.Now()) {
				b.limited = src
				if fs := src.fast.Load(); fs != nil && fs.conn != nil && !b.retry {
					// Its own socket: the batch waits for tokens and
					// this datagram is tried again (handleFastBatch).
					b.blocked = true
					return
				}
				s.m.drops.WithLabelValues(dropRateLimited).Inc()
				return
			}
			dst.noteSender(src)
			conn, bc := s.fast, s.fastBC
			if fs := dst.fast.Load(); fs.conn != nil {
				conn, bc = fs.conn, fs.bc
			}
			b.add(conn, bc, addr, relayproto.FastRecvInPlace(d, src.key))
			return
		}
	}
	// Everything else takes the normal path, which keeps the payload.
	s.forward(src, dstKey, append([]byte(nil), payload...), false, true)
}
