package relayd_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"github.com/wiremesh/wiremesh/internal/poll"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/metrics"
	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayd"
	"github.com/wiremesh/wiremesh/relayd/relaytest"
	"github.com/wiremesh/wiremesh/relayproto"
)

// testWait bounds every wait in these tests; it is a failure deadline,
// never a measured timing.
const testWait = 10 * time.Second

// sink collects packets and notices from a client.
type sink struct {
	mu      sync.Mutex
	pkts    []relayclient.Packet
	notices []relayclient.Notice
	ch      chan struct{} // cap 1: something arrived
}

func newSink() *sink { return &sink{ch: make(chan struct{}, 1)} }

func (s *sink) handler(p relayclient.Packet) {
	s.mu.Lock()
	p.Payload = bytes.Clone(p.Payload)
	s.pkts = append(s.pkts, p)
	s.mu.Unlock()
	s.poke()
}

func (s *sink) notice(n relayclient.Notice) {
	s.mu.Lock()
	s.notices = append(s.notices, n)
	s.mu.Unlock()
	s.poke()
}

func (s *sink) poke() {
	select {
	case s.ch <- struct{}{}:
	default:
	}
}

// waitFor polls cond each time something arrives, failing after testWait.
func (s *sink) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(testWait)
	for {
		s.mu.Lock()
		ok := cond()
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-s.ch:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func dial(t *testing.T, r *relaytest.Relay, datagrams bool, mod func(*relayclient.Config)) (key.NodePrivate, *relayclient.Conn, *sink) {
	t.Helper()
	nk := key.NewNode()
	s := newSink()
	cfg := r.ClientConfig(nk, datagrams)
	cfg.Handler = s.handler
	cfg.OnNotice = s.notice
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	c, err := relayclient.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return nk, c, s
}

// counter returns the value of a relayd_ counter or gauge series.
func counter(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			if m.Gauge != nil {
				return m.Gauge.GetValue()
			}
			if m.Histogram != nil {
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func TestForward(t *testing.T) {
	for _, tc := range []struct {
		name      string
		datagrams bool
		tcp       bool
		size      int
	}{
		{"datagram", true, false, 1280},
		{"datagram too large falls back to stream", true, false, 4000},
		{"stream", false, false, 1280},
		{"tcp", false, true, 1280},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := relaytest.Start(t, nil)
			mod := func(c *relayclient.Config) { c.DisableQUIC = tc.tcp }
			ka, a, _ := dial(t, r, tc.datagrams, mod)
			kb, b, sb := dial(t, r, tc.datagrams, mod)
			if tc.tcp && (a.Transport() != relayclient.TransportTCP || b.Transport() != relayclient.TransportTCP) {
				t.Fatalf("transports %s %s, want tcp", a.Transport(), b.Transport())
			}
			payload := make([]byte, tc.size)
			rand.Read(payload)
			// The first packet goes by key; the PeerPresent it earns lets
			// the rest go by handle. Send until 5 have arrived.
			deadline := time.Now().Add(testWait)
			for {
				if err := a.Send(kb.Public(), payload); err != nil {
					t.Fatalf("send: %v", err)
				}
				sb.mu.Lock()
				n := len(sb.pkts)
				sb.mu.Unlock()
				if n >= 5 || time.Now().After(deadline) {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			sb.waitFor(t, "packets at b", func() bool { return len(sb.pkts) >= 5 })
			sb.mu.Lock()
			p := sb.pkts[0]
			sb.mu.Unlock()
			if p.Src != ka.Public() || !bytes.Equal(p.Payload, payload) || p.Disco {
				t.Fatalf("got packet from %v (%d bytes, disco %v), want from %v", p.Src, len(p.Payload), p.Disco, ka.Public())
			}
			mode := "stream"
			if tc.datagrams && tc.size <= 1280 {
				mode = "datagram"
			}
			// Right after the handshake quic-go's datagram size estimate
			// may still be below 1313 bytes, sending a packet by stream.
			waitUntil(t, "forwarded packets counted", func() bool {
				return counter(t, r.Registry, "relayd_forwarded_packets_total", "mode", mode) >= 1 &&
					counter(t, r.Registry, "relayd_forwarded_packets_total")+
						counter(t, r.Registry, "relayd_forwarded_packets_total", "mode", "stream") >= 5
			})
			// Disco goes through its own frame type and arrives marked.
			if err := a.SendDisco(kb.Public(), []byte("disco")); err != nil {
				t.Fatal(err)
			}
			sb.waitFor(t, "disco packet", func() bool {
				for _, p := range sb.pkts {
					if p.Disco && string(p.Payload) == "disco" {
						return true
					}
				}
				return false
			})
			_ = b
		})
	}
}

func TestPeerNotices(t *testing.T) {
	r := relaytest.Start(t, nil)
	_, a, sa := dial(t, r, true, nil)
	kb, b, _ := dial(t, r, true, nil)
	ghost := key.NewNode().Public()

	a.Send(ghost, []byte("anyone?"))
	sa.waitFor(t, "peer gone (not here)", func() bool {
		for _, n := range sa.notices {
			if n.Kind == relayclient.NoticePeerGone && n.Peer == ghost && n.Gone == relayproto.PeerGoneNotHere {
				return true
			}
		}
		return false
	})
	if got := counter(t, r.Registry, "relayd_dropped_packets_total", "reason", "no_such_peer"); got != 1 {
		t.Fatalf("no_such_peer drops = %v, want 1", got)
	}
	a.Send(kb.Public(), []byte("hi"))
	sa.waitFor(t, "peer present", func() bool {
		for _, n := range sa.notices {
			if n.Kind == relayclient.NoticePeerPresent && n.Peer == kb.Public() && n.Handle != 0 {
				return true
			}
		}
		return false
	})
	b.Close()
	sa.waitFor(t, "peer gone (disconnected)", func() bool {
		for _, n := range sa.notices {
			if n.Kind == relayclient.NoticePeerGone && n.Peer == kb.Public() && n.Gone == relayproto.PeerGoneDisconnected {
				return true
			}
		}
		return false
	})
	if rtt, err := a.Ping(context.Background()); err != nil || rtt <= 0 {
		t.Fatalf("ping: %v %v", rtt, err)
	}
}

func TestDuplicateKeyReplacesOld(t *testing.T) {
	r := relaytest.Start(t, nil)
	nk := key.NewNode()
	cfg := r.ClientConfig(nk, true)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	c1, err := relayclient.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := relayclient.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	select {
	case <-c1.Done():
	case <-ctx.Done():
		t.Fatal("old connection not closed when the same key reconnected")
	}
	if n := r.Server.Clients(); n != 1 {
		t.Fatalf("clients = %d, want 1", n)
	}
}

func TestRejections(t *testing.T) {
	r := relaytest.Start(t, nil)
	other := key.NewSigning()
	now := time.Now()
	mint := func(s key.SigningPrivate, nk key.NodePublic, region string, at time.Time, life time.Duration) []byte {
		tok, err := admit.Issue(s, nk, region, at, life)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	cases := []struct {
		name   string
		token  func(nk key.NodePublic) []byte
		proof  func(nk key.NodePrivate, exporter []byte) []byte
		hello  func(h *relayproto.ClientHello)
		reason relayproto.Reason
	}{
		{name: "missing token", token: func(key.NodePublic) []byte { return nil }, reason: relayproto.ReasonTokenMissing},
		{name: "malformed token", token: func(key.NodePublic) []byte { return []byte("garbage") }, reason: relayproto.ReasonTokenMalformed},
		{name: "expired token", token: func(nk key.NodePublic) []byte {
			return mint(r.Signer, nk, relaytest.Region, now.Add(-2*time.Hour), time.Hour)
		}, reason: relayproto.ReasonTokenExpired},
		{name: "future token", token: func(nk key.NodePublic) []byte {
			return mint(r.Signer, nk, relaytest.Region, now.Add(time.Hour), time.Hour)
		}, reason: relayproto.ReasonTokenFuture},
		{name: "foreign token", token: func(nk key.NodePublic) []byte {
			return mint(other, nk, relaytest.Region, now, time.Hour)
		}, reason: relayproto.ReasonTokenForeign},
		{name: "token for another node", token: func(key.NodePublic) []byte {
			return mint(r.Signer, key.NewNode().Public(), relaytest.Region, now, time.Hour)
		}, reason: relayproto.ReasonTokenWrongNode},
		{name: "token for another region", token: func(nk key.NodePublic) []byte {
			return mint(r.Signer, nk, "zzz", now, time.Hour)
		}, reason: relayproto.ReasonTokenWrongRegion},
		{name: "tampered token", token: func(nk key.NodePublic) []byte {
			tok := mint(r.Signer, nk, relaytest.Region, now, time.Hour)
			tok[len(tok)-1] ^= 1
			return tok
		}, reason: relayproto.ReasonTokenBadSignature},
		{name: "proof sealed with another key", proof: func(_ key.NodePrivate, exp []byte) []byte {
			return key.Seal(key.NewNode(), r.Server.PublicKey(), exp)
		}, reason: relayproto.ReasonBadProof},
		{name: "garbage proof", proof: func(key.NodePrivate, []byte) []byte {
			return make([]byte, relayproto.ProofLen)
		}, reason: relayproto.ReasonBadProof},
		{name: "replayed proof from another session", proof: func(nk key.NodePrivate, _ []byte) []byte {
			other := make([]byte, relayproto.ExporterLen)
			rand.Read(other)
			return key.Seal(nk, r.Server.PublicKey(), other)
		}, reason: relayproto.ReasonReplay},
		{name: "wrong version", hello: func(h *relayproto.ClientHello) { h.Version = 99 }, reason: relayproto.ReasonVersion},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, r.Registry, "relayd_rejects_total", "reason", tc.reason.String())
			nk := key.NewNode()
			tok := r.Token(nk.Public())
			if tc.token != nil {
				tok = tc.token(nk.Public())
			}
			rj, err := rawHello(t, r, func(exp []byte) relayproto.ClientHello {
				h := relayproto.ClientHello{Version: relayproto.Version, Node: nk.Public(), Token: tok}
				proof := key.Seal(nk, r.Server.PublicKey(), exp)
				if tc.proof != nil {
					proof = tc.proof(nk, exp)
				}
				copy(h.Proof[:], proof)
				if tc.hello != nil {
					tc.hello(&h)
				}
				return h
			})
			if err != nil {
				t.Fatal(err)
			}
			if rj.Reason != tc.reason {
				t.Fatalf("rejected for %s (%q), want %s", rj.Reason, rj.Message, tc.reason)
			}
			if rj.Message == "" {
				t.Fatal("rejection carries no message")
			}
			if got := counter(t, r.Registry, "relayd_rejects_total", "reason", tc.reason.String()); got != before+1 {
				t.Fatalf("rejects{reason=%s} = %v, want %v", tc.reason, got, before+1)
			}
			if n := r.Server.Clients(); n != 0 {
				t.Fatalf("rejected hello left %d clients", n)
			}
		})
	}
	// The client library surfaces a rejection as relayproto.Reject.
	cfg := r.ClientConfig(key.NewNode(), true)
	cfg.Token = nil
	_, err := relayclient.Dial(context.Background(), cfg)
	if reason, ok := relayclient.IsReject(err); !ok || reason != relayproto.ReasonTokenMissing {
		t.Fatalf("client error %v, want a token_missing rejection", err)
	}
	// A valid hello still works after all that.
	dial(t, r, true, nil)
}

func TestGarbageClosesConnection(t *testing.T) {
	r := relaytest.Start(t, nil)
	cases := []struct {
		name   string
		frame  []byte
		reason string
	}{
		{"unknown type", relayproto.AppendFrame(nil, relayproto.FrameType(0xee), []byte("x")), "unknown"},
		{"oversized", relayproto.AppendHeader(nil, relayproto.FrameSendPacket, relayproto.MaxBodyLen+1), "oversized"},
		{"unexpected type", relayproto.AppendFrame(nil, relayproto.FrameServerHello, []byte("hello")), "unexpected"},
		{"malformed ping", relayproto.AppendFrame(nil, relayproto.FramePing, []byte("short")), "malformed"},
		{"truncated packet", relayproto.AppendFrame(nil, relayproto.FrameSendPacket, []byte("short")), "truncated"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, r.Registry, "relayd_bad_frames_total", "reason", tc.reason)
			nk := key.NewNode()
			tok := r.Token(nk.Public())
			st, closeFn, err := helloStream(t, r, func(exp []byte) relayproto.ClientHello {
				h := relayproto.ClientHello{Version: relayproto.Version, Node: nk.Public(), Token: tok}
				copy(h.Proof[:], key.Seal(nk, r.Server.PublicKey(), exp))
				return h
			})
			if err != nil {
				t.Fatal(err)
			}
			defer closeFn()
			rd := relayproto.NewReader(st, relayproto.MaxBodyLen)
			if typ, _, err := rd.Next(nil); err != nil || typ != relayproto.FrameServerHello {
				t.Fatalf("no server hello: %v %v", typ, err)
			}
			st.Write(tc.frame)
			for {
				if _, _, err := rd.Next(nil); err != nil {
					break // closed by the relay
				}
			}
			if got := counter(t, r.Registry, "relayd_bad_frames_total", "reason", tc.reason); got != before+1 {
				t.Fatalf("bad_frames{reason=%s} = %v, want %v", tc.reason, got, before+1)
			}
		})
	}
}

