package paths

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// fakeSides records side sockets handed over.
type fakeSides struct {
	mu      sync.Mutex
	added   int
	removed int
}

func (f *fakeSides) AddSide(key.NodePublic, *net.UDPConn, netip.AddrPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.added++
	return nil
}

func (f *fakeSides) RemoveSide(key.NodePublic) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed++
}

// searcher gives n a PunchConfig for a NAT of the given kind whose Listen
// records the call and fails (a search's sockets need a real network;
// the lab tests run whole searches). It returns the Listen call count.
func searcher(n *tnode, hard bool) func() int {
	var mu sync.Mutex
	calls := 0
	public := netip.AddrPortFrom(n.addr.Addr(), 40000)
	n.m.cfg.Punch = &PunchConfig{
		Self: func() (bool, netip.AddrPort) { return hard, public },
		Listen: func() (*net.UDPConn, error) {
			mu.Lock()
			calls++
			mu.Unlock()
			return nil, errors.New("no sockets in this test")
		},
		Sides: &fakeSides{},
	}
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return calls
	}
}

// TestBirthdayCoordination: a hard side's upgrade attempt offers a search
// through the relay; an easy peer answers with its public ip:port and the
// hard side opens its sockets; a second attempt within SearchRetry offers
// nothing. Two hard sides never get that far.
func TestBirthdayCoordination(t *testing.T) {
	for _, tc := range []struct {
		name       string
		peerHard   bool
		wantListen bool
	}{
		{"easy peer", false, true},
		{"hard peer", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				defer drain()
				_, a, b := linkedPair()
				// No direct path: the plain punch fails, as between
				// an easy NAT and a hard one.
				a.w.setDelay(a.addr, 0, false)
				a.w.setDelay(b.addr, 0, false)
				listens := searcher(a, true)
				searcher(b, tc.peerHard)
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				a.run(ctx)
				b.run(ctx)
				synctest.Wait()
				a.m.RelaySent(b.key.Public())
				time.Sleep(3 * relayDelay) // offer, answer
				synctest.Wait()
				if got := listens() > 0; got != tc.wantListen {
					t.Fatalf("hard side opened sockets: %v, want %v", got, tc.wantListen)
				}
				first := listens()
				// The next attempt comes within SearchRetry: no new search.
				a.m.mu.Lock()
				a.m.peers[b.key.Public()].attempted = time.Time{}
				a.m.mu.Unlock()
				a.m.RelaySent(b.key.Public())
				time.Sleep(3 * relayDelay)
				synctest.Wait()
				if listens() != first {
					t.Fatalf("a second search within SearchRetry opened sockets")
				}
				cancel()
			})
		})
	}
}

// TestPrimedPunchOrder: with priming on, no full-TTL ping leaves either
// side towards the other before that other side has primed towards it:
// the initiator primes and announces, the peer primes and pings, and the
// path goes direct.
func TestPrimedPunchOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer drain()
		_, a, b := linkedPair()
		var mu sync.Mutex
		primed := map[[2]netip.AddrPort]bool{} // (from, to)
		var violations []string
		for _, n := range []*tnode{a, b} {
			n.m.cfg.Punch = &PunchConfig{Prime: func(_ []byte, dst netip.AddrPort) error {
				mu.Lock()
				primed[[2]netip.AddrPort{n.addr, dst}] = true
				mu.Unlock()
				return nil
			}}
			n.sent = func(dst netip.AddrPort) {
				mu.Lock()
				defer mu.Unlock()
				if !primed[[2]netip.AddrPort{dst, n.addr}] {
					violations = append(violations, n.addr.String()+" pinged "+dst.String()+" before it primed")
				}
			}
		}
		a.m.RelaySent(b.key.Public())
		time.Sleep(time.Second)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if len(violations) > 0 {
			t.Fatalf("pings before the peer primed: %v", violations)
		}
		if !primed[[2]netip.AddrPort{a.addr, b.addr}] || !primed[[2]netip.AddrPort{b.addr, a.addr}] {
			t.Fatalf("primed: %v, want both directions", primed)
		}
		if got := a.bind.path(b.key.Public()); got != "direct "+b.addr.String() {
			t.Fatalf("a's path to b: %s, want direct", got)
		}
	})
}

// TestPrimedRetry: with priming on, the first retry waits out the
// conntrack timeout, later ones the garbage collector's lag as well, and
// only the lower node key of a pair retries at that pace.
func TestPrimedRetry(t *testing.T) {
	_, a, b := linkedPair()
	for _, n := range []*tnode{a, b} {
		n.m.cfg.Punch = &PunchConfig{Prime: func([]byte, netip.AddrPort) error { return nil }}
	}
	low, high, lowPeer := a, b, b.key.Public()
	if keyLess(b.key.Public(), a.key.Public()) {
		low, high, lowPeer = b, a, a.key.Public()
	}
	now := time.Now()
	last := now.Add(-PrimedRetry)
	if !low.m.retryDue(lowPeer, last, 1, now) {
		t.Fatal("the lower key does not retry after PrimedRetry")
	}
	if high.m.retryDue(low.key.Public(), last, 1, now) {
		t.Fatal("the higher key retries at the lower key's pace")
	}
	if !high.m.retryDue(low.key.Public(), now.Add(-2*PrimedRetry), 1, now) {
		t.Fatal("the higher key never retries")
	}
	if low.m.retryDue(lowPeer, now.Add(-ConntrackUnreplied), 1, now) {
		t.Fatal("a retry inside the conntrack timeout")
	}
	if low.m.retryDue(lowPeer, last, 2, now) {
		t.Fatal("a second retry inside the conntrack collector's lag")
	}
	if !low.m.retryDue(lowPeer, now.Add(-PrimedRetrySlow), 2, now) {
		t.Fatal("no second retry after PrimedRetrySlow")
	}
	if !low.m.retryDue(lowPeer, time.Time{}, 0, now) || !high.m.retryDue(low.key.Public(), time.Time{}, 0, now) {
		t.Fatal("the first attempt is not due at once")
	}
	// Without priming: UpgradeRetry, whoever's key is lower.
	low.m.cfg.Punch, high.m.cfg.Punch = nil, nil
	if !high.m.retryDue(low.key.Public(), now.Add(-UpgradeRetry), 5, now) {
		t.Fatal("without priming the retry is not UpgradeRetry")
	}
}

// TestAttemptRounds: a node's attempt and the follow-up to the peer's
// call-me-maybe a moment later count as one round; an attempt after
// roundGap starts the next, and a direct path resets the count.
func TestAttemptRounds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer drain()
		_, a, b := linkedPair()
		a.w.setDelay(b.addr, 0, false) // no direct path yet
		k := b.key.Public()
		tries := func() int {
			a.m.mu.Lock()
			defer a.m.mu.Unlock()
			return a.m.peers[k].tries
		}
		a.m.attempt(k, true)
		a.m.attempt(k, false) // the follow-up, a moment later
		if got := tries(); got != 1 {
			t.Fatalf("after one round: %d tries", got)
		}
		time.Sleep(roundGap)
		a.m.attempt(k, true)
		if got := tries(); got != 2 {
			t.Fatalf("after two rounds: %d tries", got)
		}
		a.w.setDelay(b.addr, 5*time.Millisecond, true)
		a.m.attempt(k, false)
		time.Sleep(time.Second)
		synctest.Wait()
		if got := a.bind.path(k); got != "direct "+b.addr.String() {
			t.Fatalf("path %s, want direct", got)
		}
		if got := tries(); got != 0 {
			t.Fatalf("after a direct path: %d tries", got)
		}
	})
}
