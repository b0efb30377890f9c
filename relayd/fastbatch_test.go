package relayd

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/ipv4"

	"github.com/wiremesh/wiremesh/relayproto"
)

// fastPeer is a registered client with a validated fast path whose far
// end is sock, a UDP socket of the test.
type fastPeer struct {
	cl   *client
	fs   *fastState
	sock *net.UDPConn
}

func newFastPeer(t testing.TB, s *Server) fastPeer {
	t.Helper()
	cl, _ := fakeClient(s)
	cl.startFastPath()
	sock, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close(); cl.close("test done"); s.unregister(cl) })
	fs := cl.fast.Load()
	a := sock.LocalAddr().(*net.UDPAddr).AddrPort()
	fs.addr.Store(&a)
	return fastPeer{cl: cl, fs: fs, sock: sock}
}

// batchOf builds a received batch: from src, one FastSend per (dst, payload).
func batchOf(src fastPeer, sends ...any) []ipv4.Message {
	var ms []ipv4.Message
	for i := 0; i < len(sends); i += 2 {
		dst := sends[i].(*client)
		d := relayproto.AppendFastSend(make([]byte, 0, fastBufLen), src.fs.session, dst.key, sends[i+1].([]byte))
		ms = append(ms, ipv4.Message{Buffers: [][]byte{d[:cap(d)]}, N: len(d), Addr: src.sock.LocalAddr()})
	}
	return ms
}

// recvAll reads FastRecv payloads from p until want arrive or a short
// quiet period passes (UDP: a test of loss must stop somewhere).
func recvAll(t *testing.T, p fastPeer, want int, src fastPeer) [][]byte {
	t.Helper()
	var got [][]byte
	buf := make([]byte, 1<<16)
	for len(got) < want {
		p.sock.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := p.sock.Read(buf)
		if err != nil {
			break
		}
		fd, err := relayproto.ParseFast(buf[:n])
		if err != nil || fd.Kind != relayproto.FastRecv || fd.Key != src.cl.key {
			t.Fatalf("got %v %v from %v, want a FastRecv from the sender", fd.Kind, err, fd.Key)
		}
		got = append(got, bytes.Clone(fd.Payload))
	}
	return got
}

func payloads(sizes ...int) [][]byte {
	out := make([][]byte, len(sizes))
	for i, n := range sizes {
		out[i] = bytes.Repeat([]byte{byte(i + 1)}, n)
	}
	return out
}

// TestFastBatchPartial: a batch shorter than fastBatchLen, with sizes that
// make GSO runs end early (a shorter last datagram) and restart (a longer
// one after a shorter), arrives whole and in order, with and without GSO.
func TestFastBatchPartial(t *testing.T) {
	for _, noGSO := range []bool{false, true} {
		t.Run(fmt.Sprintf("noGSO=%v", noGSO), func(t *testing.T) {
			s := newTestServer(t, func(c *Config) { c.ListenFast = "127.0.0.1:0"; c.FastNoGSO = noGSO })
			a, b := newFastPeer(t, s), newFastPeer(t, s)
			want := payloads(1280, 1280, 1280, 900, 1280, 1280, 100)
			var sends []any
			for _, p := range want {
				sends = append(sends, b.cl, p)
			}
			fb := newFastBatch()
			s.handleFastBatch(a.fs.conn, fb, batchOf(a, sends...))
			got := recvAll(t, b, len(want), a)
			if len(got) != len(want) {
				t.Fatalf("%d of %d datagrams arrived", len(got), len(want))
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("datagram %d: %d bytes of %d, out of order or corrupted", i, len(got[i]), len(want[i]))
				}
			}
			if n := testutil.ToFloat64(s.m.fwdFastPkts); n != float64(len(want)) {
				t.Fatalf("forwarded %v, want %d", n, len(want))
			}
			if len(fb.outs) != 0 {
				t.Fatal("batch not emptied")
			}
			if !noGSO && s.fastNoGSO.Load() {
				t.Log("this kernel refused UDP GSO; the batch went out without it")
			}
		})
	}
}

// TestFastBatchMixedDestinations: one batch for two fast-path peers, a
// QUIC-only peer and an unknown key; each gets its own packets in order.
func TestFastBatchMixedDestinations(t *testing.T) {
	s := newTestServer(t, func(c *Config) { c.ListenFast = "127.0.0.1:0" })
	a, b, c := newFastPeer(t, s), newFastPeer(t, s), newFastPeer(t, s)
	quicOnly, _ := fakeClient(s)
	ghost, _ := fakeClient(s)
	s.unregister(ghost) // its key is unknown now
	p := payloads(1280, 1280, 1280, 1280, 1280, 1280)
	s.handleFastBatch(a.fs.conn, newFastBatch(), batchOf(a,
		b.cl, p[0], c.cl, p[1], b.cl, p[2], ghost, p[3], c.cl, p[4], quicOnly, p[5]))
	if got := recvAll(t, b, 2, a); len(got) != 2 || !bytes.Equal(got[0], p[0]) || !bytes.Equal(got[1], p[2]) {
		t.Fatalf("b got %d datagrams", len(got))
	}
	if got := recvAll(t, c, 2, a); len(got) != 2 || !bytes.Equal(got[0], p[1]) || !bytes.Equal(got[1], p[4]) {
		t.Fatalf("c got %d datagrams", len(got))
	}
	quicOnly.mu.Lock()
	queued := quicOnly.mu.data.n
	quicOnly.mu.Unlock()
	if queued != 1 {
		t.Fatalf("QUIC-only peer has %d packets queued, want 1", queued)
	}
	if n := testutil.ToFloat64(s.m.drops.WithLabelValues(dropNoSuchPeer)); n != 1 {
		t.Fatalf("no_such_peer drops %v, want 1", n)
	}
}

