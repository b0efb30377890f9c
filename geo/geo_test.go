package geo

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"
)

const ms = time.Millisecond

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func regions(codes ...string) []Region {
	var out []Region
	for _, c := range codes {
		out = append(out, Region{Code: c})
	}
	return out
}

func TestChoose(t *testing.T) {
	for _, tc := range []struct {
		name       string
		home       string
		regions    []Region
		lat        map[string]time.Duration
		want       string
		wantReason Reason
	}{
		{"initial lowest", "", regions("nyc", "fra", "sin"), map[string]time.Duration{"nyc": 30 * ms, "fra": 5 * ms, "sin": 200 * ms}, "fra", ReasonInitial},
		{"unmeasured ignored", "", regions("nyc", "fra"), map[string]time.Duration{"nyc": 30 * ms}, "nyc", ReasonInitial},
		{"nothing usable", "nyc", regions("nyc"), map[string]time.Duration{}, "", ReasonNone},
		{"keep: not 10ms better", "nyc", regions("nyc", "fra"), map[string]time.Duration{"nyc": 20 * ms, "fra": 11 * ms}, "nyc", ReasonKeep},
		{"keep: 10ms but not 33% better", "nyc", regions("nyc", "fra"), map[string]time.Duration{"nyc": 100 * ms, "fra": 80 * ms}, "nyc", ReasonKeep},
		{"switch: both margins", "nyc", regions("nyc", "fra"), map[string]time.Duration{"nyc": 100 * ms, "fra": 60 * ms}, "fra", ReasonLatency},
		{"switch: exact margins", "nyc", regions("nyc", "fra"), map[string]time.Duration{"nyc": 30 * ms, "fra": 20 * ms}, "fra", ReasonLatency},
		{"home down", "nyc", []Region{{Code: "nyc", Down: true}, {Code: "fra"}}, map[string]time.Duration{"nyc": 1 * ms, "fra": 90 * ms}, "fra", ReasonHomeDown},
		{"home unmeasured", "nyc", regions("nyc", "fra"), map[string]time.Duration{"fra": 90 * ms}, "fra", ReasonHomeDown},
		{"home draining", "nyc", []Region{{Code: "nyc", Draining: true}, {Code: "fra"}}, map[string]time.Duration{"nyc": 1 * ms, "fra": 90 * ms}, "fra", ReasonHomeAvoided},
		{"home overloaded", "nyc", []Region{{Code: "nyc", Overloaded: true}, {Code: "fra"}}, map[string]time.Duration{"nyc": 1 * ms, "fra": 90 * ms}, "fra", ReasonHomeAvoided},
		{"draining used when alone", "", []Region{{Code: "nyc", Draining: true}}, map[string]time.Duration{"nyc": 1 * ms}, "nyc", ReasonInitial},
		{"home excluded", "nyc", []Region{{Code: "nyc", Excluded: true}, {Code: "fra"}}, map[string]time.Duration{"nyc": 1 * ms, "fra": 90 * ms}, "fra", ReasonExcluded},
		{"excluded never", "", []Region{{Code: "nyc", Excluded: true}}, map[string]time.Duration{"nyc": 1 * ms}, "", ReasonNone},
		{"pinned beats latency", "", []Region{{Code: "nyc"}, {Code: "sin", Pinned: true}}, map[string]time.Duration{"nyc": 1 * ms, "sin": 200 * ms}, "sin", ReasonPinned},
		{"pinned but down", "", []Region{{Code: "nyc"}, {Code: "sin", Pinned: true, Down: true}}, map[string]time.Duration{"nyc": 1 * ms, "sin": 200 * ms}, "nyc", ReasonInitial},
		{"weight penalises", "", []Region{{Code: "nyc", Weight: 3}, {Code: "fra"}}, map[string]time.Duration{"nyc": 10 * ms, "fra": 25 * ms}, "fra", ReasonInitial},
		{"weight favours", "fra", []Region{{Code: "nyc", Weight: 0.25}, {Code: "fra"}}, map[string]time.Duration{"nyc": 40 * ms, "fra": 25 * ms}, "nyc", ReasonLatency},
		{"tie broken by code", "", regions("b", "a"), map[string]time.Duration{"a": 5 * ms, "b": 5 * ms}, "a", ReasonInitial},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSelector()
			s.SetHome(tc.home)
			d := s.Choose(tc.regions, tc.lat)
			if d.Region != tc.want || d.Reason != tc.wantReason {
				t.Fatalf("Choose = %v, want %s (%s)", d, tc.want, tc.wantReason)
			}
			if d.Changed != (tc.want != tc.home) {
				t.Fatalf("Changed = %v with home %q → %q", d.Changed, tc.home, d.Region)
			}
			if s.Home() != tc.want {
				t.Fatalf("Home() = %q after decision %q", s.Home(), tc.want)
			}
		})
	}
}

