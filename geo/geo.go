// Package geo chooses a node's home relay region by measured latency.
//
// It is pure logic: callers feed it probe results (History.Add), describe
// the regions (Region: operator pins, weights, exclusions, and health as the
// relays report it) and ask a Selector for a decision. Probing itself is
// injected (ProbeAll takes a Prober), so the rules are tested with tables
// and no sockets, and time is always passed in.
//
// The rules, in order:
//
//  1. Excluded regions, and regions with no recent measurement, are never
//     chosen. Draining or overloaded regions are chosen only when nothing
//     else is left.
//  2. A pinned region is chosen whenever it is usable.
//  3. Otherwise the region with the lowest effective latency (the recent
//     median RTT times the region's weight) is best. The current home is
//     kept unless the best is both SwitchMinDiff (10 ms) and SwitchMinRatio
//     (33%) better — Tailscale's netcheck thresholds, which prevent flapping
//     between regions of similar latency — or the home is no longer usable,
//     in which case the node moves at once.
package geo

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Hysteresis defaults. A switch needs the new region to be better by both
// an absolute and a relative margin: the absolute one ignores noise between
// nearby regions (1 ms vs 3 ms), the relative one ignores noise between far
// ones (150 ms vs 162 ms).
const (
	DefaultSwitchMinDiff  = 10 * time.Millisecond
	DefaultSwitchMinRatio = 0.33
)

// History defaults. The window is a few minutes (long enough to ride out a
// burst of jitter, short enough to follow a real route change); the
// estimate is the median of the last medianOf samples in it, so one lost or
// delayed probe does not move it, while a lasting change (a route gets 50 ms
// worse) shows after medianOf/2+1 probes.
const (
	DefaultWindow = 5 * time.Minute
	maxSamples    = 64 // per region; bounds memory whatever the probe rate
	medianOf      = 5
	// MaxRegions bounds the regions tracked; relay maps are far smaller.
	MaxRegions = 256
)

// Region describes one relay region for selection.
type Region struct {
	Code string
	// Weight multiplies the region's measured latency; 0 means 1. An
	// operator sets 2 to make a region look twice as far away.
	Weight float64
	// Pinned regions win whenever usable (operator or per-node choice).
	Pinned bool
	// Excluded regions are never chosen.
	Excluded bool
	// Draining or Overloaded regions are avoided while others are usable.
	Draining   bool
	Overloaded bool
	// Down marks a region whose relays are unreachable (the home relay's
	// connection died); it is not usable even if old samples exist.
	Down bool
}

func (r Region) weight() float64 {
	if r.Weight <= 0 {
		return 1
	}
	return r.Weight
}

// Sample is one latency measurement of a region.
type Sample struct {
	Region string
	RTT    time.Duration
	At     time.Time
	// Via says how it was measured: "stun", "quic" or "tls".
	Via string
}

// History keeps recent samples per region. It is not safe for concurrent
// use; its owner serialises access.
type History struct {
	Window  time.Duration
	samples map[string][]Sample
}

// NewHistory returns a history keeping samples for window (0: DefaultWindow).
func NewHistory(window time.Duration) *History {
	if window <= 0 {
		window = DefaultWindow
	}
	return &History{Window: window, samples: map[string][]Sample{}}
}

// Add records a sample. Samples for more than MaxRegions regions are dropped.
func (h *History) Add(s Sample) {
	ss, ok := h.samples[s.Region]
	if !ok && len(h.samples) >= MaxRegions {
		return
	}
	if len(ss) == maxSamples {
		ss = append(ss[:0], ss[1:]...)
	}
	h.samples[s.Region] = append(ss, s)
}

// Forget drops a region's samples (for example when it leaves the map).
func (h *History) Forget(region string) { delete(h.samples, region) }

// Latency returns the region's current estimate: the median of its last few
// samples within the window. ok is false with no recent sample.
func (h *History) Latency(region string, now time.Time) (d time.Duration, ok bool) {
	ss := h.samples[region]
	var recent []time.Duration
	for i := len(ss) - 1; i >= 0 && len(recent) < medianOf; i-- {
		if now.Sub(ss[i].At) > h.Window {
			break
		}
		recent = append(recent, ss[i].RTT)
	}
	if len(recent) == 0 {
		return 0, false
	}
	slices.Sort(recent)
	return recent[len(recent)/2], true
}

// Last returns the region's most recent sample.
func (h *History) Last(region string) (Sample, bool) {
	ss := h.samples[region]
	if len(ss) == 0 {
		return Sample{}, false
	}
	return ss[len(ss)-1], true
}

// Latencies returns the estimate of every region with a recent sample.
func (h *History) Latencies(now time.Time) map[string]time.Duration {
	out := make(map[string]time.Duration, len(h.samples))
	for r := range h.samples {
		if d, ok := h.Latency(r, now); ok {
			out[r] = d
		}
	}
	return out
}

