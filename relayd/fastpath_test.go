package relayd_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/key"

	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayd"
	"github.com/wiremesh/wiremesh/relayd/relaytest"
	"github.com/wiremesh/wiremesh/relayproto"
)

func TestFastPath(t *testing.T) {
	// The wildcard listen address makes dual-stack sockets, which the
	// batched reads and writes must handle as well as plain IPv4 ones.
	for _, listen := range []string{"127.0.0.1:0", ":0"} {
		for _, shared := range []bool{false, true} {
			t.Run(listen+map[bool]string{false: " own socket per client", true: " shared socket"}[shared], func(t *testing.T) {
				testFastPathListen(t, listen, shared)
			})
		}
	}
}

func testFastPathListen(t *testing.T, listen string, shared bool) {
	r := relaytest.Start(t, func(c *relayd.Config) { c.ListenFast = listen; c.FastShared = shared })
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	ka, a, sa := dial(t, r, true, nil)
	kb, b, sb := dial(t, r, true, nil)
	kc, _, sc := dial(t, r, true, nil) // stays on QUIC
	for _, c := range []*relayclient.Conn{a, b} {
		if err := c.EnableFastPath(ctx); err != nil {
			t.Fatalf("enable fast path: %v", err)
		}
		if !c.FastPath() {
			t.Fatal("fast path not reported up")
		}
	}
	payload := bytes.Repeat([]byte{0x5a}, 1280)
	// fast → fast
	sendUntil(t, sb, func() { a.Send(kb.Public(), payload) }, func() bool { return len(sb.pkts) > 0 })
	sb.mu.Lock()
	if p := sb.pkts[0]; p.Src != ka.Public() || !bytes.Equal(p.Payload, payload) {
		t.Fatalf("b got %d bytes from %v", len(p.Payload), p.Src)
	}
	sb.mu.Unlock()
	if counter(t, r.Registry, "relayd_forwarded_packets_total", "mode", "fastpath") < 1 {
		t.Fatal("fast-path forwarding not counted")
	}
	// fast → QUIC-only peer, and QUIC-only peer → fast peer.
	sendUntil(t, sc, func() { a.Send(kc.Public(), []byte("to c")) }, func() bool { return len(sc.pkts) > 0 })
	_, cconn, _ := dial(t, r, true, nil)
	sendUntil(t, sa, func() { cconn.Send(ka.Public(), []byte("to a")) }, func() bool { return len(sa.pkts) > 0 })

	// A datagram with an unknown session is dropped and counted.
	before := counter(t, r.Registry, "relayd_dropped_packets_total", "reason", "fastpath_unvalidated")
	u, err := net.Dial("udp", r.Server.FastAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.Write(relayproto.AppendFastSend(nil, [relayproto.SessionLen]byte{1, 2, 3}, kb.Public(), []byte("forged")))
	u.Write([]byte{0x7f, 1, 2}) // garbage
	waitUntil(t, "forged datagram counted", func() bool {
		return counter(t, r.Registry, "relayd_dropped_packets_total", "reason", "fastpath_unvalidated") == before+1 &&
			counter(t, r.Registry, "relayd_bad_frames_total", "reason", "unknown") >= 1
	})
	sb.mu.Lock()
	for _, p := range sb.pkts {
		if string(p.Payload) == "forged" {
			t.Fatal("forged fast-path packet delivered")
		}
	}
	sb.mu.Unlock()
}

func TestFastPathUnavailable(t *testing.T) {
	r := relaytest.Start(t, nil)
	_, a, _ := dial(t, r, true, nil)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	if err := a.EnableFastPath(ctx); !errors.Is(err, relayclient.ErrNoFastPath) {
		t.Fatalf("err = %v, want ErrNoFastPath", err)
	}
	// The connection still works.
	kb, _, sb := dial(t, r, true, nil)
	sendUntil(t, sb, func() { a.Send(kb.Public(), []byte("x")) }, func() bool { return len(sb.pkts) > 0 })
}

// rawSession is a hand-driven admitted client: its control stream, for
// fast-path frames the test builds itself.
type rawSession struct {
	t   *testing.T
	st  io.ReadWriter
	r   *relayproto.Reader
	key key.NodePrivate
}

func rawAdmit(t *testing.T, r *relaytest.Relay) *rawSession {
	t.Helper()
	nk := key.NewNode()
	st, closeFn, err := helloStream(t, r, func(exp []byte) relayproto.ClientHello {
		h := relayproto.ClientHello{Version: relayproto.Version, Node: nk.Public(), Token: r.Token(nk.Public())}
		copy(h.Proof[:], key.Seal(nk, r.Server.PublicKey(), exp))
		return h
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeFn)
	rs := &rawSession{t: t, st: st, r: relayproto.NewReader(st, relayproto.MaxBodyLen), key: nk}
	rs.await(relayproto.FrameServerHello)
	return rs
}

// await reads frames until one of type want arrives and returns its body.
func (rs *rawSession) await(want relayproto.FrameType) []byte {
	rs.t.Helper()
	for {
		typ, body, err := rs.r.Next(nil)
		if err != nil {
			rs.t.Fatalf("waiting for %s: %v", want, err)
		}
		if typ == want {
			return bytes.Clone(body)
		}
	}
}

func (rs *rawSession) send(typ relayproto.FrameType, body []byte) {
	if _, err := rs.st.Write(relayproto.AppendFrame(nil, typ, body)); err != nil {
		rs.t.Fatal(err)
	}
}

// udpFrom opens a UDP socket on ip connected to the relay's fast-path port.
func udpFrom(t *testing.T, ip string, port uint16) *net.UDPConn {
	t.Helper()
	u, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

// bindRaw sends Binds from u until a challenge for session comes back.
func bindRaw(t *testing.T, u *net.UDPConn, session [relayproto.SessionLen]byte) [relayproto.ChallengeLen]byte {
	t.Helper()
	buf := make([]byte, 2048)
	deadline := time.Now().Add(testWait)
	for time.Now().Before(deadline) {
		u.Write(append([]byte{relayproto.FastBind}, session[:]...))
		u.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := u.Read(buf)
		if err != nil {
			continue
		}
		if fd, err := relayproto.ParseFast(buf[:n]); err == nil && fd.Kind == relayproto.FastChallenge && fd.Session == session {
			return fd.Challenge
		}
	}
	t.Fatal("no challenge")
	return [relayproto.ChallengeLen]byte{}
}

// recvFast reports whether u receives a FastRecv carrying payload within
// a short wait, sending with send between reads.
func recvFast(u *net.UDPConn, payload []byte, send func(), tries int) bool {
	buf := make([]byte, 2048)
	for range tries {
		send()
		u.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		for {
			n, err := u.Read(buf)
			if err != nil {
				break
			}
			if fd, err := relayproto.ParseFast(buf[:n]); err == nil && fd.Kind == relayproto.FastRecv && bytes.Equal(fd.Payload, payload) {
				return true
			}
		}
	}
	return false
}

// TestFastPathHijackRace: an attacker who learned a victim's session id
// (it travels in cleartext) and races a Bind from its own address gets a
// challenge for its own address only; the victim's Confirm validates the
// victim's address, so the victim's packets never go to the attacker.
// Before the fix the challenge was per session and the attacker's Bind
// became the address the victim's Confirm validated.
func TestFastPathHijackRace(t *testing.T) {
	r := relaytest.Start(t, func(c *relayd.Config) { c.ListenFast = "127.0.0.1:0" })
	victim := rawAdmit(t, r)
	victim.send(relayproto.FrameFastPathRequest, nil)
	offer, err := relayproto.ParseFastPathOffer(victim.await(relayproto.FrameFastPathOffer))
	if err != nil {
		t.Fatal(err)
	}
	vu := udpFrom(t, "127.0.0.1", offer.Port)
	vch := bindRaw(t, vu, offer.Session)
	au := udpFrom(t, "127.0.0.2", offer.Port)
	ach := bindRaw(t, au, offer.Session) // the race: the attacker's Bind comes last
	if ach == vch {
		t.Fatal("attacker got the victim's challenge")
	}
	victim.send(relayproto.FrameFastPathConfirm, vch[:])
	victim.await(relayproto.FrameFastPathReady)

	ks, sender, _ := dial(t, r, true, nil)
	payload := []byte("for the victim only")
	send := func() { sender.Send(victim.key.Public(), payload) }
	if !recvFast(vu, payload, send, 100) {
		t.Fatal("victim did not get its packet over the fast path")
	}
	if recvFast(au, payload, send, 5) {
		t.Fatal("victim's packet delivered to the attacker")
	}
	// The attacker cannot move the path with data from its address either.
	au.Write(relayproto.AppendFastSend(nil, offer.Session, ks.Public(), []byte("forged")))
	if !recvFast(vu, payload, send, 100) {
		t.Fatal("victim lost its fast path")
	}
}

// TestFastPathReconfirmOnAddressChange: data from a new address with the
// session is not accepted, but earns a challenge there; confirming it (as a
// client whose NAT rebound does) moves the fast path to the new address.
func TestFastPathReconfirmOnAddressChange(t *testing.T) {
	r := relaytest.Start(t, func(c *relayd.Config) { c.ListenFast = "127.0.0.1:0" })
	v := rawAdmit(t, r)
	v.send(relayproto.FrameFastPathRequest, nil)
	offer, err := relayproto.ParseFastPathOffer(v.await(relayproto.FrameFastPathOffer))
	if err != nil {
		t.Fatal(err)
	}
	u1 := udpFrom(t, "127.0.0.1", offer.Port)
	ch := bindRaw(t, u1, offer.Session)
	v.send(relayproto.FrameFastPathConfirm, ch[:])
	v.await(relayproto.FrameFastPathReady)

	u2 := udpFrom(t, "127.0.0.1", offer.Port) // the NAT moved us to a new port
	kb, _, sb := dial(t, r, true, nil)
	u2.Write(relayproto.AppendFastSend(nil, offer.Session, kb.Public(), []byte("from the new address")))
	buf := make([]byte, 2048)
	u2.SetReadDeadline(time.Now().Add(testWait))
	n, err := u2.Read(buf)
	if err != nil {
		t.Fatalf("no challenge at the new address: %v", err)
	}
	fd, err := relayproto.ParseFast(buf[:n])
	if err != nil || fd.Kind != relayproto.FastChallenge {
		t.Fatalf("got %v %v, want a challenge", fd.Kind, err)
	}
	v.send(relayproto.FrameFastPathConfirm, fd.Challenge[:])
	v.await(relayproto.FrameFastPathReady)
	sendUntil(t, sb, func() {
		u2.Write(relayproto.AppendFastSend(nil, offer.Session, kb.Public(), []byte("moved")))
	}, func() bool {
		for _, p := range sb.pkts {
			if string(p.Payload) == "moved" {
				return true
			}
		}
		return false
	})
	for _, p := range sb.pkts {
		if string(p.Payload) == "from the new address" {
			t.Fatal("data from an unconfirmed address was forwarded")
		}
	}
}