func TestHistoryMedianAndWindow(t *testing.T) {
	h := NewHistory(time.Minute)
	if _, ok := h.Latency("nyc", t0); ok {
		t.Fatal("latency with no samples")
	}
	for i, d := range []time.Duration{10, 11, 500, 12, 9} {
		h.Add(Sample{Region: "nyc", RTT: d * ms, At: t0.Add(time.Duration(i) * time.Second)})
	}
	if d, _ := h.Latency("nyc", t0.Add(5*time.Second)); d != 11*ms {
		t.Fatalf("median = %v, want 11ms (one outlier ignored)", d)
	}
	if _, ok := h.Latency("nyc", t0.Add(2*time.Minute)); ok {
		t.Fatal("stale samples used")
	}
	// Only the last few samples count: a lasting change shows quickly.
	for i := 0; i < 3; i++ {
		h.Add(Sample{Region: "nyc", RTT: 60 * ms, At: t0.Add(10 * time.Second)})
	}
	if d, _ := h.Latency("nyc", t0.Add(10*time.Second)); d != 60*ms {
		t.Fatalf("after 3 slow samples median = %v, want 60ms", d)
	}
	if s, _ := h.Last("nyc"); s.RTT != 60*ms {
		t.Fatalf("Last = %v", s)
	}
	h.Forget("nyc")
	if len(h.Latencies(t0)) != 0 {
		t.Fatal("Forget kept samples")
	}
}

func TestHistoryBounded(t *testing.T) {
	h := NewHistory(0)
	for i := 0; i < 10*maxSamples; i++ {
		h.Add(Sample{Region: "nyc", RTT: ms, At: t0})
	}
	if n := len(h.samples["nyc"]); n != maxSamples {
		t.Fatalf("%d samples kept, want %d", n, maxSamples)
	}
	for i := 0; i < 2*MaxRegions; i++ {
		h.Add(Sample{Region: string(rune('a'+i%26)) + string(rune(i)), RTT: ms, At: t0})
	}
	if len(h.samples) > MaxRegions {
		t.Fatalf("%d regions tracked", len(h.samples))
	}
}

