package meshnode

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/routectl"
	"github.com/wiremesh/wiremesh/meshnode/router"
	"github.com/wiremesh/wiremesh/meshnode/routes"
	"github.com/wiremesh/wiremesh/netmap"
	"golang.zx2c4.com/wireguard/tun"
)

// Subnet routes and exit nodes: the wiring of meshnode/routectl (the
// decisions), meshnode/router (the kernel) and meshnode/routes (the
// selection) into the node. See docs/meshnode.md.

// routesOffered reports whether this node routes for others.
func (c Config) routesOffered() bool { return len(c.AdvertiseRoutes) > 0 || c.AdvertiseExitNode }

// routesUsed reports whether this node sends traffic through others.
func (c Config) routesUsed() bool { return c.AcceptRoutes || c.ExitNode != "" }

// checkRouteFlags validates the routing options at start-up.
func checkRouteFlags(cfg Config) error {
	if err := routes.Validate(cfg.AdvertiseRoutes); err != nil {
		return fmt.Errorf("--advertise-routes: %w", err)
	}
	if cfg.Userspace && cfg.routesOffered() {
		return errors.New("--advertise-routes and --advertise-exit-node need a kernel TUN device (not --userspace)")
	}
	if cfg.ExitNodeAllowLAN && cfg.ExitNode == "" {
		return errors.New("--exit-node-allow-lan-access needs --exit-node")
	}
	return nil
}

// markSockets reports whether the node's own sockets carry the bypass
// mark: on a kernel-TUN node that installs routing rules.
func (c Config) markSockets() bool { return !c.Userspace && c.routesUsed() }

// cleanupRoutes removes what a crashed kernel-TUN run left (rules,
// routes, the nft table), whatever flags this run has: a run with an exit
// node that was SIGKILLed leaves its unreachable backstops in place on
// purpose, and a run without one must not inherit them.
func cleanupRoutes(cfg Config) {
	if cfg.Userspace {
		return
	}
	if err := router.Cleanup(); err != nil {
		cfg.Log.Warn("removing routing state a previous run left failed", "err", err)
	}
}

// blockUntilNetmap installs, on a kernel-TUN node with --exit-node that has
// no engine yet (a first start, no cached netmap), the exit route's
// unreachable backstop and the rules: until the first netmap names the
// exit node nothing but the node's own (marked) traffic leaves. The
// engine's router replaces it (router.New cleans it up first).
func (n *Node) blockUntilNetmap() error {
	if n.cfg.Userspace || n.cfg.ExitNode == "" {
		return nil
	}
	n.mu.Lock()
	built := n.mu.engine != nil
	n.mu.Unlock()
	if built {
		return nil
	}
	r, err := router.New(router.Config{TUN: n.cfg.TUN, Self: netip.IPv4Unspecified(), Logger: n.log.With("component", "router")})
	if err != nil {
		return fmt.Errorf("routing: %w", err)
	}
	if err := r.Set(router.State{Routes: []router.Route{{Prefix: routes.ExitPrefix}}}); err != nil {
		r.Close()
		return fmt.Errorf("routing: block until the first netmap: %w", err)
	}
	n.early.Store(r)
	return nil
}

// closeEarlyBlock forgets the pre-netmap block once an engine's router
// owns the namespace (New already removed what it installed), or removes
// it on a stop before the first netmap.
func (n *Node) closeEarlyBlock(remove bool) {
	if r := n.early.Swap(nil); r != nil && remove {
		if err := r.Close(); err != nil {
			n.log.Warn("removing routing state failed", "err", err)
		}
	}
}