func TestTCPFallbackAndPreference(t *testing.T) {
	r := relaytest.Start(t, nil)
	// A UDP black hole with a TCP proxy to the relay on the same port
	// number: a network that drops UDP.
	addr := blackHoleProxy(t, r.Server.TCPAddr().String())
	prefs := &relayclient.Prefs{}
	mod := func(c *relayclient.Config) {
		c.Relay.Addr = addr
		c.Prefs = prefs
	}
	_, a, _ := dial(t, r, true, mod)
	if a.Transport() != relayclient.TransportTCP {
		t.Fatalf("transport %s, want tcp when UDP is dropped", a.Transport())
	}
	if p := prefs.Preferred(addr); p != relayclient.TransportTCP {
		t.Fatalf("preference %q, want tcp remembered", p)
	}
	// Against the real relay QUIC wins and is remembered.
	_, q, _ := dial(t, r, true, func(c *relayclient.Config) { c.Prefs = prefs })
	if q.Transport() != relayclient.TransportQUIC {
		t.Fatalf("transport %s, want quic", q.Transport())
	}
	// The relay counts the connect after its hello is on the wire; give
	// it a moment on a busy machine.
	for deadline := time.Now().Add(5 * time.Second); counter(t, r.Registry, "relayd_connects_total", "transport", "tcp") < 1; {
		if time.Now().After(deadline) {
			t.Fatal("tcp connect not counted")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// blackHoleProxy listens on UDP and TCP on one port of 127.0.0.1, drops
// all UDP and forwards TCP to target.
func blackHoleProxy(t *testing.T, target string) string {
	t.Helper()
	for range 20 {
		uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", uc.LocalAddr().String())
		if err != nil {
			uc.Close()
			continue
		}
		t.Cleanup(func() { uc.Close(); ln.Close() })
		go func() {
			buf := make([]byte, 2048)
			for {
				if _, _, err := uc.ReadFrom(buf); err != nil {
					return
				}
			}
		}()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					u, err := net.Dial("tcp", target)
					if err != nil {
						return
					}
					defer u.Close()
					go func() { copyConn(u, c) }()
					copyConn(c, u)
				}()
			}
		}()
		return uc.LocalAddr().String()
	}
	t.Fatal("no port free on both UDP and TCP")
	return ""
}