// TestNoFlapUnderJitter simulates 60 s of probes every second with ±5 ms of
// jitter on two regions 4 ms apart: the home must never change.
func TestNoFlapUnderJitter(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	jit := func() time.Duration { return time.Duration(rng.Int64N(int64(10*ms)+1)) - 5*ms }
	h := NewHistory(0)
	s := NewSelector()
	rs := regions("nyc", "bos")
	changes := 0
	for sec := 0; sec < 60; sec++ {
		now := t0.Add(time.Duration(sec) * time.Second)
		h.Add(Sample{Region: "nyc", RTT: 20*ms + jit(), At: now})
		h.Add(Sample{Region: "bos", RTT: 24*ms + jit(), At: now})
		d := s.Choose(rs, h.Latencies(now))
		if d.Changed && sec > 0 {
			changes++
		}
	}
	if changes != 0 {
		t.Fatalf("home changed %d times under jitter", changes)
	}
	// Now +50 ms on the home region moves it within a few probes.
	home := s.Home()
	other := "bos"
	if home == "bos" {
		other = "nyc"
	}
	moved := -1
	for sec := 60; sec < 70; sec++ {
		now := t0.Add(time.Duration(sec) * time.Second)
		h.Add(Sample{Region: home, RTT: 70*ms + jit(), At: now})
		h.Add(Sample{Region: other, RTT: 24*ms + jit(), At: now})
		if d := s.Choose(rs, h.Latencies(now)); d.Changed {
			if d.Region != other || d.Reason != ReasonLatency {
				t.Fatalf("moved to %v", d)
			}
			moved = sec - 60
			break
		}
	}
	if moved < 0 || moved > medianOf {
		t.Fatalf("did not move within %d probes (moved=%d)", medianOf, moved)
	}
}

func TestMappingVariesByDest(t *testing.T) {
	a := netip.MustParseAddrPort("198.18.3.2:41641")
	b := netip.MustParseAddrPort("198.18.3.2:5000")
	for _, tc := range []struct {
		name string
		obs  map[string]netip.AddrPort
		want bool
	}{
		{"none", nil, false},
		{"one", map[string]netip.AddrPort{"nyc": a}, false},
		{"same", map[string]netip.AddrPort{"nyc": a, "fra": a}, false},
		{"differ", map[string]netip.AddrPort{"nyc": a, "fra": b}, true},
		{"invalid ignored", map[string]netip.AddrPort{"nyc": a, "fra": {}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := MappingVariesByDest(tc.obs); got != tc.want {
				t.Fatalf("got %v", got)
			}
		})
	}
}

func TestProbeAllParallel(t *testing.T) {
	codes := []string{"r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"}
	// Every probe waits until all ten are in flight: the round only
	// completes if they run in parallel.
	var arrived sync.WaitGroup
	arrived.Add(len(codes))
	probe := func(ctx context.Context, region string) (time.Duration, string, netip.AddrPort, error) {
		arrived.Done()
		done := make(chan struct{})
		go func() { arrived.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			return 0, "", netip.AddrPort{}, ctx.Err()
		}
		if region == "r3" {
			return 0, "", netip.AddrPort{}, errors.New("unreachable")
		}
		return time.Duration(len(region)) * ms, "stun", netip.MustParseAddrPort("198.18.0.2:1"), nil
	}
	res := ProbeAll(context.Background(), codes, 10*time.Second, probe, func() time.Time { return t0 })
	if len(res) != len(codes) {
		t.Fatalf("%d results", len(res))
	}
	for i, r := range res {
		if r.Region != codes[i] {
			t.Fatalf("result %d is for %s", i, r.Region)
		}
		if (r.Err != nil) != (r.Region == "r3") {
			t.Fatalf("%s: err %v", r.Region, r.Err)
		}
	}
}

func TestProbeAllTimeout(t *testing.T) {
	probe := func(ctx context.Context, region string) (time.Duration, string, netip.AddrPort, error) {
		<-ctx.Done()
		return 0, "", netip.AddrPort{}, ctx.Err()
	}
	res := ProbeAll(context.Background(), []string{"a", "b"}, time.Millisecond, probe, time.Now)
	for _, r := range res {
		if !errors.Is(r.Err, context.DeadlineExceeded) {
			t.Fatalf("%s: %v", r.Region, r.Err)
		}
	}
}

func BenchmarkChoose20(b *testing.B) {
	var rs []Region
	lat := map[string]time.Duration{}
	for i := 0; i < 20; i++ {
		c := string(rune('a' + i))
		rs = append(rs, Region{Code: c})
		lat[c] = time.Duration(i+1) * ms
	}
	s := NewSelector()
	for b.Loop() {
		s.Choose(rs, lat)
	}
}
