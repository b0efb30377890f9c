//go:build linux

// Package router programs the Linux kernel for subnet routes and exit
// nodes on a kernel-TUN node: policy routing rules and a routing table of
// its own (client side), IP forwarding, masquerade and anti-spoofing in an
// nftables table of its own (router side). Everything goes through netlink
// (vishvananda/netlink, google/nftables); nothing shells out to ip or nft.
//
// A Router owns, in the network namespace of the thread that calls it
// (one Router per namespace):
//
//	ip rule  5300  fwmark 0x1000000/0xf000000 lookup main       the node's own sockets
//	ip rule  5310  fwmark 0x1000000/0xf000000 lookup default
//	ip rule  5320  fwmark 0x1000000/0xf000000 unreachable        never reach table 30573
//	ip rule  5370  lookup 30573                                  routed prefixes, exit node
//	table 30573    PREFIX dev TUN src SELF          (route up)
//	               unreachable PREFIX metric 4294967295   (always: the backstop)
//	               throw LAN                        (exit node, LAN access allowed)
//	ip -6 rule     the same four                    (exit node only)
//	ip -6 table 30573  unreachable ::/0 metric 4294967295, throw fe80::/10
//	nft table ip wiremesh                           (router side, anti-spoofing, mark copy)
//
// IPv4 rules exist only while some route is accepted, IPv6 ones while an
// exit node is: the mesh carries IPv4 only, so IPv6 beyond the link is
// blackholed while an exit node is in use rather than leaked to the
// underlay. The nft table exists only while this node routes, accepts
// routes or knows mesh addresses to protect. Every rule carries
// routing protocol Proto and our priorities, every route lives in Table, the
// nft table has one name: Cleanup finds and removes exactly these, on Close
// and, after a crash, on the next New.
//
// A route whose primary router is down, or the exit node while it is
// unreachable, has only its unreachable backstop: traffic for it stops with
// "no route to host" instead of falling back to the underlay. The
// backstop stays in place when the TUN device disappears (a crash removes
// the dev routes with it), so a dead daemon leaks nothing either; the next
// start (or Cleanup) removes it.
package router

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/wiremesh/wiremesh/meshnode/routes"
	"golang.org/x/sys/unix"
)

// Config is what a Router needs that does not change while it runs.
type Config struct {
	// TUN is the name of the node's kernel TUN device ("wm0").
	TUN string
	// Self is the node's mesh address, the source of locally originated
	// traffic into routed prefixes.
	Self netip.Addr
	// Logger may be nil (discard).
	Logger *slog.Logger
	// Metrics may be nil (no metrics).
	Metrics *Metrics
}

// Route is one accepted route on the client side: a prefix (ExitPrefix for
// the exit node) and whether its primary router is believed alive.
type Route struct {
	Prefix netip.Prefix
	Up     bool
}

// State is everything a Router installs. Set applies a whole State; the
// zero State installs nothing.
type State struct {
	// Advertise are the subnet routes this node offers (validated with
	// routes.Validate), and ExitNode whether it offers 0.0.0.0/0. Either
	// turns on IP forwarding.
	Advertise []netip.Prefix
	ExitNode  bool
	// SNAT masquerades traffic from the mesh to Advertise behind this
	// node's own LAN address (--snat-subnet-routes, default on): the
	// LAN's hosts then need no route back to the mesh. Exit traffic is
	// always masqueraded: mesh addresses mean nothing on the internet.
	SNAT bool
	// MeshAddrs are the addresses this mesh assigned (this node and its
	// peers). Packets claiming one of them as source are dropped unless
	// they arrive on the TUN device. Only these addresses are protected;
	// see antiSpoofing.
	MeshAddrs []netip.Addr

	// Routes are the approved routes this node accepts (--accept-routes)
	// and, with ExitPrefix, the exit node in use (--exit-node).
	Routes []Route
	// AllowLANAccess keeps LAN (the directly connected networks, see
	// LANPrefixes) off the exit node (--exit-node-allow-lan-access).
	AllowLANAccess bool
	LAN            []netip.Prefix
}

// Router applies States. Its methods are safe for concurrent use, but all
// must run in the network namespace the Router was made in.
type Router struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	closed  bool
	applied State
	// spoofBase accumulates the anti-spoofing counter across table
	// rebuilds (a rebuilt table starts its counter at zero).
	spoofBase uint64
	// routeChanges is how many routes the last Set added or deleted, and
	// rulesChanged whether it touched the rules.
	routeChanges int
	rulesChanged bool
	// nftShape is nftShape of the State the nft table was last built for
	// ("" when none is known to be installed); nftBuilds counts builds.
	nftShape  string
	nftBuilds int
}

