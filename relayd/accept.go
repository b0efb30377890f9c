package relayd

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
)

// Admission, in order, before any per-client state exists:
//
//  1. TLS 1.3 handshake (QUIC or TCP), ALPN relayproto.ALPN.
//  2. Read one frame, at most relayproto.MaxHelloLen, within helloTimeout.
//  3. It must be a ClientHello of our version.
//  4. The token must verify (admit.Verify: present, well formed, signed by a
//     trusted key, bound to the hello's node key, for our region, in date).
//  5. The proof must open with (relay private, node public) and equal this
//     session's TLS exporter value; one that opens but differs was made for
//     another session: a replay.
//
// A refusal sends FrameReject with the reason, counts it and closes.

func (s *Server) acceptQUIC(ctx context.Context) {
	for {
		qc, err := s.ql.Accept(ctx)
		if err != nil {
			return
		}
		s.spawn(func() {
			if qc.ConnectionState().TLS.NegotiatedProtocol == relayproto.MeshALPN {
				s.serveMeshIn(ctx, qc)
				return
			}
			hctx, cancel := context.WithTimeout(ctx, helloTimeout)
			st, err := qc.AcceptStream(hctx)
			cancel()
			if err != nil {
				qc.CloseWithError(1, "no control stream")
				s.m.rejects.WithLabelValues(relayproto.ReasonTimeout.String()).Inc()
				return
			}
			s.serveConn(ctx, &quicConn{c: qc, Stream: st})
		})
	}
}

func (s *Server) acceptTCP(ctx context.Context) {
	sem := make(chan struct{}, maxPendingTCP)
	for {
		nc, err := s.tcp.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("tcp accept", "err", err)
			time.Sleep(10 * time.Millisecond) // EMFILE and friends: back off briefly
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			nc.Close() // too many handshakes in flight
			continue
		}
		s.spawn(func() {
			tc := nc.(*tls.Conn)
			hctx, cancel := context.WithTimeout(ctx, helloTimeout)
			err := tc.HandshakeContext(hctx)
			cancel()
			<-sem
			if err != nil {
				tc.Close()
				return
			}
			stop := context.AfterFunc(ctx, func() { tc.Close() })
			defer stop()
			s.serveConn(ctx, &tcpConn{tc})
		})
	}
}

// rejection is an admission failure.
type rejection struct {
	reason relayproto.Reason
	msg    string
}

func (r *rejection) Error() string { return r.reason.String() + ": " + r.msg }

// readHello reads and authenticates the client hello on c.
func (s *Server) readHello(c conn) (relayproto.ClientHello, *rejection) {
	c.setReadDeadline(time.Now().Add(helloTimeout))
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
	if _, err := admit.Verify(h.Token, *s.trusted.Load(), h.Node, s.cfg.Region, s.cfg.Now()); err != nil {
		return &rejection{relayproto.ReasonFromLabel(admit.Reason(err)), err.Error()}
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

func (s *Server) reject(c conn, rj *rejection) {
	s.m.rejects.WithLabelValues(rj.reason.String()).Inc()
	s.log.Debug("rejected client", "addr", c.remoteAddr().String(), "reason", rj.reason.String(), "err", rj.msg)
	body := (&relayproto.Reject{Reason: rj.reason, Message: rj.msg}).Append(nil)
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

// serveConn admits c and serves it until it closes.
func (s *Server) serveConn(ctx context.Context, c conn) {
	if s.draining.Load() {
		s.reject(c, &rejection{relayproto.ReasonDraining, "relay is restarting"})
		return
	}
	h, rj := s.readHello(c)
	if rj != nil {
		s.reject(c, rj)
		return
	}
	cl := s.register(c, h)
	s.m.connects.WithLabelValues(c.transport()).Inc()
	s.m.clients.WithLabelValues(c.transport()).Inc()
	defer s.m.clients.WithLabelValues(c.transport()).Dec()
	cl.run(ctx)
	s.unregister(cl)
}
