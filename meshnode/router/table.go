//go:build linux

package router

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Table is the routing table that holds accepted routes. 30573 is "wm" in
// ASCII; any number outside 0 and 253-255 (unspec, default, main, local)
// works, this one is unlikely to be taken (Tailscale uses 52, wg-quick the
// fwmark value, 51820).
const Table = 30573

// Proto is the routing protocol number on every rule and route the Router
// installs, so they are recognisable in `ip rule` and `ip route show table
// all` ("proto 119", 'w'); iproute2's assigned numbers stop well short of it
// apart from the routing daemons at 186-192.
const Proto = 119

// Rule priorities. They sit below the main table's rule (32766) so that
// accepted routes win over the main table, and above 0 (local). They are
// clear of Tailscale's 5210-5270, so both can be installed at once (their
// tables then fight over exit traffic, but neither breaks the other's own
// sockets). The gap between them leaves room for later rules.
const (
	prioBypassMain    = 5300 // fwmark → main: the node's own traffic
	prioBypassDefault = 5310 // fwmark → default: distros that use table 253
	prioBypassStop    = 5320 // fwmark → unreachable: never fall into Table
	prioTable         = 5370 // everything else → Table
)

// backstopMetric is the metric of every accepted route's unreachable twin:
// the worst possible, so the real route (metric 0) wins while it exists.
const backstopMetric = math.MaxUint32

func ourPrio(p int) bool {
	return p == prioBypassMain || p == prioBypassDefault || p == prioBypassStop || p == prioTable
}

// families are the address families rules and routes are installed for.
var families = []int{unix.AF_INET, unix.AF_INET6}

// desiredRules returns the four rules of family, in priority order.
func desiredRules(family int) []*netlink.Rule {
	mask := MarkMask
	mk := func(prio, table int, typ uint8) *netlink.Rule {
		r := netlink.NewRule()
		r.Family = family
		r.Priority = prio
		r.Table = table
		r.Protocol = Proto
		r.Type = typ
		if prio != prioTable {
			r.Mark = BypassMark
			r.Mask = &mask
		}
		return r
	}
	return []*netlink.Rule{
		mk(prioBypassMain, unix.RT_TABLE_MAIN, unix.RTN_UNICAST),
		mk(prioBypassDefault, unix.RT_TABLE_DEFAULT, unix.RTN_UNICAST),
		mk(prioBypassStop, 0, unix.RTN_UNREACHABLE),
		mk(prioTable, Table, unix.RTN_UNICAST),
	}
}

// listOurRules returns the installed rules of family that are ours: our
// protocol, or (for kernels that do not keep a rule's protocol) one of our
// priorities together with our table or mark.
func listOurRules(family int) ([]netlink.Rule, error) {
	all, err := netlink.RuleList(family)
	if err != nil {
		return nil, fmt.Errorf("router: list rules: %w", err)
	}
	var ours []netlink.Rule
	for _, r := range all {
		if r.Protocol == Proto || (ourPrio(r.Priority) && (r.Table == Table || r.Mark == BypassMark)) {
			ours = append(ours, r)
		}
	}
	return ours, nil
}

// setRules installs the rules of family when on, or removes them. Rules
// already exactly in place are left alone, so a Set that changes only routes
// does not open a window without them.
// It reports whether it changed anything.
func setRules(family int, on bool) (changed bool, err error) {
	have, err := listOurRules(family)
	if err != nil {
		return false, err
	}
	if !on {
		return len(have) > 0, deleteRules(family)
	}
	want := desiredRules(family)
	if len(have) == len(want) && slices.IndexFunc(want, func(w *netlink.Rule) bool {
		return !slices.ContainsFunc(have, func(h netlink.Rule) bool { return sameRule(&h, w) })
	}) < 0 {
		return false, nil
	}
	if err := deleteRules(family); err != nil {
		return true, err
	}
	for _, r := range want {
		if err := netlink.RuleAdd(r); err != nil {
			return true, fmt.Errorf("router: add rule priority %d: %w", r.Priority, err)
		}
	}
	return true, nil
}

func sameRule(h, w *netlink.Rule) bool {
	hm := uint32(0)
	if h.Mask != nil {
		hm = *h.Mask
	}
	wm := uint32(0)
	if w.Mask != nil {
		wm = *w.Mask
	}
	// The action (h.Type) is not compared: netlink's rule dump does not
	// report it. Priority, table and mark tell our four rules apart.
	return h.Priority == w.Priority && h.Table == w.Table && h.Mark == w.Mark && hm == wm
}

// deleteRules removes every rule of ours of family; it is idempotent.
func deleteRules(family int) error {
	have, err := listOurRules(family)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range have {
		if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("router: delete rule priority %d: %w", r.Priority, err))
		}
	}
	return errors.Join(errs...)
}

// routeKey identifies a route in Table for reconciling.
type routeKey struct {
	dst    netip.Prefix
	typ    int
	metric int
}

