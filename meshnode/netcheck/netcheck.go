// Package netcheck measures the relay regions and keeps this node's home
// relay: region probes, home choice (package geo holds the rules), home
// health pings and failover, and the hard-NAT check of a report.
//
//	every ProbeInterval: probe every region ─► History ─► Selector ─► OnHome
//	   STUN from the node's UDP socket (also yields the mapped address);
//	   if that fails, a ping over a QUIC or TLS relay connection
//	every HomeCheckInterval: ping the home relay; HomeMisses misses in a row,
//	   or a Restarting notice, mark the home region down ─► choose at once
//
// Probing every 10 s keeps a few minutes of samples (the history window)
// at a cost of one STUN packet per region per 10 s. Home health is checked
// faster because it bounds failover: two missed 500 ms pings take a node
// off a dead relay in about a second, inside the 3 s failover goal.
package netcheck

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wiremesh/wiremesh/geo"
	"github.com/wiremesh/wiremesh/meshnode/relays"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/relayclient"
)

// Timing; see the package comment.
const (
	ProbeInterval     = 10 * time.Second
	ProbeTimeout      = 900 * time.Millisecond
	HomeCheckInterval = 500 * time.Millisecond
	HomePingTimeout   = 500 * time.Millisecond
	HomeMisses        = 2
	// DownFor is how long a dead or draining region stays out of the
	// choice before probes may bring it back.
	DownFor = 30 * time.Second
	// stunRetryRounds is how often STUN is retried once UDP looks blocked.
	stunRetryRounds = 3
)

// STUN asks one relay for this socket's mapped address.
type STUN interface {
	Probe(ctx context.Context, relayAddr string) (netip.AddrPort, time.Duration, bool)
}

// Relays pings relays over relay connections (PoolPinger over a
// relayclient.Pool).
type Relays interface {
	// Probe connects to r if needed and measures a round trip.
	Probe(ctx context.Context, r relayclient.Relay) (time.Duration, string, error)
	// PingHome pings r over its current connection; none is an error.
	PingHome(ctx context.Context, r relayclient.Relay) error
	// Reset closes r's current connection so that its client redials.
	Reset(r relayclient.Relay)
}

// Prefs are this node's home preferences, beside the relay map's.
type Prefs struct {
	PinRegion      string
	ExcludeRegions []string
	RegionWeights  map[string]float64
}

// Metrics are the gauges and histograms a Checker feeds; any may be nil.
type Metrics struct {
	RegionRTT     *prometheus.GaugeVec     // by region
	RegionLatency *prometheus.HistogramVec // by region
}

// Config configures a Checker.
type Config struct {
	STUN STUN
	// UDP reports whether the node's UDP socket is open (STUN needs it).
	UDP    func() bool
	Relays Relays
	// Home returns the current home relay; OnHome moves it.
	Home    func() relayclient.Relay
	OnHome  func(r relayclient.Relay, reason string)
	Prefs   Prefs
	Metrics Metrics
	// OnUDP is told after each probe round whether UDP looks blocked
	// (STUN failed while relay pings worked). May be nil.
	OnUDP func(blocked bool)
	Log   *slog.Logger
	Now   func() time.Time
}

// Checker probes regions and keeps the home relay. Create it with New.
type Checker struct {
	cfg  Config
	kick chan struct{}

	mu       sync.Mutex
	rm       *netmap.RelayMap
	hist     *geo.History
	sel      *geo.Selector
	down     map[string]time.Time // region → when it was found dead
	draining map[string]time.Time // region → when its relay said Restarting
	misses   int
	// udpBlocked is set when a whole round's STUN failed while relay pings
	// worked: later rounds go straight to the ping (retrying STUN every
	// stunRetryRounds rounds), so a blocked network does not spend half of
	// every probe's time waiting for STUN.
	udpBlocked bool
	round      int
}

// New returns a Checker.
func New(cfg Config) *Checker {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Checker{cfg: cfg, kick: make(chan struct{}, 1), hist: geo.NewHistory(0), sel: geo.NewSelector(),
		down: map[string]time.Time{}, draining: map[string]time.Time{}}
}

