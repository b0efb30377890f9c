package relayd

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
)

// Admission, in order, before any per-client state exists:
//
//  1. TLS 1.3 handshake (QUIC or TCP), ALPN relayproto.ALPN.
//  2. Read one frame, at most relayproto.MaxHelloLen, within Config.HelloTimeout.
//  3. It must be a ClientHello of our version.
//  4. The token must verify (admit.Verify: present, well formed, signed by a
//     trusted key, bound to the hello's node key, for our region, in date).
//  5. The proof must open with (relay private, node public) and equal this
//     session's TLS exporter value; one that opens but differs was made for
//     another session: a replay.
//
// A refusal sends FrameReject with the reason, counts it and closes.

// Deadlines, per stage, from the moment a connection exists for us:
//
//	QUIC: handshake within HandshakeIdleTimeout (= Config.HelloTimeout);
//	      then control stream and hello within HelloTimeout of Accept.
//	TCP:  TLS handshake within HandshakeTimeout of accept; the hello
//	      within HelloTimeout of accept.
//
// Every connection between Accept and admission holds a pending slot (see
// pending.go); QUIC handshakes still in progress are counted too, and past
// Config.RetryAbove of both, new QUIC clients must first prove their source
// address with a Retry round trip (RFC 9000 §8.1.2).

// errPendingShed is the QUIC application error code of a connection closed
// because it lost its pending slot.
const errPendingShed quic.ApplicationErrorCode = 0x2

// errTooManyHandshakes refuses a QUIC connection attempt (CONNECTION_REFUSED).
var errTooManyHandshakes = errors.New("too many QUIC handshakes in flight")

// hsSlot counts one QUIC connection from quic-go's ConnContext until it is
// accepted or dies, whichever comes first.
type hsSlot struct {
	once sync.Once
	n    *atomic.Int64
}

func (h *hsSlot) done() { h.once.Do(func() { h.n.Add(-1) }) }

type hsKey struct{}

// quicConnContext is quic.Transport.ConnContext: it bounds QUIC handshakes
// in flight at Config.MaxPending, refusing new ones past it.
func (s *Server) quicConnContext(ctx context.Context, _ *quic.ClientInfo) (context.Context, error) {
	if s.quicHandshakes.Add(1) > int64(s.cfg.MaxPending) {
		s.quicHandshakes.Add(-1)
		s.m.pendingDropped.WithLabelValues(shedHandshakes).Inc()
		return nil, errTooManyHandshakes
	}
	h := &hsSlot{n: &s.quicHandshakes}
	context.AfterFunc(ctx, h.done)
	return context.WithValue(ctx, hsKey{}, h), nil
}

// quicVerifySource is quic.Transport.VerifySourceAddress: under load (at
// least Config.RetryAbove connections pending or handshaking), a client
// without a token gets a Retry and must echo it from the address it claims,
// so spoofed Initials cost the relay one stateless packet each.
func (s *Server) quicVerifySource(net.Addr) bool {
	if s.cfg.RetryAbove < 0 || s.quicHandshakes.Load()+int64(s.pending.len()) >= int64(s.cfg.RetryAbove) {
		s.m.quicRetries.Inc()
		return true
	}
	return false
}

func (s *Server) acceptQUIC(ctx context.Context) {
	for {
		qc, err := s.ql.Accept(ctx)
		if err != nil {
			return
		}
		if h, ok := qc.Context().Value(hsKey{}).(*hsSlot); ok {
			h.done()
		}
		deadline := time.Now().Add(s.cfg.HelloTimeout)
		pc := s.pending.add(qc.RemoteAddr(), func() {
			qc.CloseWithError(errPendingShed, "too many pending connections")
		})
		s.spawn(func() {
			defer s.pending.release(pc)
			if qc.ConnectionState().TLS.NegotiatedProtocol == relayproto.MeshALPN {
				s.serveMeshIn(ctx, qc, pc, deadline)
				return
			}
			hctx, cancel := context.WithDeadline(ctx, deadline)
			st, err := qc.AcceptStream(hctx)
			cancel()
			if err != nil {
				qc.CloseWithError(1, "no control stream")
				s.m.rejects.WithLabelValues(relayproto.ReasonTimeout.String()).Inc()
				return
			}
			s.serveConn(ctx, &quicConn{c: qc, Stream: st}, pc, deadline)
		})
	}
}

