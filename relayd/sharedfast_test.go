package relayd_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayd"
	"github.com/wiremesh/wiremesh/relayd/relaytest"
	"github.com/wiremesh/wiremesh/relayproto"
)

// sharedUDP is a relayclient.SharedSocket over a plain UDP socket: what
// meshnode's bind does, without wireguard-go.
type sharedUDP struct {
	u  *net.UDPConn
	mu sync.Mutex
	fn map[netip.AddrPort]func([]byte)
}

func newSharedUDP(t *testing.T) *sharedUDP {
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &sharedUDP{u: u, fn: map[netip.AddrPort]func([]byte){}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<16)
		for {
			n, src, err := u.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
			s.mu.Lock()
			fn := s.fn[src]
			s.mu.Unlock()
			if fn != nil {
				fn(buf[:n])
			}
		}
	}()
	t.Cleanup(func() { u.Close(); <-done })
	return s
}

func (s *sharedUDP) WriteFast(d []byte, dst netip.AddrPort) error {
	_, err := s.u.WriteToUDPAddrPort(d, dst)
	return err
}

func (s *sharedUDP) ClaimFast(src netip.AddrPort, fn func([]byte)) (any, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fn[src] = fn
	return "tag", func() { s.mu.Lock(); delete(s.fn, src); s.mu.Unlock() }, nil
}

func (s *sharedUDP) claimed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fn)
}

type refusingShared struct{}

func (refusingShared) WriteFast([]byte, netip.AddrPort) error { return errors.New("no socket") }
func (refusingShared) ClaimFast(netip.AddrPort, func([]byte)) (any, func(), error) {
	return nil, nil, errors.New("no socket")
}

// TestFastPathSharedSocket runs the fast path over a socket the client
// does not own (relayclient.Config.Shared): the bind and challenge go
// from that socket, the owner can send FastSend datagrams itself with the
// published route, and what it passes on (FastRecv) reaches the handler.
func TestFastPathSharedSocket(t *testing.T) {
	r := relaytest.Start(t, func(c *relayd.Config) { c.ListenFast = "127.0.0.1:0" })
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	sh := newSharedUDP(t)
	ka, a, sa := dial(t, r, true, func(c *relayclient.Config) { c.Shared = sh })
	kb, b, sb := dial(t, r, true, nil)
	for _, c := range []*relayclient.Conn{a, b} {
		if err := c.EnableFastPath(ctx); err != nil {
			t.Fatalf("enable fast path: %v", err)
		}
	}
	fr := a.FastRoute()
	// The offered port is this client's (a socket per client on the
	// relay), on the fast-path listen address.
	if fr == nil || fr.Tag != "tag" || fr.Addr.Addr() != netip.MustParseAddr("127.0.0.1") || fr.Addr.Port() == 0 {
		t.Fatalf("fast route = %+v, want the relay's fast-path address with the claim's tag", fr)
	}
	if b.FastRoute() != nil {
		t.Fatal("own-socket fast path published a shared route")
	}
	// The connection's own send goes over the shared socket.
	sendUntil(t, sb, func() { a.Send(kb.Public(), []byte("via conn")) }, func() bool { return len(sb.pkts) > 0 })
	// The owner's own FastSend with the published session is accepted:
	// it comes from the confirmed address.
	payload := bytes.Repeat([]byte{0x5a}, 1280)
	d := relayproto.AppendFastSend(nil, fr.Session, kb.Public(), payload)
	sendUntil(t, sb, func() { sh.WriteFast(d, fr.Addr) }, func() bool {
		for _, p := range sb.pkts {
			if p.Src == ka.Public() && bytes.Equal(p.Payload, payload) {
				return true
			}
		}
		return false
	})
	// The relay delivers to a over the shared socket (FastRecv), and the
	// claim hands what the owner passes on to the handler.
	sendUntil(t, sa, func() { b.Send(ka.Public(), []byte("to a")) }, func() bool {
		return len(sa.pkts) > 0 && sa.pkts[0].Src == kb.Public() && string(sa.pkts[0].Payload) == "to a"
	})
	a.Close()
	waitUntil(t, "claim released on close", func() bool { return sh.claimed() == 0 })
}

// TestFastPathSharedRefused: an owner that cannot share (no socket open)
// makes the fast path open a socket of its own.
func TestFastPathSharedRefused(t *testing.T) {
	r := relaytest.Start(t, func(c *relayd.Config) { c.ListenFast = "127.0.0.1:0" })
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	_, a, _ := dial(t, r, true, func(c *relayclient.Config) { c.Shared = refusingShared{} })
	kb, _, sb := dial(t, r, true, nil)
	if err := a.EnableFastPath(ctx); err != nil {
		t.Fatalf("enable fast path: %v", err)
	}
	if !a.FastPath() || a.FastRoute() != nil {
		t.Fatal("want a fast path on its own socket")
	}
	sendUntil(t, sb, func() { a.Send(kb.Public(), []byte("x")) }, func() bool { return len(sb.pkts) > 0 })
}