// SetRelayMap gives the checker the current relay map; the first one
// starts probing.
func (c *Checker) SetRelayMap(rm netmap.RelayMap) {
	c.mu.Lock()
	first := c.rm == nil
	c.rm = &rm
	c.mu.Unlock()
	if first {
		c.poke()
	}
}

func (c *Checker) relayMap() *netmap.RelayMap {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rm
}

func (c *Checker) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// RelayDraining marks a region draining (its relay said Restarting) and
// re-chooses at once.
func (c *Checker) RelayDraining(region string) {
	c.mu.Lock()
	c.draining[region] = c.cfg.Now()
	c.mu.Unlock()
	c.poke()
}

// Run probes and chooses until ctx ends.
func (c *Checker) Run(ctx context.Context) {
	for c.relayMap() == nil {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		}
	}
	probe := time.NewTicker(ProbeInterval)
	defer probe.Stop()
	health := time.NewTicker(HomeCheckInterval)
	defer health.Stop()
	c.ProbeAll(ctx)
	c.Choose()
	for {
		select {
		case <-ctx.Done():
			return
		case <-probe.C:
			c.ProbeAll(ctx)
			c.Choose()
		case <-c.kick:
			c.Choose()
		case <-health.C:
			c.checkHome(ctx)
		}
	}
}

// probeRegion measures one region: STUN from the node's socket, else a ping
// over a relay connection (QUIC, or TLS over TCP when UDP is blocked).
func (c *Checker) probeRegion(ctx context.Context, code string) (time.Duration, string, netip.AddrPort, error) {
	rm := c.relayMap()
	if rm == nil {
		return 0, "", netip.AddrPort{}, errors.New("no relay map")
	}
	r, ok := relays.Pick(*rm, code)
	if !ok {
		return 0, "", netip.AddrPort{}, errors.New("region has no relays")
	}
	c.mu.Lock()
	tryUDP := c.cfg.UDP() && (!c.udpBlocked || c.round%stunRetryRounds == 0)
	c.mu.Unlock()
	if tryUDP {
		// STUN gets half the probe's time; the rest is for the fallback.
		budget := ProbeTimeout / 2
		if deadline, ok := ctx.Deadline(); ok {
			budget = deadline.Sub(c.cfg.Now()) / 2
		}
		sctx, cancel := context.WithTimeout(ctx, budget)
		m, rtt, ok := c.cfg.STUN.Probe(sctx, r.Addr)
		cancel()
		if ok {
			return rtt, "stun", m, nil
		}
	}
	rtt, transport, err := c.cfg.Relays.Probe(ctx, r)
	if err != nil {
		return 0, "", netip.AddrPort{}, err
	}
	return rtt, transport, netip.AddrPort{}, nil
}

// ProbeAll runs one round over every region and records the results.
func (c *Checker) ProbeAll(ctx context.Context) []geo.ProbeResult {
	rm := c.relayMap()
	if rm == nil {
		return nil
	}
	var codes []string
	for _, r := range rm.Regions {
		if len(r.Relays) > 0 {
			codes = append(codes, r.Code)
		}
	}
	res := geo.ProbeAll(ctx, codes, ProbeTimeout, c.probeRegion, c.cfg.Now)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.round++
	stunOK, pingOK := false, false
	for _, r := range res {
		stunOK = stunOK || r.Err == nil && r.Via == "stun"
		pingOK = pingOK || r.Err == nil && r.Via != "stun"
	}
	if stunOK {
		c.udpBlocked = false
	} else if pingOK {
		c.udpBlocked = true
	}
	if c.cfg.OnUDP != nil {
		c.cfg.OnUDP(c.udpBlocked)
	}
	for _, r := range res {
		if r.Err != nil {
			continue
		}
		delete(c.down, r.Region) // it answers again
		c.hist.Add(r.Sample)
		if g := c.cfg.Metrics.RegionRTT; g != nil {
			g.WithLabelValues(r.Region).Set(r.RTT.Seconds())
		}
		if h := c.cfg.Metrics.RegionLatency; h != nil {
			h.WithLabelValues(r.Region).Observe(r.RTT.Seconds())
		}
	}
	return res
}
