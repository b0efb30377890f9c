package relayd

import (
	"bytes"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fullBatchForward sets up one full batch of 1280-byte datagrams from one
// fast-path client to another and returns a function that forwards it
// once through handleFastBatch and its sendmmsg (with GSO where the kernel
// has it). Forwarding rewrites each datagram in place (FastSend to
// FastRecv), so every call first restores the batch from a copy. The
// receiver never reads; the kernel drops what its socket cannot hold,
// which costs the relay nothing.
func fullBatchForward(tb testing.TB) (s *Server, forward func()) {
	s = newTestServer(tb, func(c *Config) { c.ListenFast = "127.0.0.1:0"; c.ClientRate = -1 })
	src, dst := newFastPeer(tb, s), newFastPeer(tb, s)
	var sends []any
	for range fastBatchLen {
		sends = append(sends, dst.cl, make([]byte, 1280))
	}
	in := batchOf(src, sends...)
	orig := make([][]byte, len(in))
	for i, m := range in {
		orig[i] = bytes.Clone(m.Buffers[0][:m.N])
	}
	fb := newFastBatch()
	return s, func() {
		for i, m := range in {
			copy(m.Buffers[0], orig[i])
		}
		s.handleFastBatch(src.fs.conn, fb, in)
	}
}

// BenchmarkFastBatchForward: one full batch through the relay per
// iteration (fullBatchForward).
func BenchmarkFastBatchForward(b *testing.B) {
	s, forward := fullBatchForward(b)
	b.ReportAllocs()
	b.SetBytes(int64(fastBatchLen * 1280))
	for b.Loop() {
		forward()
	}
	b.StopTimer()
	if got := testutil.ToFloat64(s.m.fwdFastPkts); got != float64(b.N*fastBatchLen) {
		b.Fatalf("forwarded %v datagrams, want %d", got, b.N*fastBatchLen)
	}
}

// TestFastBatchForwardNoAllocs: forwarding a full batch allocates nothing
// once the batch's scratch space has grown (the destination address,
// message buffers and GSO control messages are reused).
func TestFastBatchForwardNoAllocs(t *testing.T) {
	s, forward := fullBatchForward(t)
	const runs = 20
	if allocs := testing.AllocsPerRun(runs, forward); allocs != 0 {
		t.Fatalf("%.1f allocations per batch, want 0", allocs)
	}
	if got := testutil.ToFloat64(s.m.fwdFastPkts); got != (runs+1)*fastBatchLen {
		t.Fatalf("forwarded %v datagrams, want %d", got, (runs+1)*fastBatchLen)
	}
}
