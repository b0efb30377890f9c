package routes

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// fakeHealth is a Health whose pongs and relay presence the test sets.
type fakeHealth struct {
	mu       sync.Mutex
	pong     map[key.NodePublic]time.Time
	presence map[key.NodePublic]bool
}

func newFakeHealth() *fakeHealth {
	return &fakeHealth{pong: map[key.NodePublic]time.Time{}, presence: map[key.NodePublic]bool{}}
}

func (h *fakeHealth) LastPong(p key.NodePublic) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pong[p]
}

func (h *fakeHealth) RelayPresent(p key.NodePublic) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.presence[p]
}

func (h *fakeHealth) setPong(p key.NodePublic, t time.Time) {
	h.mu.Lock()
	h.pong[p] = t
	h.mu.Unlock()
}

func (h *fakeHealth) setPresent(p key.NodePublic, v bool) {
	h.mu.Lock()
	h.presence[p] = v
	h.mu.Unlock()
}

// sortedKeys returns n node keys in the Selector's key order.
func sortedKeys(n int) []key.NodePublic {
	ks := make([]key.NodePublic, n)
	for i := range ks {
		ks[i] = key.NewNode().Public()
	}
	slices.SortFunc(ks, cmpKey)
	return ks
}

var lan = netip.MustParsePrefix("198.19.50.0/24")

func TestSelectPrefersLowestHealthyKey(t *testing.T) {
	ks := sortedKeys(2)
	h := newFakeHealth()
	now := time.Unix(1000, 0)
	h.setPong(ks[0], now)
	h.setPong(ks[1], now)
	s := New(Config{Health: h})
	s.SetOffers(map[key.NodePublic][]netip.Prefix{ks[1]: {lan}, ks[0]: {lan}})
	got, changed := s.Evaluate(now)
	want := []Route{{Prefix: lan, Primary: ks[0], Up: true}}
	if !changed || !slices.Equal(got, want) {
		t.Fatalf("got %v changed=%v, want %v", got, changed, want)
	}
	if _, changed := s.Evaluate(now.Add(time.Millisecond)); changed {
		t.Fatal("second evaluation with nothing new reported a change")
	}
}

func TestSelectEvidenceBeatsRelayPresence(t *testing.T) {
	ks := sortedKeys(2)
	h := newFakeHealth()
	now := time.Unix(1000, 0)
	h.setPresent(ks[0], true)
	s := New(Config{Health: h})
	s.SetOffers(map[key.NodePublic][]netip.Prefix{ks[0]: {lan}, ks[1]: {lan}})
	// Nothing has answered yet: the present router is a guess, and up.
	if got, _ := s.Evaluate(now); got[0].Primary != ks[0] || !got[0].Up {
		t.Fatalf("startup guess: got %+v, want %v up", got[0], ks[0].ShortString())
	}
	// ks[1] answers, ks[0] still has not: proof wins over presence.
	h.setPong(ks[1], now)
	if got, _ := s.Evaluate(now); got[0].Primary != ks[1] {
		t.Fatalf("got %+v, want %v", got[0], ks[1].ShortString())
	}
}

func TestSelectDownWhenNoneAlive(t *testing.T) {
	ks := sortedKeys(2)
	h := newFakeHealth()
	now := time.Unix(1000, 0)
	h.setPong(ks[0], now)
	// A router that answered once and stopped is dead even if its relay
	// still lists it: a SIGKILLed node stays present until the relay notices.
	h.setPresent(ks[0], true)
	s := New(Config{Health: h})
	s.SetOffers(map[key.NodePublic][]netip.Prefix{ks[0]: {ExitPrefix}, ks[1]: {ExitPrefix}})
	s.Evaluate(now)
	got, changed := s.Evaluate(now.Add(DefaultDeadAfter + time.Millisecond))
	if !changed || got[0].Up || !got[0].Primary.IsZero() {
		t.Fatalf("got %+v changed=%v, want down with no primary", got[0], changed)
	}
}

