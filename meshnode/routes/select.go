// Package routes is the pure logic of subnet routes and exit nodes: it
// validates what a node advertises and, on a node that accepts routes,
// chooses the primary router for each prefix from the node's own view of
// each router's health. It touches no sockets and no kernel state; the
// meshnode/router package installs what it decides.
//
// # Choosing a primary
//
// Several routers may offer one prefix (high availability). Each client
// decides on its own, as NetBird does, instead of waiting for the
// coordinator's view (Tailscale and Headscale fail over in 10-15 s because
// the control plane must notice first). A Selector classifies each router on
// every evaluation:
//
//	healthy     answered a disco ping within DeadAfter, and has been
//	            answering for RecoverAfter if it was dead before
//	recovering  answering again after being dead, for less than RecoverAfter
//	unknown     never answered yet, but present on its home relay
//	dead        stopped answering (relay presence no longer counts: a
//	            SIGKILLed node stays "present" until its relay notices), or
//	            never answered and absent
//
// and keeps, per prefix, the current primary while it is healthy or
// recovering (sticky: a router coming back never takes traffic away from a
// working one, so routes do not flap). Otherwise it moves to the first
// healthy router, then recovering, then unknown, in key order so that every
// client picks the same one. With none left the route is down: the router
// package then installs it as unreachable, so traffic stops instead of
// leaking to the underlay.
//
// The node must ping each router it may use at least every PingInterval
// (DeadAfter is three of them). A dead router's last pong came before its
// death, so its primary role is taken over at most DeadAfter + EvalInterval
// (1.75 s) after it died, inside the 3 s goal; losing up to two pings in a
// row moves nothing.
//
// # Overlapping prefixes
//
// When offered prefixes overlap, the most specific one wins (as in the
// kernel's longest-prefix match): Lookup returns it even when it is down,
// because a broader route's router may reach a different network that
// reuses the same addresses.
package routes

