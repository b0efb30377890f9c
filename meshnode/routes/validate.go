package routes

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// MeshRange is the overlay's address range: every mesh address comes from
// it. An advertised route must not fall inside it (or cover it), or the
// routed network would shadow mesh peers.
var MeshRange = netip.MustParsePrefix("100.64.0.0/10")

// ExitPrefix is what an exit node routes: everything. It is advertised with
// --advertise-exit-node, never in the subnet route list.
var ExitPrefix = netip.MustParsePrefix("0.0.0.0/0")

// MaxAdvertised bounds the routes one node may advertise. It caps the size
// of the routing table, nftables sets and selection state a peer's
// advertisement can make another node build; a /24 per office site leaves
// plenty of room.
const MaxAdvertised = 256

// Sentinel errors for bad advertisements; Validate wraps them with the
// offending entry, so callers can test with errors.Is and still show a
// message that names the prefix.
var (
	ErrInvalidCIDR   = errors.New("invalid CIDR")
	ErrNotNetwork    = errors.New("host bits set")
	ErrMeshRange     = errors.New("overlaps the mesh range 100.64.0.0/10")
	ErrOverlap       = errors.New("overlaps another advertised route")
	ErrExitRoute     = errors.New("0.0.0.0/0 is an exit node: use --advertise-exit-node")
	ErrUnroutable    = errors.New("not a routable unicast network")
	ErrIPv6          = errors.New("IPv6 routes are not supported (the mesh is IPv4)")
	ErrTooManyRoutes = fmt.Errorf("more than %d routes", MaxAdvertised)
)

// unroutable are networks no subnet router can meaningfully offer: the
// kernel treats them specially (loopback, link-local, multicast, "this
// network", limited broadcast) and routing them through a tunnel breaks the
// node that accepts them.
var unroutable = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// ParseAdvertised parses a --advertise-routes value ("198.19.50.0/24,
// 198.19.60.0/24") and validates it as Validate does. An empty string is no
// routes.
func ParseAdvertised(s string) ([]netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	fields := strings.Split(s, ",")
	if len(fields) > MaxAdvertised {
		return nil, ErrTooManyRoutes
	}
	ps := make([]netip.Prefix, 0, len(fields))
	for _, f := range fields {
		f = strings.TrimSpace(f)
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("route %q: %w", f, ErrInvalidCIDR)
		}
		if p.Masked() != p {
			return nil, fmt.Errorf("route %s: %w (did you mean %s?)", f, ErrNotNetwork, p.Masked())
		}
		ps = append(ps, p)
	}
	if err := Validate(ps); err != nil {
		return nil, err
	}
	return ps, nil
}

// Validate checks a node's advertised subnet routes: each must be an IPv4
// network address (no host bits) of a routable unicast network, outside the
// mesh range, not 0.0.0.0/0, and no two may overlap (a duplicate overlaps
// itself). The error names the first bad entry and wraps one of the
// sentinels above.
func Validate(ps []netip.Prefix) error {
	if len(ps) > MaxAdvertised {
		return ErrTooManyRoutes
	}
	for i, p := range ps {
		if err := validateOne(p); err != nil {
			return err
		}
		for _, q := range ps[:i] {
			if p.Overlaps(q) {
				return fmt.Errorf("route %s: %w (%s)", p, ErrOverlap, q)
			}
		}
	}
	return nil
}

func validateOne(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("route %v: %w", p, ErrInvalidCIDR)
	case !p.Addr().Is4() || p.Addr().Is4In6():
		return fmt.Errorf("route %s: %w", p, ErrIPv6)
	case p.Masked() != p:
		return fmt.Errorf("route %s: %w (did you mean %s?)", p, ErrNotNetwork, p.Masked())
	case p == ExitPrefix:
		return fmt.Errorf("route %s: %w", p, ErrExitRoute)
	case p.Overlaps(MeshRange):
		return fmt.Errorf("route %s: %w", p, ErrMeshRange)
	}
	if i := slices.IndexFunc(unroutable, p.Overlaps); i >= 0 {
		return fmt.Errorf("route %s: %w (inside or covering %s)", p, ErrUnroutable, unroutable[i])
	}
	return nil
}
