package relayd

import (
	"context"
	"crypto/rand"
	"errors"
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

// fastState is one client's fast path. session and challenge never change;
// candidate and addr are written by the fast-path loop and the client's
// reader, read per packet.
type fastState struct {
	session   [relayproto.SessionLen]byte
	challenge [relayproto.ChallengeLen]byte
	candidate atomic.Pointer[netip.AddrPort] // last Bind source, not yet proven
	addr      atomic.Pointer[netip.AddrPort] // validated: data goes here
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
// relay has no fast-path socket).
func (cl *client) startFastPath() {
	s := cl.s
	if s.fast == nil {
		cl.enqueueCtrl(relayproto.FrameFastPathOffer, (&relayproto.FastPathOffer{}).Append(nil))
		return
	}
	fs := cl.fast.Load()
	if fs == nil {
		fs = &fastState{}
		rand.Read(fs.session[:])
		rand.Read(fs.challenge[:])
		s.mu.Lock()
		s.mu.sessions[fs.session] = cl
		s.mu.Unlock()
		cl.fast.Store(fs)
	}
	o := relayproto.FastPathOffer{Port: uint16(s.fast.LocalAddr().(*net.UDPAddr).Port), Session: fs.session}
	cl.enqueueCtrl(relayproto.FrameFastPathOffer, o.Append(nil))
}

// confirmFastPath validates the candidate address with the echoed challenge.
func (cl *client) confirmFastPath(body []byte) error {
	ch, err := relayproto.ParseChallenge(body)
	if err != nil {
		return cl.badFrame(err)
	}
	fs := cl.fast.Load()
	if fs == nil || ch != fs.challenge {
		return nil // stale or wrong: the client will time out and stay on QUIC
	}
	cand := fs.candidate.Load()
	if cand == nil {
		return nil
	}
	fs.addr.Store(cand)
	cl.enqueueCtrl(relayproto.FrameFastPathReady, nil)
	return nil
}

// fastBufPool holds scratch buffers for fast-path writes.
var fastBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// sendFast writes a FastRecv datagram to addr.
func (s *Server) sendFast(addr netip.AddrPort, src key.NodePublic, payload []byte) error {
	bp := fastBufPool.Get().(*[]byte)
	b := relayproto.AppendFastRecv((*bp)[:0], src, payload)
	_, err := s.fast.WriteToUDPAddrPort(b, addr)
	*bp = b
	fastBufPool.Put(bp)
	return err
}

// serveFast is the fast-path loop.
func (s *Server) serveFast(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { s.fast.Close() })
	defer stop()
	buf := make([]byte, 1<<16)
	for {
		n, from, err := s.fast.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		fd, err := relayproto.ParseFast(buf[:n])
		if err != nil {
			s.m.badFrames.WithLabelValues(relayproto.BadFrameReason(err)).Inc()
			continue // connectionless: count and ignore
		}
		s.mu.RLock()
		cl := s.mu.sessions[fd.Session]
		s.mu.RUnlock()
		if cl == nil {
			s.m.dropFastUnvalidated.Inc()
			continue
		}
		fs := cl.fast.Load()
		switch fd.Kind {
		case relayproto.FastBind:
			from := from
			fs.candidate.Store(&from)
			var ch [1 + relayproto.SessionLen + relayproto.ChallengeLen]byte
			ch[0] = relayproto.FastChallenge
			copy(ch[1:], fs.session[:])
			copy(ch[1+relayproto.SessionLen:], fs.challenge[:])
			s.fast.WriteToUDPAddrPort(ch[:], from)
		case relayproto.FastSend:
			if a := fs.addr.Load(); a == nil || *a != from {
				s.m.dropFastUnvalidated.Inc()
				continue
			}
			s.forwardFast(cl, fd.Key, fd.Payload)
		default:
			s.m.badFrames.WithLabelValues("unexpected").Inc()
		}
	}
}

// forwardFast routes a packet that arrived on the fast path. payload is
// only valid during the call.
func (s *Server) forwardFast(src *client, dstKey key.NodePublic, payload []byte) {
	s.mu.RLock()
	dst := s.mu.clients[dstKey]
	s.mu.RUnlock()
	if dst != nil {
		if addr, ok := dst.fastAddr(); ok {
			if src.lim != nil && !src.lim.allow(len(payload), time.Now()) {
				s.m.drops.WithLabelValues(dropRateLimited).Inc()
				return
			}
			dst.noteSender(src)
			if err := s.sendFast(addr, src.key, payload); err != nil {
				s.m.drops.WithLabelValues(dropWriteError).Inc()
				return
			}
			s.m.fwdFastPkts.Inc()
			s.m.fwdFastBytes.Add(float64(len(payload)))
			return
		}
	}
	// Everything else takes the normal path, which keeps the payload.
	s.forward(src, dstKey, dst, append([]byte(nil), payload...), false)
}
