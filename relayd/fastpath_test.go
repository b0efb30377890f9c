package relayd_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"

	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayd"
	"github.com/wiremesh/wiremesh/relayd/relaytest"
	"github.com/wiremesh/wiremesh/relayproto"
)

func TestFastPath(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(map[bool]string{false: "own socket per client", true: "shared socket"}[shared], func(t *testing.T) {
			testFastPath(t, shared)
		})
	}
}

func testFastPath(t *testing.T, shared bool) {
	r := relaytest.Start(t, func(c *relayd.Config) { c.ListenFast = "127.0.0.1:0"; c.FastShared = shared })
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
