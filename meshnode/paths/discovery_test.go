package paths

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

type fakeNet struct {
	mu       sync.Mutex
	local    []netip.Addr
	relays   []string
	mapped   map[string]netip.AddrPort
	reports  [][]netip.AddrPort
	changed  int
	announce int
	hard     bool
}

func (f *fakeNet) ProbeAll(ctx context.Context, relays []string) map[string]netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]netip.AddrPort{}
	for _, r := range relays {
		if m, ok := f.mapped[r]; ok {
			out[r] = m
		}
	}
	return out
}
func (f *fakeNet) NetworkChanged() { f.mu.Lock(); f.changed++; f.mu.Unlock() }
func (f *fakeNet) Announce()       { f.mu.Lock(); f.announce++; f.mu.Unlock() }

func (f *fakeNet) snapshot() ([][]netip.AddrPort, int, int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reports), f.changed, f.announce, f.hard
}

func newFakeDiscovery(f *fakeNet) *Discovery {
	return NewDiscovery(DiscoveryConfig{
		LocalAddrs: func() []netip.Addr { f.mu.Lock(); defer f.mu.Unlock(); return slices.Clone(f.local) },
		Port:       func() uint16 { return 41641 },
		Relays:     func() []string { f.mu.Lock(); defer f.mu.Unlock(); return slices.Clone(f.relays) },
		STUN:       f,
		Report:     func(eps []netip.AddrPort) { f.mu.Lock(); f.reports = append(f.reports, eps); f.mu.Unlock() },
		NAT:        func(_ int, h bool) { f.mu.Lock(); f.hard = h; f.mu.Unlock() },
		Paths:      f,
	})
}

// TestDiscovery: endpoints are reported once a relay map exists; a local
// address change drops direct paths, re-discovers and announces; a hard
// NAT adds the port-preservation guess.
func TestDiscovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		f := &fakeNet{local: []netip.Addr{netip.MustParseAddr("198.18.0.10")},
			mapped: map[string]netip.AddrPort{"198.18.1.1:3478": netip.MustParseAddrPort("198.18.200.1:5000")}}
		d := newFakeDiscovery(f)
		go d.Run(ctx)
		time.Sleep(time.Second)
		if reps, _, _, _ := f.snapshot(); len(reps) != 0 {
			t.Fatalf("reported %v with no relay map", reps)
		}
		f.mu.Lock()
		f.relays = []string{"198.18.1.1:3478"}
		f.mu.Unlock()
		d.Kick()
		time.Sleep(NetCheckEvery)
		reps, _, _, hard := f.snapshot()
		want := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.10:41641"), netip.MustParseAddrPort("198.18.200.1:5000")}
		if len(reps) != 1 || !slices.Equal(reps[0], want) || hard || !slices.Equal(d.Endpoints(), want) {
			t.Fatalf("first report %v (hard %v), want %v", reps, hard, want)
		}
		// The node moves: new local address.
		f.mu.Lock()
		f.local = []netip.Addr{netip.MustParseAddr("198.18.0.20")}
		f.mu.Unlock()
		time.Sleep(2 * NetCheckEvery)
		reps, changed, announced, _ := f.snapshot()
		if changed != 1 || announced != 1 || len(reps) != 2 || reps[1][0] != netip.MustParseAddrPort("198.18.0.20:41641") {
			t.Fatalf("after the move: reports %v, changed %d, announced %d", reps, changed, announced)
		}
		// Nothing changes: STUN is redone every RestunInterval, nothing reported.
		time.Sleep(RestunInterval + time.Second)
		if reps, _, _, _ = f.snapshot(); len(reps) != 2 {
			t.Fatalf("unchanged endpoints reported again: %v", reps)
		}
		// Two relays see different ports: a hard NAT.
		f.mu.Lock()
		f.relays = append(f.relays, "198.18.2.1:3478")
		f.mapped["198.18.2.1:3478"] = netip.MustParseAddrPort("198.18.200.1:6000")
		f.mu.Unlock()
		time.Sleep(RestunInterval + time.Second)
		reps, _, _, hard = f.snapshot()
		last := reps[len(reps)-1]
		if !hard || !slices.Contains(last, netip.MustParseAddrPort("198.18.200.1:41641")) {
			t.Fatalf("hard NAT: %v (hard %v)", last, hard)
		}
	})
}
