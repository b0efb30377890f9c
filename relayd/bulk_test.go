package relayd

import (
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/wiremesh/wiremesh/internal/nice"
	"github.com/wiremesh/wiremesh/internal/poll"
	"github.com/wiremesh/wiremesh/relayproto"
)

// countNice is how many threads of this process are at nice n, leaving
// out the main thread: a goroutine that ends locked to it does not end the
// thread (the Go runtime parks the main thread for good instead), so a
// bulk loop that happened to run there leaves it lowered but asleep.
func countNice(t *testing.T, n int) int {
	t.Helper()
	pid := os.Getpid()
	th, err := nice.Threads(pid)
	if err != nil {
		t.Fatal(err)
	}
	c := 0
	for tid, v := range th {
		if v == n && tid != pid {
			c++
		}
	}
	return c
}

// mainLowered says the main thread is at nice n (the bulk loop runs there).
func mainLowered(t *testing.T, n int) bool {
	t.Helper()
	th, err := nice.Threads(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	return th[os.Getpid()] == n
}

// niceBase returns this thread's nice value, skipping the test where a
// thread cannot be lowered by add more (not Linux, or already near 19).
func niceBase(t *testing.T, add int) int {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("per-thread priority is Linux only")
	}
	base, err := nice.Thread()
	if err != nil {
		t.Fatal(err)
	}
	if base+add > 19 {
		t.Skipf("test process already at nice %d", base)
	}
	return base
}

// flooder keeps a's own relay socket full of FastSend datagrams to dst
// until stop is called.
func flooder(t *testing.T, a, dst fastPeer) (stop func()) {
	d := relayproto.AppendFastSend(nil, a.fs.session, dst.cl.key, make([]byte, 1280))
	to := a.fs.conn.LocalAddr()
	done, quit := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			default:
			}
			for range 64 {
				a.sock.WriteTo(d, to)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { close(quit); <-done }) }
	t.Cleanup(stop)
	return stop
}

// TestFastBulkClientDemoted: a client that keeps its socket full (here:
// over its rate, so its loop pauses and the kernel queues) is served from
// a thread of lowered priority, and back on an ordinary one once it only
// trickles.
func TestFastBulkClientDemoted(t *testing.T) {
	base := niceBase(t, DefaultFastBulkNice)
	lowered := base + DefaultFastBulkNice
	before := countNice(t, lowered)
	s := newTestServer(t, func(c *Config) {
		c.ListenFast = "127.0.0.1:0"
		c.ClientRate, c.ClientBurst = 1<<20, 8*1280
	})
	a, b := newFastPeer(t, s), newFastPeer(t, s) // each with its own socket's loop running
	stop := flooder(t, a, b)
	poll.UntilWithin(t, 30*time.Second, "the flooding client's loop demoted", func() bool {
		return testutil.ToFloat64(s.m.fastBulkLoops) == 1
	})
	if n := testutil.ToFloat64(s.m.fastBulkMoves); n != 1 {
		t.Fatalf("demotions %v, want 1", n)
	}
	if n := countNice(t, lowered); n != before+1 && !mainLowered(t, lowered) {
		t.Fatalf("%d threads at nice %d, want %d", n, lowered, before+1)
	}
	// Packets still flow from the demoted loop.
	if got := len(recvAll(t, b, 1, a)); got != 1 {
		t.Fatal("nothing forwarded from the demoted loop")
	}
	stop()
	// A trickle: partial batches only, so after bulkQuiet it moves back.
	d := relayproto.AppendFastSend(nil, a.fs.session, b.cl.key, []byte("trickle"))
	poll.UntilWithin(t, 30*time.Second, "the loop back on an ordinary thread", func() bool {
		a.sock.WriteTo(d, a.fs.conn.LocalAddr())
		return testutil.ToFloat64(s.m.fastBulkLoops) == 0
	})
	if !poll.Wait(30*time.Second, func() bool { return countNice(t, lowered) == before }) {
		th, _ := nice.Threads(os.Getpid())
		t.Fatalf("the lowered thread is not gone within 30 s: %d threads at nice %d, want %d (pid %d; nice by thread: %v)",
			countNice(t, lowered), lowered, before, os.Getpid(), th)
	}
	if n := testutil.ToFloat64(s.m.fastBulkMoves); n != 1 {
		t.Fatalf("demotions %v, want 1", n)
	}
}

// TestFastBulkNiceOff: with FastBulkNice negative a flooding client's loop
// stays where it is.
func TestFastBulkNiceOff(t *testing.T) {
	s := newTestServer(t, func(c *Config) {
		c.ListenFast = "127.0.0.1:0"
		c.ClientRate, c.ClientBurst = 1<<20, 8*1280
		c.FastBulkNice = -1
	})
	a, b := newFastPeer(t, s), newFastPeer(t, s) // each with its own socket's loop running
	flooder(t, a, b)
	poll.UntilWithin(t, 60*time.Second, "several times bulkAfter batches read", func() bool {
		return fullBatches(t, s) >= 3*bulkAfter
	})
	if n := testutil.ToFloat64(s.m.fastBulkMoves); n != 0 {
		t.Fatalf("demotions %v with the feature off, want 0", n)
	}
}

// fullBatches is how many fast-path reads returned a full batch: the
// histogram's samples above its 16 bucket (reads are at most fastBatchLen).
func fullBatches(t *testing.T, s *Server) uint64 {
	t.Helper()
	var m dto.Metric
	if err := s.m.fastBatch.Write(&m); err != nil {
		t.Fatal(err)
	}
	h := m.GetHistogram()
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == 16 {
			return h.GetSampleCount() - b.GetCumulativeCount()
		}
	}
	t.Fatal("no 16 bucket")
	return 0
}