func copyConn(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func TestMesh(t *testing.T) {
	secret := []byte("region secret")
	r1 := relaytest.Start(t, func(c *relayd.Config) { c.MeshSecret = secret })
	r2 := relaytest.StartWith(t, relayd.Config{
		Region: relaytest.Region, Listen: "127.0.0.1:0", StateDir: t.TempDir(),
		Trusted: []key.SigningPublic{r1.Signer.Public()}, MeshSecret: secret,
		MeshWith: []string{r1.Server.Addr().String()},
	}, r1.Signer)
	// Runtime update: r1 learns its peer (and itself, which it skips).
	r1.Server.SetMesh([]string{r1.Server.Addr().String(), r2.Server.Addr().String()}, secret)
	// An intruder with the wrong secret must not join.
	r3 := relaytest.StartWith(t, relayd.Config{
		Region: relaytest.Region, Listen: "127.0.0.1:0", StateDir: t.TempDir(),
		Trusted: []key.SigningPublic{r1.Signer.Public()}, MeshSecret: []byte("wrong"),
		MeshWith: []string{r1.Server.Addr().String()},
	}, r1.Signer)

	waitUntil(t, "mesh links up", func() bool {
		return len(r1.Server.MeshPeers()) == 1 && len(r2.Server.MeshPeers()) == 1
	})
	ka, a, sa := dial(t, r1, true, nil)
	kb, b, sb := dial(t, r2, false, nil)
	kc, c, sc := dial(t, r3, true, nil)
	// Presence travels asynchronously: retry until delivered.
	sendUntil(t, sb, func() { a.Send(kb.Public(), []byte("a→b")) }, func() bool { return len(sb.pkts) > 0 })
	sendUntil(t, sa, func() { b.Send(ka.Public(), []byte("b→a")) }, func() bool { return len(sa.pkts) > 0 })
	sb.mu.Lock()
	if sb.pkts[0].Src != ka.Public() || string(sb.pkts[0].Payload) != "a→b" {
		t.Fatalf("b got %q from %v", sb.pkts[0].Payload, sb.pkts[0].Src)
	}
	sb.mu.Unlock()
	if counter(t, r1.Registry, "relayd_mesh_forwarded_packets_total", "direction", "out") < 1 ||
		counter(t, r2.Registry, "relayd_mesh_forwarded_packets_total", "direction", "in") < 1 {
		t.Fatal("mesh forwarding not counted")
	}
	// The intruder's client is unreachable and reaches no one.
	a.Send(kc.Public(), []byte("to intruder"))
	c.Send(ka.Public(), []byte("from intruder"))
	if len(r3.Server.MeshPeers()) != 0 {
		t.Fatal("relay with the wrong secret joined the mesh")
	}
	if counter(t, r1.Registry, "relayd_rejects_total", "reason", "bad_proof") < 1 {
		t.Fatal("mesh authentication failure not counted")
	}
	sa.waitFor(t, "not-here notice for the intruder's client", func() bool {
		for _, n := range sa.notices {
			if n.Kind == relayclient.NoticePeerGone && n.Peer == kc.Public() {
				return true
			}
		}
		return false
	})
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if len(sc.pkts) != 0 {
		t.Fatal("intruder's client received packets")
	}
	// When b leaves r2, r1 forgets it: packets to b are dropped at r1.
	b.Close()
	waitUntil(t, "b forgotten by r1", func() bool {
		a.Send(kb.Public(), []byte("gone?"))
		return counter(t, r1.Registry, "relayd_dropped_packets_total", "reason", "no_such_peer") >= 2
	})
}

func sendUntil(t *testing.T, s *sink, send func(), cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testWait)
	for time.Now().Before(deadline) {
		send()
		s.mu.Lock()
		ok := cond()
		s.mu.Unlock()
		if ok {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("packet never delivered")
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.UntilWithin(t, testWait, what, cond)
}

func TestDrainAndReconnect(t *testing.T) {
	dir := t.TempDir()
	signer := key.NewSigning()
	cfg := relayd.Config{Region: relaytest.Region, Listen: "127.0.0.1:0", StateDir: dir,
		Trusted: []key.SigningPublic{signer.Public()}, DrainGrace: time.Second}
	r := relaytest.StartWith(t, cfg, signer)
	nk := key.NewNode()
	s := newSink()
	ccfg := r.ClientConfig(nk, true)
	ccfg.OnNotice = s.notice
	cl := relayclient.NewClient(ccfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clientDone := make(chan error, 1)
	go func() { clientDone <- cl.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(ctx, testWait)
	defer wcancel()
	first, err := cl.WaitConnected(wctx)
	if err != nil {
		t.Fatal(err)
	}
	go r.Stop()
	s.waitFor(t, "restarting notice", func() bool {
		for _, n := range s.notices {
			if n.Kind == relayclient.NoticeRestarting && n.Restarting.ReconnectIn == time.Second {
				return true
			}
		}
		return false
	})
	if r.Server.Healthy() == nil {
		t.Fatal("draining relay reports healthy")
	}
	// The client leaving ends the drain early, well before the grace.
	first.Close()
	select {
	case <-r.Done():
	case <-time.After(testWait):
		t.Fatal("relay did not finish draining after its last client left")
	}
	// Same state dir, same port: same identity, and the client comes back.
	cfg.Listen = r.Server.Addr().String()
	r2 := relaytest.StartWith(t, cfg, signer)
	if r2.Server.Pin() != r.Server.Pin() || r2.Server.PublicKey() != r.Server.PublicKey() {
		t.Fatal("relay identity changed across restart")
	}
	wctx2, wcancel2 := context.WithTimeout(ctx, 3*testWait)
	defer wcancel2()
	waitUntil(t, "reconnect", func() bool { return r2.Server.Clients() == 1 })
	if _, err := cl.WaitConnected(wctx2); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-clientDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("client Run returned %v", err)
	}
}

func TestRateLimit(t *testing.T) {
	// 2000 bytes/s with a 3000-byte burst: of twenty 1000-byte packets
	// sent back to back, at most a few pass.
	r := relaytest.Start(t, func(c *relayd.Config) { c.ClientRate = 2000; c.ClientBurst = 3000 })
	_, a, _ := dial(t, r, false, nil)
	kb, _, sb := dial(t, r, false, nil)
	for range 20 {
		a.Send(kb.Public(), make([]byte, 1000))
	}
	waitUntil(t, "rate-limit drops", func() bool {
		return counter(t, r.Registry, "relayd_dropped_packets_total", "reason", "rate_limited") >= 10
	})
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if len(sb.pkts) > 10 {
		t.Fatalf("%d packets passed a 3-packet burst", len(sb.pkts))
	}
}

func TestMetricsLint(t *testing.T) {
	r := relaytest.Start(t, nil)
	_, a, _ := dial(t, r, true, nil)
	a.Ping(context.Background())
	problems, err := metrics.Lint(r.Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	want := []string{"relayd_clients", "relayd_connects_total", "relayd_rejects_total", "relayd_forwarded_packets_total",
		"relayd_forwarded_bytes_total", "relayd_dropped_packets_total", "relayd_mesh_forwarded_packets_total",
		"relayd_queue_delay_seconds", "relayd_stun_requests_total", "relayd_client_rtt_seconds", "relayd_bad_frames_total",
		"relayd_region_info"}
	mfs, _ := r.Registry.Gather()
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if n := l.GetName(); n == "peer" || n == "key" || n == "node" || n == "addr" {
					t.Errorf("%s has a per-peer label %q", mf.GetName(), n)
				}
			}
		}
	}
	for _, w := range want {
		if !have[w] {
			t.Errorf("metric %s missing", w)
		}
	}
	if got := counter(t, r.Registry, "relayd_clients", "transport", "quic"); got != 1 {
		t.Errorf("relayd_clients{transport=quic} = %v, want 1", got)
	}
}

func TestStateDirPinStable(t *testing.T) {
	dir := t.TempDir()
	k1, c1, err := relayd.LoadState(dir, "127.0.0.1:443")
	if err != nil {
		t.Fatal(err)
	}
	k2, c2, err := relayd.LoadState(dir, "127.0.0.1:443")
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equal(k2) || !bytes.Equal(c1.Certificate[0], c2.Certificate[0]) {
		t.Fatal("state not reloaded")
	}
	if _, _, err := relayd.LoadState("", ""); err == nil {
		t.Fatal("empty state dir accepted")
	}
}

// TestStuckReceiverDropsOldestOthersUnaffected: a receiver that stops
// reading fills its bounded queue at the relay, which then drops the
// oldest packets (counted), while another receiver keeps getting its own.
func TestStuckReceiverDropsOldestOthersUnaffected(t *testing.T) {
	r := relaytest.Start(t, func(c *relayd.Config) { c.QueueLen = 16 })
	release := make(chan struct{})
	defer close(release)
	_, a, _ := dial(t, r, false, nil)
	kb, _, _ := dial(t, r, false, func(c *relayclient.Config) {
		c.Handler = func(relayclient.Packet) { <-release } // stuck forever
	})
	kc, _, sc := dial(t, r, false, nil)
	payload := make([]byte, 1200)
	// Enough to fill B's stream flow-control window and then its queue.
	deadline := time.Now().Add(testWait)
	for counter(t, r.Registry, "relayd_dropped_packets_total", "reason", "queue_full") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no queue_full drops for a stuck receiver")
		}
		for range 500 {
			if err := a.Send(kb.Public(), payload); err != nil {
				t.Fatal(err)
			}
		}
	}
	sendUntil(t, sc, func() { a.Send(kc.Public(), []byte("still flowing")) }, func() bool {
		for _, p := range sc.pkts {
			if string(p.Payload) == "still flowing" {
				return true
			}
		}
		return false
	})
}
