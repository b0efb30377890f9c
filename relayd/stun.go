package relayd

import (
	"context"
	"net"

	"github.com/pion/stun/v3"
)

// stunMaxPacket bounds a STUN request we read; Binding requests are 20
// bytes plus a few attributes, and anything past 1500 is not ours.
const stunMaxPacket = 1500

// stunResponse answers a STUN Binding request from `from` with its
// XOR-MAPPED-ADDRESS, or reports false for anything else. It never panics
// on any input (FuzzSTUN).
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
	resp, err := stun.Build(
		stun.NewTransactionIDSetter(m.TransactionID),
		stun.BindingSuccess,
		&stun.XORMappedAddress{IP: from.IP, Port: from.Port},
		stun.NewSoftware("wiremesh-relayd"),
		stun.Fingerprint,
	)
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
	resp, ok := stunResponse(req, ua)
	if !ok {
		s.m.stunRequests.WithLabelValues("invalid").Inc()
		return
	}
	s.m.stunRequests.WithLabelValues("ok").Inc()
	send(resp, addr)
}