// Reason says why a Decision chose its region. The values label the
// home-change metric.
type Reason string

// Reasons.
const (
	ReasonInitial     Reason = "initial"
	ReasonKeep        Reason = "keep"
	ReasonLatency     Reason = "better_latency"
	ReasonHomeDown    Reason = "home_down"
	ReasonHomeAvoided Reason = "home_draining"
	ReasonExcluded    Reason = "home_excluded"
	ReasonPinned      Reason = "pinned"
	ReasonNone        Reason = "no_region"
)

// Decision is a Selector's choice.
type Decision struct {
	Region  string // "" when no region is usable
	Reason  Reason
	Changed bool
	// Latency is the chosen region's estimate (unweighted).
	Latency time.Duration
}

// Selector holds the current home region and applies the rules.
type Selector struct {
	SwitchMinDiff  time.Duration
	SwitchMinRatio float64
	home           string
}

// NewSelector returns a selector with the default thresholds.
func NewSelector() *Selector {
	return &Selector{SwitchMinDiff: DefaultSwitchMinDiff, SwitchMinRatio: DefaultSwitchMinRatio}
}

// Home returns the current home region.
func (s *Selector) Home() string { return s.home }

// SetHome forces the current home (for example, restored from state).
func (s *Selector) SetHome(code string) { s.home = code }

type candidate struct {
	r       Region
	lat     time.Duration
	eff     float64
	avoided bool
}

// Choose applies the rules to regions with latency estimates lat and
// records the result as the new home.
func (s *Selector) Choose(regions []Region, lat map[string]time.Duration) Decision {
	var cands []candidate
	for _, r := range regions {
		d, ok := lat[r.Code]
		if r.Excluded || r.Down || !ok {
			continue
		}
		cands = append(cands, candidate{r: r, lat: d, eff: float64(d) * r.weight(), avoided: r.Draining || r.Overloaded})
	}
	// Avoided regions count only if nothing else is usable.
	if slices.ContainsFunc(cands, func(c candidate) bool { return !c.avoided }) {
		cands = slices.DeleteFunc(cands, func(c candidate) bool { return c.avoided })
	}
	if len(cands) == 0 {
		changed := s.home != ""
		s.home = ""
		return Decision{Reason: ReasonNone, Changed: changed}
	}
	slices.SortStableFunc(cands, func(a, b candidate) int {
		switch {
		case a.eff < b.eff:
			return -1
		case a.eff > b.eff:
			return 1
		}
		return cmpString(a.r.Code, b.r.Code)
	})
	best := cands[0]
	for _, c := range cands {
		if c.r.Pinned {
			return s.set(c, ReasonPinned)
		}
	}
	cur := slices.IndexFunc(cands, func(c candidate) bool { return c.r.Code == s.home })
	switch {
	case s.home == "":
		return s.set(best, ReasonInitial)
	case cur < 0:
		return s.set(best, s.whyGone(regions))
	}
	c := cands[cur]
	if best.r.Code != c.r.Code && s.better(best.eff, c.eff) {
		return s.set(best, ReasonLatency)
	}
	return Decision{Region: c.r.Code, Reason: ReasonKeep, Latency: c.lat}
}

// better reports whether effective latency a beats the home's b by both
// margins.
func (s *Selector) better(a, b float64) bool {
	return b-a >= float64(s.SwitchMinDiff) && a <= b*(1-s.SwitchMinRatio)
}

func (s *Selector) whyGone(regions []Region) Reason {
	for _, r := range regions {
		if r.Code != s.home {
			continue
		}
		switch {
		case r.Excluded:
			return ReasonExcluded
		case r.Draining || r.Overloaded:
			return ReasonHomeAvoided
		}
	}
	return ReasonHomeDown
}

func (s *Selector) set(c candidate, why Reason) Decision {
	changed := c.r.Code != s.home
	s.home = c.r.Code
	if !changed && why != ReasonPinned {
		why = ReasonKeep
	}
	return Decision{Region: c.r.Code, Reason: why, Changed: changed, Latency: c.lat}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// MappingVariesByDest reports whether STUN answers from different relays saw
// different public ip:ports for one local socket: endpoint-dependent mapping,
// a hard NAT. It needs at least two answers to say true.
func MappingVariesByDest(observed map[string]netip.AddrPort) bool {
	var first netip.AddrPort
	for _, ap := range observed {
		if !ap.IsValid() {
			continue
		}
		if !first.IsValid() {
			first = ap
			continue
		}
		if ap != first {
			return true
		}
	}
	return false
}

// String formats a decision for logs.
func (d Decision) String() string {
	if d.Region == "" {
		return string(d.Reason)
	}
	return fmt.Sprintf("%s (%s, %v)", d.Region, d.Reason, d.Latency.Round(100*time.Microsecond))
}
