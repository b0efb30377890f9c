package relayd_test

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayd"
	"github.com/wiremesh/wiremesh/relayd/relaytest"
	"github.com/wiremesh/wiremesh/relayproto"
	"github.com/wiremesh/wiremesh/tlspin"
)

// Admission DoS tests. They drive real sockets on loopback; an attacker
// uses the source address 127.0.0.2, the legitimate client 127.0.0.1.

// stalledQUIC completes a QUIC handshake from srcIP, opens the control
// stream and sends one byte of a frame header, then nothing.
func stalledQUIC(t *testing.T, r *relaytest.Relay, srcIP string) *quic.Conn {
	t.Helper()
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(srcIP)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: u}
	t.Cleanup(func() { tr.Close(); u.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	qc, err := tr.Dial(ctx, r.Server.Addr(), tlspin.ClientConfig(r.Server.Pin(), "relay", relayproto.ALPN),
		&quic.Config{EnableDatagrams: true, KeepAlivePeriod: time.Second})
	if err != nil {
		t.Fatalf("quic dial: %v", err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	st, err := qc.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte{byte(relayproto.FrameClientHello)}); err != nil {
		t.Fatal(err)
	}
	return qc
}

// idleTCP opens a TCP connection from srcIP to the relay; with handshake it
// also completes TLS. Either way it then sends nothing.
func idleTCP(t *testing.T, r *relaytest.Relay, srcIP string, handshake bool) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(srcIP)}, Timeout: testWait}
	nc, err := d.Dial("tcp", r.Server.TCPAddr().String())
	if err != nil {
		t.Fatalf("tcp dial: %v", err)
	}
	t.Cleanup(func() { nc.Close() })
	if handshake {
		tc := tls.Client(nc, tlspin.ClientConfig(r.Server.Pin(), "relay", relayproto.ALPN))
		ctx, cancel := context.WithTimeout(context.Background(), testWait)
		defer cancel()
		if err := tc.HandshakeContext(ctx); err != nil {
			t.Fatalf("tls handshake: %v", err)
		}
		return tc
	}
	return nc
}

func waitClosed(t *testing.T, what string, qc *quic.Conn) {
	t.Helper()
	select {
	case <-qc.Context().Done():
	case <-time.After(testWait):
		t.Fatalf("%s: still open", what)
	}
}

// TestQUICHelloDeadline: a QUIC client that opens its control stream and
// never finishes the hello is closed at the hello deadline (before the fix
// the stream's deadline was a no-op and the connection lived for ever).
func TestQUICHelloDeadline(t *testing.T) {
	r := relaytest.Start(t, func(c *relayd.Config) { c.HelloTimeout = 300 * time.Millisecond })
	qc := stalledQUIC(t, r, "127.0.0.1")
	waitClosed(t, "stalled hello", qc)
	waitUntil(t, "timeout counted", func() bool {
		return counter(t, r.Registry, "relayd_rejects_total", "reason", "timeout") >= 1 &&
			counter(t, r.Registry, "relayd_pending_connections") == 0
	})
}

// TestPendingBudgetShared: QUIC and TCP draw on one budget, and a new
// connection past it sheds the oldest pending one, whatever its transport.
func TestPendingBudgetShared(t *testing.T) {
	r := relaytest.Start(t, func(c *relayd.Config) {
		c.MaxPending = 4
		c.MaxPendingPerSource = 100
		c.RetryAbove = 100 // not under test here
		c.HelloTimeout = time.Minute
	})
	var qcs []*quic.Conn
	for i := range 4 {
		qcs = append(qcs, stalledQUIC(t, r, "127.0.0.2"))
		// One at a time: the relay orders by its own accept, which a
		// retransmitted handshake packet could otherwise swap.
		waitUntil(t, "pending", func() bool { return counter(t, r.Registry, "relayd_pending_connections") == float64(i+1) })
	}
	idleTCP(t, r, "127.0.0.2", true) // the fifth: sheds the oldest QUIC one
	waitClosed(t, "oldest pending QUIC connection", qcs[0])
	waitUntil(t, "shed counted", func() bool {
		return counter(t, r.Registry, "relayd_pending_dropped_total", "reason", "total_limit") >= 1 &&
			counter(t, r.Registry, "relayd_pending_connections") <= 4
	})
	for _, qc := range qcs[1:] {
		if qc.Context().Err() != nil {
			t.Fatal("a newer pending connection was shed before the oldest")
		}
	}
	// A legitimate client still gets in, over either transport.
	for _, tcp := range []bool{false, true} {
		kb, b, sb := dial(t, r, true, func(c *relayclient.Config) { c.DisableQUIC = tcp; c.DisableTCP = !tcp })
		_, a, _ := dial(t, r, true, nil)
		sendUntil(t, sb, func() { a.Send(kb.Public(), []byte("hi")) }, func() bool { return len(sb.pkts) > 0 })
		_ = b
	}
}