import (
	"bytes"
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// Timing. DeadAfter is three missed pings at PingInterval: one lost packet
// (or two) does not move traffic, a dead router does within the 3 s goal.
// RecoverAfter makes a router that was dead prove itself for two more pings
// before it may become primary again. EvalInterval bounds how long a
// decision lags the health it is based on.
const (
	PingInterval        = 500 * time.Millisecond
	DefaultDeadAfter    = 3 * PingInterval
	DefaultRecoverAfter = 2 * PingInterval
	EvalInterval        = 250 * time.Millisecond
)

// MaxOffers bounds how many (router, prefix) offers a Selector tracks; more
// are ignored. It caps memory whatever a netmap holds: 64 routers with
// MaxAdvertised routes each.
const MaxOffers = 64 * MaxAdvertised

// Health is the node's own view of a router's liveness.
type Health interface {
	// LastPong returns when peer last answered a disco ping over any path
	// (direct or relayed), or the zero time if it never has.
	LastPong(peer key.NodePublic) time.Time
	// RelayPresent reports whether peer is connected to its home relay, as
	// far as this node knows.
	RelayPresent(peer key.NodePublic) bool
}

// Route is the decision for one prefix.
type Route struct {
	Prefix netip.Prefix
	// Primary is the router chosen for Prefix; zero when Up is false and no
	// router is left.
	Primary key.NodePublic
	// Up is true when Primary is believed to be alive. A down route must
	// blackhole its traffic, never send it to the underlay.
	Up bool
}

// Config configures a Selector. Zero durations take the defaults.
type Config struct {
	Health       Health
	DeadAfter    time.Duration
	RecoverAfter time.Duration
}

// class is a router's health at one evaluation, best first.
type class int

const (
	classHealthy class = iota
	classRecovering
	classUnknown
	classDead
)

// peerState is what the Selector remembers about a router between
// evaluations, for hysteresis.
type peerState struct {
	aliveSince time.Time // first fresh evaluation of the current alive run
	wasDead    bool      // it answered once and then stopped
}

// Selector chooses primaries. It is safe for concurrent use.
type Selector struct {
	health       Health
	deadAfter    time.Duration
	recoverAfter time.Duration

	mu      sync.Mutex
	offers  map[netip.Prefix][]key.NodePublic // sorted by key
	peers   map[key.NodePublic]*peerState
	primary map[netip.Prefix]key.NodePublic
	routes  []Route // last evaluation, most specific first
}

// New returns a Selector with no offers.
func New(cfg Config) *Selector {
	s := &Selector{
		health:       cfg.Health,
		deadAfter:    cfg.DeadAfter,
		recoverAfter: cfg.RecoverAfter,
		offers:       map[netip.Prefix][]key.NodePublic{},
		peers:        map[key.NodePublic]*peerState{},
		primary:      map[netip.Prefix]key.NodePublic{},
	}
	if s.deadAfter <= 0 {
		s.deadAfter = DefaultDeadAfter
	}
	if s.recoverAfter <= 0 {
		s.recoverAfter = DefaultRecoverAfter
	}
	return s
}

// SetOffers replaces the routes this node may use: for each router, the
// approved prefixes it offers (for an exit node, only the chosen exit node
// with ExitPrefix). Invalid prefixes and offers past MaxOffers are ignored.
// It returns how many offers were ignored.
func (s *Selector) SetOffers(offers map[key.NodePublic][]netip.Prefix) (ignored int) {
	byPrefix := map[netip.Prefix][]key.NodePublic{}
	n := 0
	// Walk routers in key order so that which offers survive the cap does
	// not depend on map iteration.
	peers := make([]key.NodePublic, 0, len(offers))
	for p := range offers {
		peers = append(peers, p)
	}
	slices.SortFunc(peers, cmpKey)
	for _, peer := range peers {
		for _, p := range offers[peer] {
			if !p.IsValid() || p.Masked() != p || n >= MaxOffers {
				ignored++
				continue
			}
			if slices.Contains(byPrefix[p], peer) {
				continue
			}
			byPrefix[p] = append(byPrefix[p], peer)
			n++
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offers = byPrefix
	for peer := range s.peers {
		if _, ok := offers[peer]; !ok {
			delete(s.peers, peer)
		}
	}
	for p := range s.primary {
		if _, ok := byPrefix[p]; !ok {
			delete(s.primary, p)
		}
	}
	return ignored
}

func cmpKey(a, b key.NodePublic) int {
	ra, rb := a.Raw(), b.Raw()
	return bytes.Compare(ra[:], rb[:])
}

// classify updates and returns peer's class at now. Callers hold mu.
func (s *Selector) classify(peer key.NodePublic, now time.Time) class {
	st := s.peers[peer]
	if st == nil {
		st = &peerState{}
		s.peers[peer] = st
	}
	last := s.health.LastPong(peer)
	fresh := !last.IsZero() && now.Sub(last) <= s.deadAfter
	switch {
	case fresh:
		if st.aliveSince.IsZero() {
			st.aliveSince = now
		}
		if st.wasDead && now.Sub(st.aliveSince) < s.recoverAfter {
			return classRecovering
		}
		st.wasDead = false
		return classHealthy
	case !last.IsZero():
		st.aliveSince = time.Time{}
		st.wasDead = true
		return classDead
	case s.health.RelayPresent(peer):
		return classUnknown
	}
	return classDead
}

// Evaluate decides every prefix's primary at now and reports whether any
// decision changed since the last evaluation. The result is sorted most
// specific first (then by address), the order Lookup searches.
func (s *Selector) Evaluate(now time.Time) (routes []Route, changed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	classes := map[key.NodePublic]class{}
	classOf := func(p key.NodePublic) class {
		c, ok := classes[p]
		if !ok {
			c = s.classify(p, now)
			classes[p] = c
		}
		return c
	}
	routes = make([]Route, 0, len(s.offers))
	for prefix, cands := range s.offers {
		r := Route{Prefix: prefix}
		cur, hasCur := s.primary[prefix]
		if hasCur && !slices.Contains(cands, cur) {
			hasCur = false
		}
		keep := false
		if hasCur {
			switch classOf(cur) {
			case classHealthy, classRecovering:
				keep = true
			case classUnknown:
				// A guess is kept only until some router proves alive.
				keep = !slices.ContainsFunc(cands, func(p key.NodePublic) bool { return classOf(p) == classHealthy })
			}
		}
		if keep {
			r.Primary, r.Up = cur, true
		} else {
			best := classDead
			for _, p := range cands {
				if c := classOf(p); c < best {
					best, r.Primary = c, p
				}
			}
			r.Up = best != classDead
		}
		if r.Up {
			s.primary[prefix] = r.Primary
		} else {
			delete(s.primary, prefix)
		}
		routes = append(routes, r)
	}
	slices.SortFunc(routes, func(a, b Route) int {
		if a.Prefix.Bits() != b.Prefix.Bits() {
			return b.Prefix.Bits() - a.Prefix.Bits()
		}
		return a.Prefix.Addr().Compare(b.Prefix.Addr())
	})
	changed = !slices.Equal(routes, s.routes)
	s.routes = routes
	return slices.Clone(routes), changed
}

// Routes returns the last evaluation's decisions, most specific first.
func (s *Selector) Routes() []Route {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.routes)
}

// Lookup returns the decision for the most specific offered prefix that
// contains dst, as of the last evaluation (up or down), and false when no
// offered prefix contains it. Userspace mode uses it to pick the router a
// routed destination is dialed through.
func (s *Selector) Lookup(dst netip.Addr) (Route, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.routes {
		if r.Prefix.Contains(dst) {
			return r, true
		}
	}
	return Route{}, false
}

// Run evaluates every EvalInterval until ctx is done, calling onChange (from
// this goroutine) with the full decision list whenever it changes, and once
// at the start. It returns when ctx is done.
func (s *Selector) Run(ctx context.Context, onChange func([]Route)) {
	t := time.NewTicker(EvalInterval)
	defer t.Stop()
	routes, _ := s.Evaluate(time.Now())
	onChange(routes)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if routes, changed := s.Evaluate(time.Now()); changed {
				onChange(routes)
			}
		}
	}
}
