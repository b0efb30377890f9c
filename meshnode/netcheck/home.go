package netcheck

import (
	"context"
	"net/netip"
	"slices"

	"github.com/wiremesh/wiremesh/geo"
	"github.com/wiremesh/wiremesh/meshnode/relays"
	"github.com/wiremesh/wiremesh/netmap"
)

// regionsLocked describes the map's regions for the selector: operator and
// per-node preferences, relay health, and regions found dead or draining.
func (c *Checker) regionsLocked(rm *netmap.RelayMap) []geo.Region {
	p := c.cfg.Prefs
	now := c.cfg.Now()
	var out []geo.Region
	for _, r := range rm.Regions {
		gr := geo.Region{Code: r.Code, Weight: r.Weight, Pinned: r.Pinned, Excluded: r.Excluded}
		if w, ok := p.RegionWeights[r.Code]; ok {
			gr.Weight = w
		}
		if p.PinRegion != "" {
			gr.Pinned = r.Code == p.PinRegion
		}
		gr.Excluded = gr.Excluded || slices.Contains(p.ExcludeRegions, r.Code)
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
		if t, ok := c.draining[r.Code]; ok && now.Sub(t) >= DownFor {
			delete(c.draining, r.Code)
		}
		_, drainNotice := c.draining[r.Code]
		gr.Draining = drainNotice || (healthy == 0 && draining > 0)
		gr.Overloaded = healthy == 0 && overloaded > 0
		if t, ok := c.down[r.Code]; ok && now.Sub(t) < DownFor {
			gr.Down = true
		}
		gr.Down = gr.Down || len(r.Relays) == 0
		out = append(out, gr)
	}
	return out
}

// Choose applies the rules and moves home if they say so.
func (c *Checker) Choose() geo.Decision {
	c.mu.Lock()
	rm := c.rm
	if rm == nil {
		c.mu.Unlock()
		return geo.Decision{}
	}
	d := c.sel.Choose(c.regionsLocked(rm), c.hist.Latencies(c.cfg.Now()))
	c.mu.Unlock()
	if d.Changed && d.Region != "" {
		if r, ok := relays.Pick(*rm, d.Region); ok {
			c.cfg.Log.Info("home relay", "region", d.Region, "reason", d.Reason, "latency", d.Latency)
			c.cfg.OnHome(r, string(d.Reason))
		}
	}
	return d
}

// checkHome pings the home relay; a dead home is left at once.
func (c *Checker) checkHome(ctx context.Context) {
	home := c.cfg.Home()
	if home.Addr == "" {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, HomePingTimeout)
	err := c.cfg.Relays.PingHome(pctx, home)
	cancel()
	c.mu.Lock()
	if err == nil {
		c.misses = 0
		c.mu.Unlock()
		return
	}
	c.misses++
	dead := c.misses >= HomeMisses
	if dead {
		c.misses = 0
		c.down[home.Region] = c.cfg.Now()
		c.hist.Forget(home.Region)
	}
	c.mu.Unlock()
	if !dead {
		return
	}
	c.cfg.Log.Warn("home relay unreachable", "region", home.Region, "relay", home.Addr)
	// A relay that died without closing leaves a connection that looks
	// open until its idle timeout; close it so the client redials, and
	// finds the relay when it is back.
	c.cfg.Relays.Reset(home)
	if d := c.Choose(); d.Region == "" {
		// Nothing usable by what we knew: measure again (a relay may
		// have come back since it was marked down) and retry.
		c.ProbeAll(ctx)
		c.Choose()
	}
}

// Report is a fresh look at the network, for `meshnode netcheck` and the
// coordinator.
type Report struct {
	UDP                 bool
	PublicAddr          string
	MappingVariesByDest bool // a hard NAT
	PreferredRelay      string
	RelayLatencyMS      map[string]float64
}

// Check probes every region now, re-chooses the home and reports.
func (c *Checker) Check(ctx context.Context) Report {
	res := c.ProbeAll(ctx)
	d := c.Choose()
	rep := Report{RelayLatencyMS: map[string]float64{}}
	mapped := map[string]netip.AddrPort{}
	for _, r := range res {
		if r.Err != nil {
			continue
		}
		rep.RelayLatencyMS[r.Region] = float64(r.RTT.Microseconds()) / 1000
		if r.Via == "stun" {
			rep.UDP = true
			mapped[r.Region] = r.Mapped
			if rep.PublicAddr == "" {
				rep.PublicAddr = r.Mapped.String()
			}
		}
	}
	rep.MappingVariesByDest = geo.MappingVariesByDest(mapped)
	rep.PreferredRelay = d.Region
	if rep.PreferredRelay == "" {
		rep.PreferredRelay = c.cfg.Home().Region
	}
	return rep
}