// TestTCPIdleFloodFromOneAddress: 500 idle TCP connections (50 of them past
// the TLS handshake) from 127.0.0.2 do not keep a client on 127.0.0.1 out.
// Before the fix, 256 idle connects filled the handshake semaphore and
// every new connection was closed at once.
func TestTCPIdleFloodFromOneAddress(t *testing.T) {
	r := relaytest.Start(t, nil)
	for i := range 500 {
		idleTCP(t, r, "127.0.0.2", i%10 == 0)
	}
	if n := counter(t, r.Registry, "relayd_pending_connections"); n > relayd.DefaultMaxPendingPerSource+1 {
		t.Fatalf("%v pending connections from one source, limit %d", n, relayd.DefaultMaxPendingPerSource)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	for _, tcp := range []bool{true, false} {
		cfg := r.ClientConfig(newNodeKey(), false)
		cfg.DisableQUIC, cfg.DisableTCP = tcp, !tcp
		c, err := relayclient.Dial(ctx, cfg)
		if err != nil {
			t.Fatalf("legitimate client (tcp=%v) locked out: %v", tcp, err)
		}
		c.Close()
	}
	if counter(t, r.Registry, "relayd_pending_dropped_total", "reason", "source_limit") < 500-relayd.DefaultMaxPendingPerSource {
		t.Fatal("source-limit sheds not counted")
	}
}

// TestQUICRetryUnderLoad: past RetryAbove pending connections, new QUIC
// clients go through a Retry, and still get in.
func TestQUICRetryUnderLoad(t *testing.T) {
	r := relaytest.Start(t, func(c *relayd.Config) { c.RetryAbove = 1; c.HelloTimeout = time.Minute })
	_, _, _ = dial(t, r, true, func(c *relayclient.Config) { c.DisableTCP = true })
	if n := counter(t, r.Registry, "relayd_quic_retries_total"); n != 0 {
		t.Fatalf("%v retries with nothing pending", n)
	}
	stalledQUIC(t, r, "127.0.0.2")
	waitUntil(t, "1 pending", func() bool { return counter(t, r.Registry, "relayd_pending_connections") == 1 })
	kb, _, sb := dial(t, r, true, func(c *relayclient.Config) { c.DisableTCP = true })
	if n := counter(t, r.Registry, "relayd_quic_retries_total"); n < 1 {
		t.Fatal("no Retry under load")
	}
	_, a, _ := dial(t, r, true, func(c *relayclient.Config) { c.DisableTCP = true })
	sendUntil(t, sb, func() { a.Send(kb.Public(), []byte("hi")) }, func() bool { return len(sb.pkts) > 0 })
}

func newNodeKey() key.NodePrivate { return key.NewNode() }

// TestTCPStageDeadlines: a TCP connection that never starts TLS, and one
// that completes TLS but never sends its hello, are both closed by their
// stage's deadline.
func TestTCPStageDeadlines(t *testing.T) {
	r := relaytest.Start(t, func(c *relayd.Config) {
		c.HelloTimeout = 400 * time.Millisecond
		c.HandshakeTimeout = 200 * time.Millisecond
	})
	for _, handshake := range []bool{false, true} {
		nc := idleTCP(t, r, "127.0.0.2", handshake)
		nc.SetReadDeadline(time.Now().Add(testWait))
		var b [1]byte
		for {
			if _, err := nc.Read(b[:]); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatalf("handshake=%v: relay kept an idle connection open", handshake)
				}
				break // closed by the relay (a Reject frame may come first)
			}
		}
	}
	waitUntil(t, "both counted", func() bool {
		return counter(t, r.Registry, "relayd_pending_dropped_total", "reason", "handshake_failed") >= 1 &&
			counter(t, r.Registry, "relayd_rejects_total", "reason", "timeout") >= 1 &&
			counter(t, r.Registry, "relayd_pending_connections") == 0
	})
}