// TestFastBatchOneDestinationFull: a destination that cannot take the
// batch, because its client's buffer is full (it never reads) or because
// its relay socket fails, costs only its own packets; the other
// destination of the same batch gets every one of its packets.
func TestFastBatchOneDestinationFull(t *testing.T) {
	for _, mode := range []string{"client buffer full", "relay socket failed"} {
		t.Run(mode, func(t *testing.T) {
			s := newTestServer(t, func(c *Config) { c.ListenFast = "127.0.0.1:0" })
			a, full, ok := newFastPeer(t, s), newFastPeer(t, s), newFastPeer(t, s)
			switch mode {
			case "client buffer full":
				full.sock.SetReadBuffer(1) // the kernel's minimum: a couple of datagrams
			case "relay socket failed":
				full.fs.conn.Close()
			}
			var sends []any
			p := payloads(1280)[0]
			for range fastBatchLen / 2 {
				sends = append(sends, full.cl, p, ok.cl, p)
			}
			for range 4 { // several batches: the full one never drains
				s.handleFastBatch(a.fs.conn, newFastBatch(), batchOf(a, sends...))
			}
			want := 4 * fastBatchLen / 2
			if got := recvAll(t, ok, want, a); len(got) != want {
				t.Fatalf("the healthy destination got %d of %d", len(got), want)
			}
			if mode == "relay socket failed" {
				if n := testutil.ToFloat64(s.m.drops.WithLabelValues(dropWriteError)); n != float64(want) {
					t.Fatalf("write_error drops %v, want %d", n, want)
				}
			}
		})
	}
}

// TestFastBatchRateLimitedPause: a batch from a client over its rate marks
// the client, and its own socket's loop pauses until its bucket holds a
// batch again, never longer than fastPauseMax; a batch within the rate
// pauses nothing. On its own socket the client is shaped: the batch waits
// for tokens mid-way, so every packet of it is forwarded.
func TestFastBatchRateLimitedPause(t *testing.T) {
	const rate, burst = 1 << 20, 8 * 1280 // 1 MiB/s, eight packets
	s := newTestServer(t, func(c *Config) {
		c.ListenFast = "127.0.0.1:0"
		c.ClientRate, c.ClientBurst = rate, burst
	})
	a, b := newFastPeer(t, s), newFastPeer(t, s)
	p := payloads(1280)[0]
	fb := newFastBatch()
	s.handleFastBatch(a.fs.conn, fb, batchOf(a, b.cl, p, b.cl, p))
	if fb.limited != nil || fastPause(fb, time.Now()) != 0 {
		t.Fatalf("a batch within the burst marked %v", fb.limited)
	}
	var sends []any
	for range fastBatchLen {
		sends = append(sends, b.cl, p)
	}
	s.handleFastBatch(a.fs.conn, fb, batchOf(a, sends...))
	if fb.limited != a.cl {
		t.Fatalf("over its rate, the batch marked %v, want the sender", fb.limited)
	}
	if fb.blocked || fb.retry {
		t.Fatal("batch state left blocked after the batch")
	}
	now := time.Now()
	d := fastPause(fb, now)
	// The bucket is empty: a batch's worth (capped at the burst) refills
	// in burst/rate, about 9.8 ms, just under the cap.
	if want := time.Duration(float64(burst) / rate * float64(time.Second)); d <= 0 || d > want || d > fastPauseMax {
		t.Fatalf("pause %v, want (0, %v]", d, want)
	}
	// On its own socket the client is shaped, not policed: the batch
	// waited for tokens, so every packet arrives and none is dropped.
	if got := len(recvAll(t, b, 2+fastBatchLen, a)); got != 2+fastBatchLen {
		t.Fatalf("%d packets arrived, want all %d", got, 2+fastBatchLen)
	}
	if n := testutil.ToFloat64(s.m.drops.WithLabelValues(dropRateLimited)); n != 0 {
		t.Fatalf("rate_limited drops %v, want 0", n)
	}
}

// TestLimiterWait: how long until the bucket holds n bytes.
func TestLimiterWait(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := newLimiter(1000, 5000, t0)
	if d := l.wait(1000, t0, time.Minute); d != 0 {
		t.Fatalf("full bucket: wait %v", d)
	}
	if !l.allow(5000, t0) {
		t.Fatal("the burst was refused")
	}
	for _, c := range []struct {
		n     int
		at    time.Duration
		max   time.Duration
		want  time.Duration
		about string
	}{
		{1000, 0, time.Minute, time.Second, "empty bucket"},
		{1000, 400 * time.Millisecond, time.Minute, 600 * time.Millisecond, "partly refilled"},
		{1000, 2 * time.Second, time.Minute, 0, "refilled"},
		{9000, 0, time.Minute, 5 * time.Second, "more than the burst waits for a full bucket"},
		{9000, 0, 10 * time.Millisecond, 10 * time.Millisecond, "capped"},
	} {
		if d := l.wait(c.n, t0.Add(c.at), c.max); d != c.want {
			t.Errorf("%s: wait(%d) at +%v = %v, want %v", c.about, c.n, c.at, d, c.want)
		}
	}
}
