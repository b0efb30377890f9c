package relayd

import (
	"bytes"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// BenchmarkFastBatchForward: one full batch of 1280-byte datagrams from one
// fast-path client to another, through handleFastBatch and its sendmmsg
// (with GSO where the kernel has it), and the copy
// of the batch each iteration starts from. The receiver never reads; the kernel
// drops what its socket cannot hold, which costs the relay nothing.
func BenchmarkFastBatchForward(b *testing.B) {
	s := newTestServer(b, func(c *Config) { c.ListenFast = "127.0.0.1:0"; c.ClientRate = -1 })
	src, dst := newFastPeer(b, s), newFastPeer(b, s)
	var sends []any
	for range fastBatchLen {
		sends = append(sends, dst.cl, make([]byte, 1280))
	}
	in := batchOf(src, sends...)
	// Forwarding rewrites each datagram in place (FastSend to FastRecv):
	// every iteration starts again from a copy.
	orig := make([][]byte, len(in))
	for i, m := range in {
		orig[i] = bytes.Clone(m.Buffers[0][:m.N])
	}
	fb := newFastBatch()
	b.ReportAllocs()
	b.SetBytes(int64(fastBatchLen * 1280))
	b.ResetTimer()
	for b.Loop() {
		for i, m := range in {
			copy(m.Buffers[0], orig[i])
		}
		s.handleFastBatch(src.fs.conn, fb, in)
	}
	b.StopTimer()
	if got := testutil.ToFloat64(s.m.fwdFastPkts); got != float64(b.N*fastBatchLen) {
		b.Fatalf("forwarded %v datagrams, want %d", got, b.N*fastBatchLen)
	}
}
