package relayd

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/ipv4"

	"github.com/wiremesh/wiremesh/internal/poll"
)

// TestFastKickInterval: a loop kicks pollKeeper at most once per
// pollKickEvery, and never blocks when a kick is already pending.
func TestFastKickInterval(t *testing.T) {
	s := newTestServer(t, nil)
	t0 := time.Now()
	last := s.fastKick(time.Time{}, t0)
	if !last.Equal(t0) || len(s.pollKick) != 1 {
		t.Fatalf("first kick: last %v, pending %d; want %v, 1", last, len(s.pollKick), t0)
	}
	<-s.pollKick
	if got := s.fastKick(last, t0.Add(pollKickEvery/2)); !got.Equal(last) || len(s.pollKick) != 0 {
		t.Fatalf("kick within pollKickEvery: last %v, pending %d; want no kick", got, len(s.pollKick))
	}
	last = s.fastKick(last, t0.Add(pollKickEvery))
	if !last.Equal(t0.Add(pollKickEvery)) || len(s.pollKick) != 1 {
		t.Fatalf("kick after pollKickEvery: last %v, pending %d", last, len(s.pollKick))
	}
	// Pending already: the kick is dropped, not queued, and does not block.
	s.fastKick(time.Time{}, t0.Add(3*pollKickEvery))
	if len(s.pollKick) != 1 {
		t.Fatalf("pending %d, want 1", len(s.pollKick))
	}
	if n := testutil.ToFloat64(s.m.fastPollKicks); n != 2 {
		t.Fatalf("kicks counted %v, want 2 (the dropped one is not a kick)", n)
	}
}

// TestPollKeeperStops: pollKeeper drains kicks and returns when its
// context ends.
func TestPollKeeperStops(t *testing.T) {
	s := newTestServer(t, nil)
	stop := startPollKeeper(t, s)
	for i := range 3 { // the buffer holds one: each later send waits for the keeper
		select {
		case s.pollKick <- struct{}{}:
		case <-time.After(30 * time.Second):
			t.Fatalf("kick %d not taken within 30 s", i)
		}
	}
	stop()
}

// startPollKeeper runs s.pollKeeper until the returned stop (also a
// cleanup), which fails the test if the keeper does not return.
func startPollKeeper(t *testing.T, s *Server) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.pollKeeper(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Error("pollKeeper did not return after its context ended")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// TestFloodKicksPoller: a client that keeps its socket full kicks the
// poller again and again while it floods.
func TestFloodKicksPoller(t *testing.T) {
	s := newTestServer(t, func(c *Config) {
		c.ListenFast = "127.0.0.1:0"
		c.ClientRate, c.ClientBurst = 1<<20, 8*1280
	})
	startPollKeeper(t, s)
	a, b := newFastPeer(t, s), newFastPeer(t, s)
	flooder(t, a, b)
	poll.UntilWithin(t, 60*time.Second, "several kicks from the flooding client's loop", func() bool {
		return testutil.ToFloat64(s.m.fastPollKicks) >= 5
	})
	if got := len(recvAll(t, b, 1, a)); got != 1 {
		t.Fatal("nothing forwarded while the loop kicks the poller")
	}
}

// scriptConn is a batchConn whose reads return batches of the sizes in
// sizes, one per call, at least pollKickEvery apart, then net.ErrClosed.
// Each read first notes whether a poll kick is pending (and takes it), so
// kicked[i] says whether the batch before read i kicked.
type scriptConn struct {
	s      *Server
	sizes  []int
	kicked []bool
}

func (c *scriptConn) ReadBatch(ms []ipv4.Message, _ int) (int, error) {
	select {
	case <-c.s.pollKick:
		c.kicked = append(c.kicked, true)
	default:
		c.kicked = append(c.kicked, false)
	}
	if len(c.sizes) == 0 {
		return 0, net.ErrClosed
	}
	time.Sleep(pollKickEvery) // kicks are at most pollKickEvery apart
	n := min(c.sizes[0], len(ms))
	c.sizes = c.sizes[1:]
	for i := range ms[:n] {
		ms[i].N = 3 // no fast-path frame: counted as bad and ignored
		ms[i].Addr = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	}
	return n, nil
}

func (c *scriptConn) WriteBatch(ms []ipv4.Message, _ int) (int, error) { return len(ms), nil }

// TestQueuedReadKicksPoller: a loop kicks the poller after every read that
// found more than one datagram queued (a flooder slower than the relay
// fills no batch but keeps a queue), full or not, and never after a
// read of one (a paced client).
func TestQueuedReadKicksPoller(t *testing.T) {
	s := newTestServer(t, nil)
	c := &scriptConn{s: s, sizes: []int{1, 1, 2, 5, 1, fastBatchLen, 1, 1}}
	if end := s.fastRun(nil, c, false, newFastBatch(), false, false); end != loopClosed {
		t.Fatalf("fastRun ended with %v, want loopClosed", end)
	}
	// kicked[i] is about the batch before read i; read 0 had none before it.
	want := []bool{false, false, false, true, true, false, true, false, false}
	if fmt.Sprint(c.kicked) != fmt.Sprint(want) {
		t.Fatalf("kicks after batches of 1 1 2 5 1 32 1 1: %v, want %v", c.kicked[1:], want[1:])
	}
	if n := testutil.ToFloat64(s.m.fastPollKicks); n != 3 {
		t.Fatalf("kicks counted %v, want 3", n)
	}
}
