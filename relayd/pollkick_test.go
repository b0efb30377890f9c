package relayd

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

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