// TestSelectFailoverWithinSeconds runs a pinger and the Selector's loop on
// synctest's fake clock: the primary stops answering and the standby takes
// over within DeadAfter + EvalInterval of its death; when the
// old primary returns, traffic stays on the standby (no flap back).
func TestSelectFailoverWithinSeconds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ks := sortedKeys(2)
		primary, standby := ks[0], ks[1]
		h := newFakeHealth()
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()

		var mu sync.Mutex
		alive := map[key.NodePublic]bool{primary: true, standby: true}
		go func() { // the node's pinger: live routers answer each ping
			tk := time.NewTicker(PingInterval)
			defer tk.Stop()
			for {
				mu.Lock()
				for p, ok := range alive {
					if ok {
						h.setPong(p, time.Now())
					}
				}
				mu.Unlock()
				select {
				case <-ctx.Done():
					return
				case <-tk.C:
				}
			}
		}()
		synctest.Wait() // the first pings are answered

		type change struct {
			at     time.Time
			routes []Route
		}
		changes := make(chan change, 16)
		s := New(Config{Health: h})
		s.SetOffers(map[key.NodePublic][]netip.Prefix{primary: {lan}, standby: {lan}})
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.Run(ctx, func(r []Route) { changes <- change{time.Now(), r} })
		}()
		first := <-changes
		if first.routes[0].Primary != primary || !first.routes[0].Up {
			t.Fatalf("initial: %+v", first.routes)
		}

		time.Sleep(10 * time.Second) // steady state: no changes
		synctest.Wait()
		if len(changes) != 0 {
			t.Fatalf("changes while both routers answer: %+v", <-changes)
		}

		mu.Lock()
		alive[primary] = false
		mu.Unlock()
		died := time.Now()
		c := <-changes
		gap := c.at.Sub(died)
		if c.routes[0].Primary != standby || !c.routes[0].Up {
			t.Fatalf("after death: %+v", c.routes)
		}
		if limit := DefaultDeadAfter + EvalInterval; gap > limit {
			t.Fatalf("failover took %v, limit %v", gap, limit)
		}
		t.Logf("failover %v after the primary's death", gap)

		mu.Lock()
		alive[primary] = true
		mu.Unlock()
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if len(changes) != 0 {
			t.Fatalf("flapped back to the old primary: %+v", <-changes)
		}
		cancel()
		<-done
	})
}

// TestSelectFlakyRouterRecovers: a router that was dead is "recovering"
// until it has answered for RecoverAfter; recovering routers are used only
// when nothing healthy is left, and a router coming back never takes the
// route from the current primary.
func TestSelectFlakyRouterRecovers(t *testing.T) {
	ks := sortedKeys(3)
	a, b, c := ks[0], ks[1], ks[2]
	h := newFakeHealth()
	t0 := time.Unix(1000, 0)
	s := New(Config{Health: h})
	s.SetOffers(map[key.NodePublic][]netip.Prefix{a: {lan}, b: {lan}, c: {lan}})
	for _, p := range ks {
		h.setPong(p, t0)
	}
	if got, _ := s.Evaluate(t0); got[0].Primary != a {
		t.Fatalf("initial %+v", got)
	}
	// a dies; b is answering, c goes quiet too.
	t1 := t0.Add(DefaultDeadAfter + time.Millisecond)
	h.setPong(b, t1)
	if got, _ := s.Evaluate(t1); got[0].Primary != b {
		t.Fatalf("after a died: %+v", got)
	}
	// a comes back; b dies right after. a has answered for less than
	// RecoverAfter, c is still dead: a is the best there is (recovering).
	t2 := t1.Add(time.Millisecond)
	h.setPong(a, t2)
	s.Evaluate(t2)
	c2 := t2.Add(10 * time.Millisecond)
	h.setPong(c, c2) // c was dead too: it is recovering from now on
	t3 := t1.Add(DefaultDeadAfter + 2*time.Millisecond)
	h.setPong(a, t3)
	h.setPong(c, t3)
	got, _ := s.Evaluate(t3)
	if got[0].Primary != a || !got[0].Up {
		t.Fatalf("b dead, a and c recovering: %+v, want a (first in order)", got)
	}
	// Now a flaps off and c has proven itself for RecoverAfter: c is healthy.
	t4 := c2.Add(DefaultRecoverAfter)
	h.setPong(c, t4)
	t5 := t3.Add(DefaultDeadAfter + time.Millisecond)
	h.setPong(c, t5)
	got, _ = s.Evaluate(t5)
	if got[0].Primary != c {
		t.Fatalf("a flapped off: %+v, want c", got)
	}
	// a answers again, briefly: c keeps the route.
	h.setPong(a, t5)
	if got, _ = s.Evaluate(t5.Add(time.Millisecond)); got[0].Primary != c {
		t.Fatalf("returning a took the route from c: %+v", got)
	}
}