// ErrClosed is returned by Set after Close.
var ErrClosed = errors.New("router: closed")

// New removes whatever a previous run left (see Cleanup) and returns a
// Router that has installed nothing yet.
func New(cfg Config) (*Router, error) {
	if cfg.TUN == "" {
		return nil, errors.New("router: no TUN device name")
	}
	if len(cfg.TUN) >= 16 {
		return nil, fmt.Errorf("router: TUN name %q longer than 15 bytes", cfg.TUN)
	}
	if !cfg.Self.Is4() {
		return nil, fmt.Errorf("router: self address %v is not IPv4", cfg.Self)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Router{cfg: cfg, log: log}
	if err := Cleanup(); err != nil {
		return nil, fmt.Errorf("router: clean up a previous run: %w", err)
	}
	if cfg.Metrics != nil {
		cfg.Metrics.bindSpoof(r.SpoofedDrops)
	}
	return r, nil
}

// Set makes the kernel match s: forwarding, the nft table, the rules and
// the routing table. On error some parts may be applied; the next Set (or
// Close) converges again.
func (r *Router) Set(s State) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	err := r.set(s)
	if m := r.cfg.Metrics; m != nil {
		if err != nil {
			m.applyErrors.Inc()
		}
		up, down := 0, 0
		for _, rt := range s.Routes {
			if rt.Up {
				up++
			} else {
				down++
			}
		}
		m.routes.WithLabelValues("up").Set(float64(up))
		m.routes.WithLabelValues("down").Set(float64(down))
	}
	return err
}

func (r *Router) set(s State) error {
	if err := routes.Validate(s.Advertise); err != nil {
		return fmt.Errorf("router: advertised routes: %w", err)
	}
	for _, rt := range s.Routes {
		if !rt.Prefix.IsValid() || !rt.Prefix.Addr().Is4() || rt.Prefix.Masked() != rt.Prefix {
			return fmt.Errorf("router: accepted route %v: not an IPv4 network", rt.Prefix)
		}
	}
	if len(s.Advertise) > 0 || s.ExitNode {
		if err := enableForwarding(); err != nil {
			return err
		}
	}
	if len(s.Routes) > 0 {
		if err := enableSrcValidMark(); err != nil {
			return err
		}
	}
	var errs []error
	if err := r.setNft(s); err != nil {
		errs = append(errs, err)
	}
	if err := r.setRoutes(s); err != nil {
		errs = append(errs, err)
	}
	r.rulesChanged = false
	for fam, on := range map[int]bool{unix.AF_INET: len(s.Routes) > 0, unix.AF_INET6: hasExit(s)} {
		changed, err := setRules(fam, on)
		if err != nil {
			errs = append(errs, err)
		}
		r.rulesChanged = r.rulesChanged || changed
	}
	if len(errs) == 0 {
		r.applied = cloneState(s)
		r.log.Debug("router: applied", "advertise", len(s.Advertise), "exit_node", s.ExitNode,
			"accepted", len(s.Routes), "mesh_addrs", len(s.MeshAddrs))
	}
	return errors.Join(errs...)
}

func cloneState(s State) State {
	s.Advertise = slices.Clone(s.Advertise)
	s.MeshAddrs = slices.Clone(s.MeshAddrs)
	s.Routes = slices.Clone(s.Routes)
	s.LAN = slices.Clone(s.LAN)
	return s
}

// Close removes everything the Router installed (Cleanup). Forwarding is
// left on: other software (containers, other VPNs) may rely on it, and
// Wiremesh cannot know whether it was on before.
func (r *Router) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	return Cleanup()
}

// Cleanup removes every rule, route and nftables table any Router installed
// in the calling thread's network namespace, whether by this process or by
// one that crashed. It is idempotent: with nothing installed it does
// nothing and returns nil.
func Cleanup() error {
	return errors.Join(deleteRules(unix.AF_INET), deleteRules(unix.AF_INET6), flushTable(), deleteNft())
}

// enableForwarding turns on IPv4 forwarding for the namespace.
func enableForwarding() error {
	return sysctlOn("/proc/sys/net/ipv4/ip_forward", "IP forwarding")
}

// enableSrcValidMark lets reverse-path filtering use a packet's firewall
// mark (see NftTable: replies to the node's own sockets carry BypassMark).
// It changes nothing for unmarked packets, so it is left on at Close.
func enableSrcValidMark() error {
	return sysctlOn("/proc/sys/net/ipv4/conf/all/src_valid_mark", "src_valid_mark")
}

func sysctlOn(path, what string) error {
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	if err := os.WriteFile(path, []byte("1"), 0); err != nil {
		return fmt.Errorf("router: enable %s: %w", what, err)
	}
	return nil
}
