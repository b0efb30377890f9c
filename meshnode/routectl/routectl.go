// Package routectl runs a node's subnet routes and exit node from its
// netmap: what the node offers (its forwarder's routes and the kernel's
// forwarding, masquerade and anti-spoofing), and what it uses (the approved
// routes of its peers with --accept-routes, the exit node chosen with
// --exit-node). It pings every router the node may use at
// routes.PingInterval, feeds the pongs to a routes.Selector, and whenever a
// decision changes moves the prefix to the new primary's WireGuard allowed
// IPs (SetAllowed) and makes the kernel match (OS.Set).
//
// A Controller is the only owner of those decisions; the node wires it to
// the netmap (Update), the path machine (Probe) and the relays (Present).
package routectl

import (
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/paths"
	"github.com/wiremesh/wiremesh/meshnode/router"
	"github.com/wiremesh/wiremesh/meshnode/routes"
	"github.com/wiremesh/wiremesh/netmap"
)

// OS is the kernel side (a *router.Router); nil in userspace mode.
type OS interface {
	Set(router.State) error
}

// Forwarder is the router side's packet filter (a *router.Forwarder).
type Forwarder interface {
	SetRoutes([]netip.Prefix)
}

// Config configures a Controller.
type Config struct {
	// Advertise are this node's subnet routes (validated), AdvertiseExit
	// whether it offers itself as an exit node, SNAT whether traffic to
	// Advertise is masqueraded (--snat-subnet-routes).
	Advertise     []netip.Prefix
	AdvertiseExit bool
	SNAT          bool
	// AcceptRoutes uses peers' approved subnet routes; ExitNode (a peer's
	// name or mesh address, empty for none) is the exit node to send all
	// other traffic through; AllowLAN keeps the LAN off it.
	AcceptRoutes bool
	ExitNode     string
	AllowLAN     bool

	OS        OS        // nil: nothing installed in the kernel
	Forwarder Forwarder // nil: this node forwards nothing
	// LAN returns the directly connected networks (router.LANPrefixes);
	// nil: none. Only called with AllowLAN.
	LAN func() ([]netip.Prefix, error)
	// Probe sends a disco ping to peer over every path; pongs go to ch.
	Probe func(peer key.NodePublic, ch chan<- paths.Pong) int
	// Present reports whether peer is on its home relay.
	Present func(peer key.NodePublic) bool
	// SetAllowed replaces the routed prefixes each peer carries in
	// WireGuard beside its own addresses (peers absent carry none).
	SetAllowed func(map[key.NodePublic][]netip.Prefix)
	Log        *slog.Logger
}

// lanEvery is how often (in evaluations) the LAN prefixes are read again
// with AllowLAN: every 5 s.
const lanEvery = 20

// maxPongs buffers pongs between reads.
const maxPongs = 256

type peer struct {
	name    string
	addrs   []netip.Addr
	routes  []netip.Prefix
	exitOpt bool
	online  bool
}

// Controller applies the route decisions. Create it with New; Run drives
// it.
type Controller struct {
	cfg  Config
	log  *slog.Logger
	sel  *routes.Selector
	kick chan struct{}
	// last is what was installed; Start, then only Run's goroutine,
	// touch it.
	last applied

	mu struct {
		sync.Mutex
		self     netip.Addr
		peers    map[key.NodePublic]peer
		exitKey  key.NodePublic // the chosen exit node, zero if not in the map (or not offered)
		exitName string
		lastPong map[key.NodePublic]time.Time
		decided  []routes.Route
		lan      []netip.Prefix
	}
}

// New returns a Controller.
func New(cfg Config) *Controller {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	c := &Controller{cfg: cfg, log: cfg.Log, kick: make(chan struct{}, 1)}
	c.mu.peers = map[key.NodePublic]peer{}
	c.mu.lastPong = map[key.NodePublic]time.Time{}
	c.sel = routes.New(routes.Config{Health: health{c}})
	return c
}

type health struct{ c *Controller }

func (h health) LastPong(k key.NodePublic) time.Time {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	return h.c.mu.lastPong[k]
}

func (h health) RelayPresent(k key.NodePublic) bool {
	h.c.mu.Lock()
	p, ok := h.c.mu.peers[k]
	h.c.mu.Unlock()
	if !ok || !p.online {
		return false
	}
	return h.c.cfg.Present == nil || h.c.cfg.Present(k)
}