func keyOf(r *netlink.Route) routeKey {
	k := routeKey{typ: r.Type, metric: r.Priority}
	switch {
	case r.Dst != nil:
		if p, ok := ipNetToPrefix(r.Dst); ok {
			k.dst = p
		}
	case r.Family == unix.AF_INET6:
		k.dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	default:
		k.dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return k
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// desiredRoutes is Table's content for s.
func (r *Router) desiredRoutes(s State, tunIndex int) []*netlink.Route {
	var out []*netlink.Route
	exit := false
	for _, rt := range s.Routes {
		if rt.Prefix.Bits() == 0 {
			exit = true
		}
		out = append(out, &netlink.Route{
			Dst: prefixToIPNet(rt.Prefix), Table: Table, Protocol: Proto,
			Type: unix.RTN_UNREACHABLE, Priority: backstopMetric,
		})
		if rt.Up && tunIndex > 0 {
			out = append(out, &netlink.Route{
				Dst: prefixToIPNet(rt.Prefix), Table: Table, Protocol: Proto,
				Type: unix.RTN_UNICAST, LinkIndex: tunIndex, Scope: netlink.SCOPE_LINK,
				Src: r.cfg.Self.AsSlice(),
			})
		}
	}
	if !exit {
		return out
	}
	// The mesh carries IPv4 only: with an exit node in use, IPv6 to
	// anywhere but the link is blackholed, never sent to the underlay.
	// Link-local stays on the link (neighbour discovery, DHCPv6);
	// multicast and loopback are in the local table, which comes first.
	out = append(out,
		&netlink.Route{Dst: prefixToIPNet(netip.PrefixFrom(netip.IPv6Unspecified(), 0)), Table: Table, Protocol: Proto,
			Type: unix.RTN_UNREACHABLE, Priority: backstopMetric},
		&netlink.Route{Dst: prefixToIPNet(linkLocal6), Table: Table, Protocol: Proto, Type: unix.RTN_THROW, Priority: ip6DefaultMetric},
	)
	if s.AllowLANAccess {
		for _, p := range s.LAN {
			if p.Bits() == 0 || (p.Addr().Is6() && linkLocal6.Overlaps(p)) {
				continue
			}
			rt := &netlink.Route{Dst: prefixToIPNet(p.Masked()), Table: Table, Protocol: Proto, Type: unix.RTN_THROW}
			if p.Addr().Is6() {
				rt.Priority = ip6DefaultMetric
			}
			out = append(out, rt)
		}
	}
	return out
}

// ip6DefaultMetric is the metric the kernel gives an IPv6 route added with
// none (IP6_RT_PRIO_USER). IPv6 routes are added with it explicitly so that
// the installed route matches the wanted one and is not re-added each Set.
const ip6DefaultMetric = 1024

// linkLocal6 is IPv6 link-local unicast, which never leaves the link.
var linkLocal6 = netip.MustParsePrefix("fe80::/10")

// hasExit reports whether s accepts an exit node.
func hasExit(s State) bool {
	return slices.ContainsFunc(s.Routes, func(r Route) bool { return r.Prefix.Bits() == 0 })
}

// setRoutes makes Table hold exactly the routes s needs: stale ones are
// deleted, missing ones added, existing ones left in place.
func (r *Router) setRoutes(s State) error {
	tunIndex := 0
	if len(s.Routes) > 0 {
		link, err := netlink.LinkByName(r.cfg.TUN)
		if err != nil {
			// Without the device no route can point at it; the
			// backstops still go in, so nothing leaks.
			r.log.Warn("router: TUN device missing; accepted routes blackholed", "tun", r.cfg.TUN, "err", err)
		} else {
			tunIndex = link.Attrs().Index
		}
	}
	want := r.desiredRoutes(s, tunIndex)
	have, err := listTable()
	if err != nil {
		return err
	}
	wantKeys := map[routeKey]bool{}
	for _, w := range want {
		wantKeys[keyOf(w)] = true
	}
	var errs []error
	kept := map[routeKey]bool{}
	changes := 0
	for _, h := range have {
		if !wantKeys[keyOf(&h)] || (h.Type == unix.RTN_UNICAST && h.LinkIndex != tunIndex) {
			changes++
			if err := netlink.RouteDel(&h); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("router: delete route %v: %w", h.Dst, err))
			}
			continue
		}
		kept[keyOf(&h)] = true
	}
	// Backstops first (want lists them first per prefix), so a prefix is
	// never without a route while its real route goes in.
	for _, w := range want {
		if kept[keyOf(w)] {
			continue
		}
		changes++
		if err := netlink.RouteReplace(w); err != nil {
			errs = append(errs, fmt.Errorf("router: route %v type %d: %w", w.Dst, w.Type, err))
		}
	}
	r.routeChanges = changes
	return errors.Join(errs...)
}

// listTable returns every route in Table, both families.
func listTable() ([]netlink.Route, error) {
	var all []netlink.Route
	for _, fam := range families {
		rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("router: list table %d: %w", Table, err)
		}
		all = append(all, rs...)
	}
	return all, nil
}

// flushTable deletes every route in Table; it is idempotent.
func flushTable() error {
	rs, err := listTable()
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range rs {
		if err := netlink.RouteDel(&h); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("router: delete route %v: %w", h.Dst, err))
		}
	}
	return errors.Join(errs...)
}

// LANPrefixes returns the networks (IPv4 and global IPv6) directly
// connected to this host's interfaces other than tun and loopback: what
// --exit-node-allow-lan-access keeps off the exit node.
func LANPrefixes(tun string) ([]netip.Prefix, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("router: list addresses: %w", err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		link, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil || link.Attrs().Name == tun || link.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		if a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		p, ok := ipNetToPrefix(a.IPNet)
		if !ok || p.Bits() == 0 {
			continue
		}
		if p = p.Masked(); !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}