// newRouting makes the route controller for an engine, and on a kernel
// TUN device the OS router and, on a router, the forwarder around dev (the
// filtered TUN device). It returns the device to build on.
func (n *Node) newRouting(e *engine, dev tun.Device, kernel bool, self netip.Addr) (tun.Device, error) {
	cfg := routectl.Config{
		Advertise: n.cfg.AdvertiseRoutes, AdvertiseExit: n.cfg.AdvertiseExitNode, SNAT: n.cfg.SNATSubnetRoutes,
		AcceptRoutes: n.cfg.AcceptRoutes, ExitNode: n.cfg.ExitNode, AllowLAN: n.cfg.ExitNodeAllowLAN,
		Probe: n.paths.Probe, Present: n.relays.Present, SetAllowed: n.setRouteIPs,
		Log: n.log.With("component", "routes"),
	}
	if kernel && (n.cfg.routesOffered() || n.cfg.routesUsed()) {
		n.closeEarlyBlock(false) // router.New below cleans it up
		name, _ := dev.Name()
		r, err := router.New(router.Config{TUN: name, Self: self, Logger: n.log.With("component", "router"), Metrics: n.metrics.router})
		if err != nil {
			return nil, fmt.Errorf("routing: %w", err)
		}
		e.router = r
		cfg.OS = r
		cfg.LAN = func() ([]netip.Prefix, error) { return router.LANPrefixes(name) }
		if n.cfg.routesOffered() {
			fw := router.NewForwarder(dev, self, n.filter, n.metrics.router)
			cfg.Forwarder = fw
			dev = fw
		}
	}
	e.routes = routectl.New(cfg) // newEngine runs it once the device is up
	// Fail closed: with the rules and backstops not in place, an exit
	// node's traffic would take the underlay.
	if err := e.routes.Start(self); err != nil {
		if e.router != nil {
			e.router.Close()
		}
		return nil, fmt.Errorf("routing: %w", err)
	}
	return dev, nil
}

// feedRoutes gives the controller the current peers.
func (n *Node) feedRoutes() {
	n.mu.Lock()
	eng, nm := n.mu.engine, n.mu.nm
	var peers []netmap.Node
	for _, p := range n.mu.applied {
		peers = append(peers, p)
	}
	var self netip.Addr
	if nm != nil {
		self, _ = selfAddr(nm.Self)
	}
	n.mu.Unlock()
	if eng == nil || eng.routes == nil {
		return
	}
	eng.routes.Update(self, peers)
}

// setRouteIPs makes each peer carry its routed prefixes in WireGuard,
// beside its own addresses: the controller calls it when a primary
// changes. A prefix moved to a new primary leaves the old one in the same
// UAPI transaction.
func (n *Node) setRouteIPs(m map[key.NodePublic][]netip.Prefix) {
	n.uapiMu.Lock()
	defer n.uapiMu.Unlock()
	var b strings.Builder
	n.mu.Lock()
	old := n.mu.routeIPs
	n.mu.routeIPs = m
	for k, p := range n.mu.applied {
		if slices.Equal(old[k], m[k]) {
			continue
		}
		fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\nreplace_allowed_ips=true\n", k.UAPI())
		for _, ip := range peerAllowedIPs(p, m[k]) {
			fmt.Fprintf(&b, "allowed_ip=%s\n", ip)
		}
	}
	eng := n.mu.engine
	n.mu.Unlock()
	if s := b.String(); s != "" && eng != nil {
		if err := eng.dev.IpcSet(s); err != nil {
			n.log.Warn("moving routes between peers failed", "err", err)
		}
	}
}

// peerAllowedIPs is what WireGuard routes to p: its own addresses and the
// routed prefixes it is primary for.
func peerAllowedIPs(p netmap.Node, routed []netip.Prefix) []netip.Prefix {
	ips := p.AllowedIPs
	if len(ips) == 0 {
		ips = p.Addresses
	}
	return append(slices.Clone(ips), routed...)
}

// advertise reports this node's advertised routes to the coordinator at
// every start, none included (which withdraws what an earlier run
// offered); the reporter retries until it is through.
func (n *Node) advertise() {
	n.report.Routes(append([]netip.Prefix{}, n.cfg.AdvertiseRoutes...), n.cfg.AdvertiseExitNode)
}
