package meshnode

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/geo"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/meshnode/relays"
	"github.com/wiremesh/wiremesh/netmap"
)

// Home-relay choice by latency (package geo holds the rules):
//
//	every probeInterval: probe every region ─► History ─► Selector ─► setHome
//	   STUN from the node's UDP socket (also yields the mapped address);
//	   if that fails, a ping over a QUIC or TLS relay connection
//	every homeCheckInterval: ping the home relay; homeMisses misses in a row,
//	   or a Restarting notice, mark the home region down ─► choose at once
//
// Probing every 10 s keeps a few minutes of samples (the history window)
// at a cost of one STUN packet per region per 10 s. Home health is checked
// faster because it bounds failover: two missed 500 ms pings take a node
// off a dead relay in about a second, inside the 3 s failover goal.
const (
	probeInterval     = 10 * time.Second
	probeTimeout      = 900 * time.Millisecond
	homeCheckInterval = 500 * time.Millisecond
	homePingTimeout   = 500 * time.Millisecond
	homeMisses        = 2
)

type geoState struct {
	n *Node

	mu       sync.Mutex
	hist     *geo.History
	sel      *geo.Selector
	latest   map[string]geo.ProbeResult
	down     map[string]time.Time // region → when it was found dead
	draining map[string]bool
	misses   int
	kick     chan struct{}
	// udpBlocked is set when a whole round's STUN failed while relay pings
	// worked: later rounds go straight to the ping (retrying STUN every
	// stunRetryRounds rounds), so a blocked network does not spend half of
	// every probe's time waiting for STUN.
	udpBlocked bool
	round      int
}

// stunRetryRounds is how often STUN is retried once UDP looks blocked.
const stunRetryRounds = 3

func newGeoState(n *Node) *geoState {
	return &geoState{n: n, hist: geo.NewHistory(0), sel: geo.NewSelector(),
		latest: map[string]geo.ProbeResult{}, down: map[string]time.Time{}, draining: map[string]bool{},
		kick: make(chan struct{}, 1)}
}

// downFor is how long a dead region stays out of the choice before probes
// may bring it back.
const downFor = 30 * time.Second

// probeRegion measures one region: STUN from the node's socket, else a ping
// over a relay connection (QUIC, or TLS over TCP when UDP is blocked).
func (g *geoState) probeRegion(ctx context.Context, code string) (time.Duration, string, netip.AddrPort, error) {
	n := g.n
	n.mu.Lock()
	nm := n.mu.nm
	n.mu.Unlock()
	if nm == nil {
		return 0, "", netip.AddrPort{}, errors.New("no relay map")
	}
	r, ok := relays.Pick(nm.RelayMap, code)
	if !ok {
		return 0, "", netip.AddrPort{}, errors.New("region has no relays")
	}
	g.mu.Lock()
	tryUDP := n.bind.Port() != 0 && (!g.udpBlocked || g.round%stunRetryRounds == 0)
	g.mu.Unlock()
	if tryUDP {
		// STUN gets half the probe's time; the rest is for the fallback.
		deadline, _ := ctx.Deadline()
		sctx, cancel := context.WithTimeout(ctx, time.Until(deadline)/2)
		m, rtt, ok := n.stun.Probe(sctx, r.Addr)
		cancel()
		if ok {
			return rtt, "stun", m, nil
		}
	}
	c, err := n.pool.Get(r)
	if err != nil {
		return 0, "", netip.AddrPort{}, err
	}
	conn, err := c.WaitConnected(ctx)
	if err != nil {
		return 0, "", netip.AddrPort{}, err
	}
	rtt, err := conn.Ping(ctx)
	if err != nil {
		return 0, "", netip.AddrPort{}, err
	}
	return rtt, conn.Transport(), netip.AddrPort{}, nil
}

// probeAll runs one round over every region and records the results.
func (g *geoState) probeAll(ctx context.Context) []geo.ProbeResult {
	g.n.mu.Lock()
	nm := g.n.mu.nm
	g.n.mu.Unlock()
	if nm == nil {
		return nil
	}
	var codes []string
	for _, r := range nm.RelayMap.Regions {
		if len(r.Relays) > 0 {
			codes = append(codes, r.Code)
		}
	}
	res := geo.ProbeAll(ctx, codes, probeTimeout, g.probeRegion, time.Now)
	g.mu.Lock()
	g.round++
	stunOK, pingOK := false, false
	for _, r := range res {
		stunOK = stunOK || r.Err == nil && r.Via == "stun"
		pingOK = pingOK || r.Err == nil && r.Via != "stun"
	}
	if stunOK {
		g.udpBlocked = false
	} else if pingOK {
		g.udpBlocked = true
	}
	for _, r := range res {
		if r.Err != nil {
			continue
		}
		delete(g.down, r.Region) // it answers again
		g.hist.Add(r.Sample)
		g.latest[r.Region] = r
		g.n.metrics.regionRTT.WithLabelValues(r.Region).Set(r.RTT.Seconds())
		g.n.metrics.regionLatency.WithLabelValues(r.Region).Observe(r.RTT.Seconds())
	}
	g.mu.Unlock()
	return res
}

