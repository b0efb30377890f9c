package netcheck

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/relayclient"
)

// fakeNet answers STUN and relay pings per relay address after a fixed
// round trip, unless the relay is dead (no answer) or UDP is blocked (no
// STUN answer).
type fakeNet struct {
	mu         sync.Mutex
	rtt        map[string]time.Duration
	dead       map[string]bool
	udpBlocked bool
	resets     int
	home       relayclient.Relay
	homes      []string // every OnHome, in order
}

func (f *fakeNet) answer(ctx context.Context, addr string, udp bool) (time.Duration, bool) {
	f.mu.Lock()
	rtt, dead, blocked := f.rtt[addr], f.dead[addr], f.udpBlocked && udp
	f.mu.Unlock()
	if dead || blocked {
		<-ctx.Done()
		return 0, false
	}
	t := time.NewTimer(rtt)
	defer t.Stop()
	select {
	case <-t.C:
		return rtt, true
	case <-ctx.Done():
		return 0, false
	}
}

func (f *fakeNet) Probe(ctx context.Context, addr string) (netip.AddrPort, time.Duration, bool) {
	rtt, ok := f.answer(ctx, addr, true)
	return netip.MustParseAddrPort("198.18.0.50:41641"), rtt, ok
}

type fakeRelays struct{ *fakeNet }

func (f fakeRelays) Probe(ctx context.Context, r relayclient.Relay) (time.Duration, string, error) {
	if rtt, ok := f.answer(ctx, r.Addr, false); ok {
		return rtt, "quic", nil
	}
	return 0, "", errors.New("no answer")
}

func (f fakeRelays) PingHome(ctx context.Context, r relayclient.Relay) error {
	_, _, err := f.Probe(ctx, r)
	return err
}

func (f fakeRelays) Reset(relayclient.Relay) {
	f.mu.Lock()
	f.resets++
	f.mu.Unlock()
}

func (f *fakeNet) Home() relayclient.Relay {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.home
}

func (f *fakeNet) OnHome(r relayclient.Relay, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.home = r
	f.homes = append(f.homes, r.Region)
}

func (f *fakeNet) current() string { return f.Home().Region }

var twoRegions = netmap.RelayMap{Regions: []netmap.Region{
	{Code: "nyc", Relays: []netmap.Relay{{Addr: "198.18.1.1:443", Healthy: true}}},
	{Code: "fra", Relays: []netmap.Relay{{Addr: "198.18.2.1:443", Healthy: true}}},
}}

func newTestChecker(prefs Prefs) (*Checker, *fakeNet) {
	f := &fakeNet{rtt: map[string]time.Duration{"198.18.1.1:443": 10 * time.Millisecond, "198.18.2.1:443": 60 * time.Millisecond},
		dead: map[string]bool{}}
	c := New(Config{STUN: f, UDP: func() bool { return true }, Relays: fakeRelays{f}, Home: f.Home, OnHome: f.OnHome, Prefs: prefs})
	return c, f
}

// TestFailover: the nearest region becomes home; when its relay stops
// answering, the node moves to the other region within HomeMisses health
// checks, resets the dead connection, and does not flap back while the
// region is down.
func TestFailover(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		c, f := newTestChecker(Prefs{})
		go c.Run(ctx)
		c.SetRelayMap(twoRegions)
		time.Sleep(time.Second)
		if got := f.current(); got != "nyc" {
			t.Fatalf("first home %q, want the nearest, nyc", got)
		}
		f.mu.Lock()
		f.dead["198.18.1.1:443"] = true
		f.mu.Unlock()
		died := time.Now()
		for f.current() != "fra" {
			time.Sleep(100 * time.Millisecond)
			if time.Since(died) > 10*time.Second {
				t.Fatal("no failover")
			}
		}
		if took := time.Since(died); took > (HomeMisses+1)*HomeCheckInterval+HomePingTimeout {
			t.Fatalf("failover took %v", took)
		}
		if f.resets == 0 {
			t.Fatal("dead home connection not reset")
		}
		time.Sleep(DownFor / 2) // probes keep failing for nyc
		if got := f.homes; len(got) != 2 {
			t.Fatalf("homes %v: moved again while nyc was down", got)
		}
	})
}

// TestPinnedAndDraining: a pinned region is home while usable; a
// Restarting notice from it moves home at once.
func TestPinnedAndDraining(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		c, f := newTestChecker(Prefs{PinRegion: "fra"})
		go c.Run(ctx)
		c.SetRelayMap(twoRegions)
		time.Sleep(time.Second)
		if got := f.current(); got != "fra" {
			t.Fatalf("home %q, want the pinned fra", got)
		}
		c.RelayDraining("fra")
		time.Sleep(100 * time.Millisecond)
		if got := f.current(); got != "nyc" {
			t.Fatalf("home %q after fra drained, want nyc", got)
		}
	})
}

// TestCheckUDPBlocked: with UDP blocked the report says so and still has
// latencies, measured over relay connections.
func TestCheckUDPBlocked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, f := newTestChecker(Prefs{})
		f.udpBlocked = true
		c.SetRelayMap(twoRegions)
		rep := c.Check(context.Background())
		if rep.UDP || rep.PublicAddr != "" || len(rep.RelayLatencyMS) != 2 || rep.PreferredRelay != "nyc" {
			t.Fatalf("report %+v", rep)
		}
		f.udpBlocked = false
		// STUN is retried every stunRetryRounds rounds once UDP looked
		// blocked.
		for i := 0; i < stunRetryRounds && !rep.UDP; i++ {
			rep = c.Check(context.Background())
		}
		if !rep.UDP || rep.PublicAddr != "198.18.0.50:41641" || rep.MappingVariesByDest {
			t.Fatalf("report with UDP %+v", rep)
		}
	})
}