func TestSelectMostSpecificWins(t *testing.T) {
	ks := sortedKeys(3)
	wide, narrow, exit := ks[0], ks[1], ks[2]
	h := newFakeHealth()
	now := time.Unix(1000, 0)
	h.setPong(wide, now)
	h.setPong(exit, now)
	// narrow never answers and is absent: its /24 is down.
	s := New(Config{Health: h})
	s.SetOffers(map[key.NodePublic][]netip.Prefix{
		wide:   {netip.MustParsePrefix("198.19.0.0/16")},
		narrow: {netip.MustParsePrefix("198.19.50.0/24")},
		exit:   {ExitPrefix},
	})
	s.Evaluate(now)
	for _, tc := range []struct {
		dst     string
		prefix  string
		primary key.NodePublic
		up      bool
	}{
		{"198.19.50.7", "198.19.50.0/24", key.NodePublic{}, false},
		{"198.19.51.7", "198.19.0.0/16", wide, true},
		{"198.18.0.9", "0.0.0.0/0", exit, true},
	} {
		r, ok := s.Lookup(netip.MustParseAddr(tc.dst))
		if !ok || r.Prefix.String() != tc.prefix || r.Primary != tc.primary || r.Up != tc.up {
			t.Errorf("Lookup(%s) = %+v %v, want %s via %v up=%v", tc.dst, r, ok, tc.prefix, tc.primary.ShortString(), tc.up)
		}
	}
	got := s.Routes()
	var order []string
	for _, r := range got {
		order = append(order, r.Prefix.String())
	}
	if want := []string{"198.19.50.0/24", "198.19.0.0/16", "0.0.0.0/0"}; !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
}

func TestSelectWithdrawnOffer(t *testing.T) {
	ks := sortedKeys(2)
	h := newFakeHealth()
	now := time.Unix(1000, 0)
	h.setPong(ks[0], now)
	h.setPong(ks[1], now)
	s := New(Config{Health: h})
	s.SetOffers(map[key.NodePublic][]netip.Prefix{ks[0]: {lan}, ks[1]: {lan}})
	s.Evaluate(now)
	s.SetOffers(map[key.NodePublic][]netip.Prefix{ks[1]: {lan}})
	if got, _ := s.Evaluate(now); got[0].Primary != ks[1] {
		t.Fatalf("after unapproval of the primary: %+v", got)
	}
	s.SetOffers(nil)
	if got, changed := s.Evaluate(now); len(got) != 0 || !changed {
		t.Fatalf("no offers: %+v changed=%v", got, changed)
	}
}

func TestSelectOfferBounds(t *testing.T) {
	h := newFakeHealth()
	s := New(Config{Health: h})
	offers := map[key.NodePublic][]netip.Prefix{}
	total := 0
	for i := 0; total <= MaxOffers; i++ {
		ps := make([]netip.Prefix, MaxAdvertised)
		for j := range ps {
			ps[j] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), byte(j), 0}), 24)
		}
		offers[key.NewNode().Public()] = ps
		total += len(ps)
	}
	offers[key.NewNode().Public()] = []netip.Prefix{{}, netip.MustParsePrefix("198.19.1.1/24")}
	ignored := s.SetOffers(offers)
	if ignored < total-MaxOffers+2 {
		t.Fatalf("ignored %d, want at least %d", ignored, total-MaxOffers+2)
	}
	if got, _ := s.Evaluate(time.Unix(1, 0)); len(got) > MaxOffers {
		t.Fatalf("%d routes tracked, cap %d", len(got), MaxOffers)
	}
}

// TestSelectHealthyBeatsRecovering: when the primary dies, a router that
// has answered all along wins over one just back from the dead, even one
// earlier in key order.
func TestSelectHealthyBeatsRecovering(t *testing.T) {
	ks := sortedKeys(3)
	back, steady, primary := ks[0], ks[1], ks[2]
	h := newFakeHealth()
	t0 := time.Unix(1000, 0)
	h.setPong(back, t0.Add(-10*time.Second)) // answered once, long ago: dead
	h.setPong(primary, t0)
	s := New(Config{Health: h})
	s.SetOffers(map[key.NodePublic][]netip.Prefix{back: {lan}, steady: {lan}, primary: {lan}})
	if got, _ := s.Evaluate(t0); got[0].Primary != primary {
		t.Fatalf("initial: %+v", got)
	}
	h.setPong(steady, t0.Add(time.Millisecond))
	if got, _ := s.Evaluate(t0.Add(time.Millisecond)); got[0].Primary != primary {
		t.Fatalf("a new healthy router took the route from a working primary: %+v", got)
	}
	t1 := t0.Add(2 * time.Second) // primary's last pong is now stale
	h.setPong(back, t1)
	h.setPong(steady, t1)
	if got, _ := s.Evaluate(t1); got[0].Primary != steady || !got[0].Up {
		t.Fatalf("primary dead: %+v, want the steady router, not the one just back", got)
	}
}
