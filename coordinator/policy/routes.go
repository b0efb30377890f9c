package policy

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/wiremesh/wiremesh/meshnode/routes"
)

// sourceSelectors expands a selector that names parties (a src, a tag
// owner, an auto-approver): autogroup:internet is a destination only.
func (p *Policy) sourceSelectors(s string) ([]Selector, error) {
	sels, err := p.selectors(s, 0)
	if err != nil {
		return nil, err
	}
	if slices.ContainsFunc(sels, func(x Selector) bool { return x.kind == selInternet }) {
		return nil, fmt.Errorf("%s is only a dst", AutogroupInternet)
	}
	return sels, nil
}

func (p *Policy) compileAutoApprovers() error {
	aa := p.doc.AutoApprovers
	if aa == nil {
		return nil
	}
	for text, who := range aa.Routes {
		pfx, err := netip.ParsePrefix(text)
		if err != nil || !pfx.Addr().Is4() {
			return fmt.Errorf("autoApprovers: routes: %q is not an IPv4 CIDR", text)
		}
		if pfx.Masked() != pfx {
			return fmt.Errorf("autoApprovers: routes: %s has host bits set (did you mean %s?)", text, pfx.Masked())
		}
		if pfx == routes.ExitPrefix {
			return fmt.Errorf("autoApprovers: routes: %s is an exit node: use exitNode", text)
		}
		if pfx.Overlaps(routes.MeshRange) {
			return fmt.Errorf("autoApprovers: routes: %s overlaps the mesh range %s", text, routes.MeshRange)
		}
		ar := autoRoute{prefix: pfx}
		for _, w := range who {
			sels, err := p.sourceSelectors(w)
			if err != nil {
				return fmt.Errorf("autoApprovers: routes: %s: %v", text, err)
			}
			ar.sels = append(ar.sels, sels...)
		}
		p.autoRoutes = append(p.autoRoutes, ar)
	}
	// Map order is random; keep compiled order stable for tests and logs.
	slices.SortFunc(p.autoRoutes, func(a, b autoRoute) int { return a.prefix.Addr().Compare(b.prefix.Addr()) })
	for _, w := range aa.ExitNode {
		sels, err := p.sourceSelectors(w)
		if err != nil {
			return fmt.Errorf("autoApprovers: exitNode: %v", err)
		}
		p.autoExit = append(p.autoExit, sels...)
	}
	return nil
}

// AutoApproves reports whether the policy approves route, advertised by
// node n, by itself: route 0.0.0.0/0 (an exit node) when n matches
// exitNode, any other route when an autoApprovers.routes prefix covers it
// and n matches that prefix's selectors.
func (p *Policy) AutoApproves(route netip.Prefix, n Principal) bool {
	match := func(sels []Selector) bool {
		return slices.ContainsFunc(sels, func(s Selector) bool { return s.Matches(n) })
	}
	if route == routes.ExitPrefix {
		return match(p.autoExit)
	}
	for _, ar := range p.autoRoutes {
		if ar.prefix.Bits() <= route.Bits() && ar.prefix.Contains(route.Addr()) && match(ar.sels) {
			return true
		}
	}
	return false
}

// internet is autogroup:internet as prefixes: all of IPv4 but the mesh
// range, made by walking from 0.0.0.0/0 down to the mesh range and keeping
// the sibling of every step.
var internet = func() []netip.Prefix {
	var out []netip.Prefix
	mesh := routes.MeshRange
	for bits := 1; bits <= mesh.Bits(); bits++ {
		onPath, _ := mesh.Addr().Prefix(bits)
		a := onPath.Addr().As4()
		bit := bits - 1
		a[bit/8] ^= 0x80 >> (bit % 8)
		out = append(out, netip.PrefixFrom(netip.AddrFrom4(a), bits))
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}()

// InternetPrefixes returns what autogroup:internet stands for: every IPv4
// address outside the mesh range 100.64.0.0/10.
func InternetPrefixes() []netip.Prefix { return slices.Clone(internet) }

// RoutedDst is one destination a router forwards under a rule: a network
// (part of an approved route) and ports.
type RoutedDst struct {
	Prefix netip.Prefix
	Ports  []PortRange
}

// RoutedDsts returns the destinations of r that lie in the routes a router
// forwards: for each dst CIDR or host alias, its overlap with each approved
// subnet route; for "*", every route; for autogroup:internet (and "*"),
// the internet prefixes when exit is set (the router is an approved exit
// node). The router's packet filter for forwarded traffic is these with the
// rule's sources.
func (r *Rule) RoutedDsts(subnets []netip.Prefix, exit bool) []RoutedDst {
	var out []RoutedDst
	for _, d := range r.Dst {
		switch d.Sel.kind {
		case selAll:
			for _, sn := range subnets {
				out = append(out, RoutedDst{sn, d.Ports})
			}
			if exit {
				for _, in := range internet {
					out = append(out, RoutedDst{in, d.Ports})
				}
			}
		case selInternet:
			if exit {
				for _, in := range internet {
					out = append(out, RoutedDst{in, d.Ports})
				}
			}
		case selPrefix:
			for _, sn := range subnets {
				if o, ok := overlap(d.Sel.prefix, sn); ok {
					out = append(out, RoutedDst{o, d.Ports})
				}
			}
		}
	}
	return out
}

// MayUseRoute reports whether src may send traffic to some part of route
// under p (route 0.0.0.0/0 is an exit node): only such routes are shown to
// src.
func (p *Policy) MayUseRoute(src Principal, route netip.Prefix) bool {
	exit := route == routes.ExitPrefix
	var subnets []netip.Prefix
	if !exit {
		subnets = []netip.Prefix{route}
	}
	for i := range p.Rules {
		r := &p.Rules[i]
		if r.SrcMatches(src) && len(r.RoutedDsts(subnets, exit)) > 0 {
			return true
		}
	}
	return false
}

// overlap returns the smaller of two overlapping prefixes (prefixes either
// nest or are disjoint).
func overlap(a, b netip.Prefix) (netip.Prefix, bool) {
	if !a.Overlaps(b) {
		return netip.Prefix{}, false
	}
	if a.Bits() >= b.Bits() {
		return a, true
	}
	return b, true
}