// Update takes the node's own entry and its configured peers from a new
// netmap.
func (c *Controller) Update(self netip.Addr, peers []netmap.Node) {
	next := make(map[key.NodePublic]peer, len(peers))
	offers := map[key.NodePublic][]netip.Prefix{}
	var exitKey key.NodePublic
	exitName := ""
	want, wantIP := c.cfg.ExitNode, netip.Addr{}
	if a, err := netip.ParseAddr(want); err == nil {
		wantIP = a
	}
	for _, p := range peers {
		e := peer{name: p.Name, routes: slices.Clone(p.Routes), exitOpt: p.ExitNodeOption, online: p.Online}
		isExit := want != "" && p.Name == want
		for _, a := range p.Addresses {
			e.addrs = append(e.addrs, a.Addr())
			if wantIP.IsValid() && a.Addr() == wantIP {
				isExit = true
			}
		}
		next[p.NodeKey] = e
		for _, r := range e.routes {
			// A network this node routes itself stays on its LAN: taking
			// another router's offer for it would send the LAN's traffic
			// (forwarded traffic too) back into the tunnel.
			if !c.ownRoute(r) {
				offers[p.NodeKey] = append(offers[p.NodeKey], r)
			}
		}
		if isExit {
			exitName = p.Name
			if p.ExitNodeOption {
				exitKey = p.NodeKey
				offers[p.NodeKey] = append(offers[p.NodeKey], routes.ExitPrefix)
			}
		}
	}
	if ignored := c.sel.SetOffers(offers); ignored > 0 {
		c.log.Warn("ignoring route offers past the limit", "ignored", ignored)
	}
	c.mu.Lock()
	if c.cfg.ExitNode != "" && exitKey != c.mu.exitKey {
		switch {
		case exitKey.IsZero() && exitName == "":
			c.log.Warn("exit node not in the netmap; all non-local traffic is blocked", "exit_node", c.cfg.ExitNode)
		case exitKey.IsZero():
			c.log.Warn("peer does not offer an exit node to this node; all non-local traffic is blocked", "exit_node", exitName)
		default:
			c.log.Info("exit node", "name", exitName)
		}
	}
	c.mu.self = self
	c.mu.peers = next
	c.mu.exitKey, c.mu.exitName = exitKey, exitName
	for k := range c.mu.lastPong {
		if _, ok := next[k]; !ok {
			delete(c.mu.lastPong, k)
		}
	}
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Start installs the initial state at once (the forwarder's routes, the
// kernel's rules and backstops, with every route down until its router
// answers), so that nothing flows before it is in place. Call it once,
// before Run; an error means the kernel state could not be installed.
func (c *Controller) Start(self netip.Addr) error {
	if c.cfg.Forwarder != nil {
		fw := slices.Clone(c.cfg.Advertise)
		if c.cfg.AdvertiseExit {
			fw = append(fw, routes.ExitPrefix)
		}
		c.cfg.Forwarder.SetRoutes(fw)
	}
	c.mu.Lock()
	c.mu.self = self
	c.mu.Unlock()
	c.readLAN()
	return c.apply(&c.last, true)
}

// ownRoute reports whether r overlaps a route this node advertises.
func (c *Controller) ownRoute(r netip.Prefix) bool {
	for _, a := range c.cfg.Advertise {
		if a.Overlaps(r) {
			return true
		}
	}
	return false
}

// Run pings routers, evaluates and applies until ctx ends. Start must
// have been called.
func (c *Controller) Run(ctx context.Context) {
	eval := time.NewTicker(routes.EvalInterval)
	defer eval.Stop()
	ping := time.NewTicker(routes.PingInterval)
	defer ping.Stop()
	pongs := make(chan paths.Pong, maxPongs)
	ticks := 0
	for {
		force := false
		select {
		case <-ctx.Done():
			return
		case p := <-pongs:
			c.mu.Lock()
			if _, ok := c.mu.peers[p.From]; ok {
				c.mu.lastPong[p.From] = time.Now()
			}
			c.mu.Unlock()
			continue
		case <-ping.C:
			if c.cfg.Probe != nil {
				for _, k := range c.candidates() {
					c.cfg.Probe(k, pongs)
				}
			}
			continue
		case <-c.kick:
			force = true
		case <-eval.C:
			if ticks++; ticks%lanEvery == 0 {
				force = c.readLAN()
			}
		}
		c.apply(&c.last, force)
	}
}

// candidates are the routers this node uses (and so must watch).
func (c *Controller) candidates() []key.NodePublic {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []key.NodePublic
	for k, p := range c.mu.peers {
		if (c.cfg.AcceptRoutes && slices.ContainsFunc(p.routes, func(r netip.Prefix) bool { return !c.ownRoute(r) })) ||
			k == c.mu.exitKey && !k.IsZero() {
			out = append(out, k)
		}
	}
	return out
}

// readLAN refreshes the LAN prefixes and reports whether they changed.
func (c *Controller) readLAN() bool {
	if !c.cfg.AllowLAN || c.cfg.LAN == nil || c.cfg.ExitNode == "" {
		return false
	}
	lan, err := c.cfg.LAN()
	if err != nil {
		c.log.Warn("reading the LAN's networks failed", "err", err)
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.Equal(lan, c.mu.lan) {
		return false
	}
	c.mu.lan = lan
	return true
}

// applied is what the last apply installed.
type applied struct {
	allowed map[key.NodePublic][]netip.Prefix
	state   router.State
	ok      bool // the last Set succeeded
}

// apply evaluates the selector and installs the result where it changed
// (everywhere when force, or after a failed Set).
func (c *Controller) apply(last *applied, force bool) error {
	decided, changed := c.sel.Evaluate(time.Now())
	if !changed && !force && last.ok {
		return nil
	}
	if changed {
		for _, r := range decided {
			c.log.Debug("route", "prefix", r.Prefix, "primary", r.Primary.ShortString(), "up", r.Up)
		}
	}
	c.mu.Lock()
	c.mu.decided = decided
	allowed := map[key.NodePublic][]netip.Prefix{}
	st := router.State{Advertise: c.cfg.Advertise, ExitNode: c.cfg.AdvertiseExit, SNAT: c.cfg.SNAT}
	if c.mu.self.IsValid() {
		st.MeshAddrs = append(st.MeshAddrs, c.mu.self)
	}
	for _, p := range c.mu.peers {
		st.MeshAddrs = append(st.MeshAddrs, p.addrs...)
	}
	slices.SortFunc(st.MeshAddrs, func(a, b netip.Addr) int { return a.Compare(b) })
	exitUp := false
	for _, r := range decided {
		if r.Prefix == routes.ExitPrefix {
			exitUp = c.cfg.ExitNode != "" && r.Up && r.Primary == c.mu.exitKey && !r.Primary.IsZero()
			if exitUp {
				allowed[r.Primary] = append(allowed[r.Primary], r.Prefix)
			}
			continue
		}
		if !c.cfg.AcceptRoutes {
			continue
		}
		st.Routes = append(st.Routes, router.Route{Prefix: r.Prefix, Up: r.Up})
		if r.Up {
			allowed[r.Primary] = append(allowed[r.Primary], r.Prefix)
		}
	}
	if c.cfg.ExitNode != "" {
		// The exit route exists whenever one is configured: down (only the
		// unreachable backstop) while the exit node is missing or dead,
		// so that nothing ever falls back to the underlay.
		st.Routes = append(st.Routes, router.Route{Prefix: routes.ExitPrefix, Up: exitUp})
		st.AllowLANAccess = c.cfg.AllowLAN
		st.LAN = slices.Clone(c.mu.lan)
	}
	c.mu.Unlock()

	if !maps.EqualFunc(allowed, last.allowed, slices.Equal) || last.allowed == nil {
		if c.cfg.SetAllowed != nil {
			c.cfg.SetAllowed(allowed)
		}
		last.allowed = allowed
	}
	if c.cfg.OS != nil && (!last.ok || !reflect.DeepEqual(st, last.state)) {
		if err := c.cfg.OS.Set(st); err != nil {
			c.log.Error("installing routes failed; retrying", "err", err)
			last.ok = false
			return err
		}
	}
	last.state, last.ok = st, true
	return nil
}

// Status is what `meshnode status` shows of routing.
type Status struct {
	// ExitNode is the exit node in use (its name), empty when none is
	// configured; ExitNodeUp whether it is reachable now.
	ExitNode   string
	ExitNodeUp bool
	// Primary lists, per peer, the approved subnet routes it is primary
	// for, as this node chose.
	Primary map[key.NodePublic][]netip.Prefix
}

// Status returns the last decisions.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := Status{Primary: map[key.NodePublic][]netip.Prefix{}}
	if c.cfg.ExitNode != "" {
		st.ExitNode = c.mu.exitName
		if st.ExitNode == "" {
			st.ExitNode = c.cfg.ExitNode
		}
	}
	for _, r := range c.mu.decided {
		if !r.Up {
			continue
		}
		if r.Prefix == routes.ExitPrefix {
			st.ExitNodeUp = c.cfg.ExitNode != "" && r.Primary == c.mu.exitKey && !r.Primary.IsZero()
			continue
		}
		st.Primary[r.Primary] = append(st.Primary[r.Primary], r.Prefix)
	}
	return st
}

// Routed reports whether dst is reached through a route this node uses
// and that route is up now: a subnet route (with AcceptRoutes) or, outside
// the mesh range, the exit node. The most specific route decides, as the
// kernel's longest-prefix match would. Userspace mode admits SOCKS5
// destinations with it.
func (c *Controller) Routed(dst netip.Addr) bool {
	if routes.MeshRange.Contains(dst) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.mu.decided { // most specific first
		if !r.Prefix.Contains(dst) {
			continue
		}
		if r.Prefix == routes.ExitPrefix {
			return c.cfg.ExitNode != "" && r.Up && r.Primary == c.mu.exitKey && !r.Primary.IsZero()
		}
		if c.cfg.AcceptRoutes {
			return r.Up
		}
	}
	return false
}