// regions describes the map's regions for the selector: operator and
// per-node preferences, relay health, and regions found dead.
func (g *geoState) regions(nm *netmap.NetworkMap) []geo.Region {
	cfg := g.n.cfg
	now := time.Now()
	var out []geo.Region
	for _, r := range nm.RelayMap.Regions {
		gr := geo.Region{Code: r.Code, Weight: r.Weight, Pinned: r.Pinned, Excluded: r.Excluded}
		if w, ok := cfg.RegionWeights[r.Code]; ok {
			gr.Weight = w
		}
		if cfg.PinRegion != "" {
			gr.Pinned = r.Code == cfg.PinRegion
		}
		for _, x := range cfg.ExcludeRegions {
			if x == r.Code {
				gr.Excluded = true
			}
		}
		healthy, draining, overloaded := 0, 0, 0
		for _, rl := range r.Relays {
			switch {
			case rl.State == netmap.RelayDraining:
				draining++
			case rl.State == netmap.RelayOverloaded:
				overloaded++
			case rl.Healthy:
				healthy++
			}
		}
		gr.Draining = g.draining[r.Code] || (healthy == 0 && draining > 0)
		gr.Overloaded = healthy == 0 && overloaded > 0
		if t, ok := g.down[r.Code]; ok && now.Sub(t) < downFor {
			gr.Down = true
		}
		gr.Down = gr.Down || len(r.Relays) == 0
		out = append(out, gr)
	}
	return out
}

// choose applies the rules and moves home if they say so.
func (g *geoState) choose() geo.Decision {
	g.n.mu.Lock()
	nm := g.n.mu.nm
	g.n.mu.Unlock()
	if nm == nil {
		return geo.Decision{}
	}
	g.mu.Lock()
	regs := g.regions(nm)
	d := g.sel.Choose(regs, g.hist.Latencies(time.Now()))
	g.mu.Unlock()
	if d.Changed && d.Region != "" {
		if r, ok := relays.Pick(nm.RelayMap, d.Region); ok {
			g.n.log.Info("home relay", "region", d.Region, "reason", d.Reason, "latency", d.Latency)
			g.n.setHome(r, string(d.Reason))
		}
	}
	return d
}

// run probes and chooses until ctx ends.
func (g *geoState) run(ctx context.Context) {
	select {
	case <-g.n.engineReady:
	case <-ctx.Done():
		return
	}
	probe := time.NewTicker(probeInterval)
	defer probe.Stop()
	health := time.NewTicker(homeCheckInterval)
	defer health.Stop()
	g.probeAll(ctx)
	g.choose()
	for {
		select {
		case <-ctx.Done():
			return
		case <-probe.C:
			g.probeAll(ctx)
			g.choose()
		case <-g.kick:
			g.choose()
		case <-health.C:
			g.checkHome(ctx)
		}
	}
}

// checkHome pings the home relay; a dead or draining home is left at once.
func (g *geoState) checkHome(ctx context.Context) {
	n := g.n
	home := n.relays.Home()
	if home.Addr == "" {
		return
	}
	c, err := n.pool.Get(home)
	if err != nil {
		return
	}
	ok := false
	conn := c.Conn()
	if conn != nil {
		pctx, cancel := context.WithTimeout(ctx, homePingTimeout)
		_, err := conn.Ping(pctx)
		cancel()
		ok = err == nil
	}
	g.mu.Lock()
	if ok {
		g.misses = 0
		g.mu.Unlock()
		return
	}
	g.misses++
	dead := g.misses >= homeMisses
	if dead {
		g.misses = 0
		g.down[home.Region] = time.Now()
		g.hist.Forget(home.Region)
	}
	g.mu.Unlock()
	if dead {
		n.log.Warn("home relay unreachable", "region", home.Region, "relay", home.Addr)
		if conn != nil {
			// A relay that died without closing leaves a connection that
			// looks open until its idle timeout; close it so the client
			// redials, and finds the relay when it is back.
			conn.Close()
		}
		if d := g.choose(); d.Region == "" {
			// Nothing usable by what we knew: measure again (a relay may
			// have come back since it was marked down) and retry.
			g.probeAll(ctx)
			g.choose()
		}
	}
}

// relayDraining marks a region draining (its relay said Restarting) and
// re-chooses at once.
func (g *geoState) relayDraining(region string) {
	g.mu.Lock()
	g.draining[region] = true
	g.mu.Unlock()
	time.AfterFunc(downFor, func() {
		g.mu.Lock()
		delete(g.draining, region)
		g.mu.Unlock()
	})
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// Netcheck implements localapi.Backend: a fresh probe of every region.
func (n *Node) Netcheck(ctx context.Context) (localapi.Netcheck, error) {
	select {
	case <-n.engineReady:
	default:
		return localapi.Netcheck{}, errors.New("waiting for the first netmap")
	}
	g := n.geo
	res := g.probeAll(ctx)
	d := g.choose()
	nc := localapi.Netcheck{RelayLatencyMS: map[string]float64{}}
	mapped := map[string]netip.AddrPort{}
	for _, r := range res {
		if r.Err != nil {
			continue
		}
		nc.RelayLatencyMS[r.Region] = float64(r.RTT.Microseconds()) / 1000
		if r.Via == "stun" {
			nc.UDP = true
			mapped[r.Region] = r.Mapped
			if nc.PublicAddr == "" {
				nc.PublicAddr = r.Mapped.String()
			}
		}
	}
	nc.MappingVariesByDest = geo.MappingVariesByDest(mapped)
	nc.PreferredRelay = d.Region
	if nc.PreferredRelay == "" {
		nc.PreferredRelay = n.relays.Home().Region
	}
	report := netmap.Netcheck{UDP: nc.UDP, PublicAddr: nc.PublicAddr, MappingVariesByDest: nc.MappingVariesByDest,
		PreferredRelay: nc.PreferredRelay, RelayLatencyMS: nc.RelayLatencyMS}
	n.goAsync(func(ctx context.Context) { n.update(ctx, netmap.UpdateRequest{Netcheck: &report}) })
	return nc, nil
}