func (s *Server) acceptTCP(ctx context.Context) {
	for {
		nc, err := s.tcp.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("tcp accept", "err", err)
			select { // EMFILE and friends: back off briefly
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		now := time.Now()
		deadline := now.Add(s.cfg.HelloTimeout)
		// The handshake gets the first stage; Close is safe from any goroutine.
		nc.SetDeadline(now.Add(min(s.cfg.HandshakeTimeout, s.cfg.HelloTimeout)))
		pc := s.pending.add(nc.RemoteAddr(), func() { nc.Close() })
		s.spawn(func() {
			defer s.pending.release(pc)
			tc := nc.(*tls.Conn)
			if err := tc.HandshakeContext(ctx); err != nil {
				tc.Close()
				if s.pending.holds(pc) { // a shed connection is already counted
					s.m.pendingDropped.WithLabelValues(shedHandshakeFailed).Inc()
				}
				return
			}
			tc.SetDeadline(time.Time{})
			stop := context.AfterFunc(ctx, func() { tc.Close() })
			defer stop()
			s.serveConn(ctx, &tcpConn{tc}, pc, deadline)
		})
	}
}

// rejection is an admission failure.
type rejection struct {
	reason relayproto.Reason
	msg    string
}

func (r *rejection) Error() string { return r.reason.String() + ": " + r.msg }

// readHello reads and authenticates the client hello on c, which must
// arrive by deadline.
func (s *Server) readHello(c conn, deadline time.Time) (relayproto.ClientHello, *rejection) {
	c.setReadDeadline(deadline)
	r := relayproto.NewReader(c, relayproto.MaxHelloLen)
	typ, body, err := r.Next(nil)
	if err != nil {
		if errors.Is(err, relayproto.ErrTruncated) || errors.Is(err, relayproto.ErrOversized) || errors.Is(err, relayproto.ErrUnknown) {
			s.m.badFrames.WithLabelValues(relayproto.BadFrameReason(err)).Inc()
			return relayproto.ClientHello{}, &rejection{relayproto.ReasonBadHello, err.Error()}
		}
		return relayproto.ClientHello{}, &rejection{relayproto.ReasonTimeout, "no hello: " + err.Error()}
	}
	if typ != relayproto.FrameClientHello {
		s.m.badFrames.WithLabelValues("unexpected").Inc()
		return relayproto.ClientHello{}, &rejection{relayproto.ReasonBadHello, "first frame is " + typ.String()}
	}
	h, err := relayproto.ParseClientHello(body)
	if err != nil {
		s.m.badFrames.WithLabelValues(relayproto.BadFrameReason(err)).Inc()
		return h, &rejection{relayproto.ReasonBadHello, err.Error()}
	}
	exp, err := c.exporter(relayproto.ExporterLabel)
	if err != nil {
		return h, &rejection{relayproto.ReasonOther, "tls exporter: " + err.Error()}
	}
	if rj := s.authenticate(h, exp); rj != nil {
		return h, rj
	}
	return h, nil
}

// authenticate checks a parsed hello against this session's exporter value.
// It allocates nothing that outlives the call.
func (s *Server) authenticate(h relayproto.ClientHello, exporter []byte) *rejection {
	if h.Version != relayproto.Version {
		return &rejection{relayproto.ReasonVersion, fmt.Sprintf("protocol version %d, relay speaks %d", h.Version, relayproto.Version)}
	}
	now := s.cfg.Now()
	if _, err := admit.Verify(h.Token, *s.trusted.Load(), h.Node, s.cfg.Region, now); err != nil {
		return &rejection{relayproto.ReasonFromLabel(admit.Reason(err)), err.Error()}
	}
	if s.revoked(h.Node, now) {
		return revokedRejection()
	}
	plain, err := key.Open(s.priv, h.Node, h.Proof[:])
	if err != nil {
		return &rejection{relayproto.ReasonBadProof, "proof of possession does not open with the node key"}
	}
	if subtle.ConstantTimeCompare(plain, exporter) != 1 {
		return &rejection{relayproto.ReasonReplay, "proof of possession is for another TLS session"}
	}
	return nil
}

// rejectWriteTimeout bounds writing a Reject: a client that does not read
// it loses nothing worth waiting for.
const rejectWriteTimeout = time.Second

func (s *Server) reject(c conn, rj *rejection) {
	s.m.rejects.WithLabelValues(rj.reason.String()).Inc()
	s.log.Debug("rejected client", "addr", c.remoteAddr().String(), "reason", rj.reason.String(), "err", rj.msg)
	body := (&relayproto.Reject{Reason: rj.reason, Message: rj.msg}).Append(nil)
	c.setWriteDeadline(time.Now().Add(rejectWriteTimeout))
	c.Write(relayproto.AppendFrame(nil, relayproto.FrameReject, body))
	if qc, ok := c.(*quicConn); ok {
		qc.Stream.Close()
		// Give the reject frame a moment to leave before the close
		// frame overtakes it; bounded, and only on the refusal path.
		select {
		case <-qc.c.Context().Done():
		case <-time.After(100 * time.Millisecond):
		}
		qc.c.CloseWithError(quic.ApplicationErrorCode(rj.reason)+0x100, rj.reason.String())
		return
	}
	c.close(rj.reason.String())
}

// serveConn admits c and serves it until it closes. pc is c's pending
// slot: it is given back once the hello is accepted.
func (s *Server) serveConn(ctx context.Context, c conn, pc *pendingConn, deadline time.Time) {
	if s.draining.Load() {
		s.reject(c, &rejection{relayproto.ReasonDraining, "relay is restarting"})
		return
	}
	h, rj := s.readHello(c, deadline)
	if rj != nil {
		s.reject(c, rj)
		return
	}
	c.setReadDeadline(time.Time{})
	s.pending.release(pc)
	cl := s.register(c, h)
	s.m.connects.WithLabelValues(c.transport()).Inc()
	s.m.clients.WithLabelValues(c.transport()).Inc()
	defer s.m.clients.WithLabelValues(c.transport()).Dec()
	cl.run(ctx)
	s.unregister(cl)
}
