package relayd

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestQueueBytesCapped: a receiver that does not read holds at most
// QueueBytes of payload, however large the packets; the oldest go first
// and are counted. Before the fix only packets were counted, so 128
// stream-size packets (8 MiB) could pile up per receiver.
func TestQueueBytesCapped(t *testing.T) {
	s := newTestServer(t, nil)
	dst, _ := fakeClient(s)
	src, _ := fakeClient(s)
	big := make([]byte, 60<<10)
	for i := range 128 {
		big[0] = byte(i)
		s.forward(src, dst.key, append([]byte(nil), big...), false, true)
	}
	dst.mu.Lock()
	qb, n := dst.mu.qbytes, dst.mu.data.n
	newest := dst.mu.data.buf[(dst.mu.data.head+dst.mu.data.n-1)%len(dst.mu.data.buf)]
	dst.mu.Unlock()
	if qb > DefaultQueueBytes || n*len(big) > DefaultQueueBytes {
		t.Fatalf("%d bytes in %d packets queued, cap %d", qb, n, DefaultQueueBytes)
	}
	if newest.payload[0] != 127 {
		t.Fatal("the newest packet was dropped, not the oldest")
	}
	if got := testutil.ToFloat64(s.m.dropQueueBytes); got != float64(128-n) {
		t.Fatalf("queue_bytes_full drops = %v, want %d", got, 128-n)
	}
}

// TestDefaultClientRate: with no rate configured a client still has a
// token bucket (1 Gbit/s); a negative rate turns it off.
func TestDefaultClientRate(t *testing.T) {
	s := newTestServer(t, nil)
	cl, _ := fakeClient(s)
	if cl.lim == nil || cl.lim.rate != DefaultClientRate {
		t.Fatalf("default limiter %+v, want %d B/s", cl.lim, DefaultClientRate)
	}
	s2 := newTestServer(t, func(c *Config) { c.ClientRate = -1 })
	if cl2, _ := fakeClient(s2); cl2.lim != nil {
		t.Fatal("negative rate still limited")
	}
}
