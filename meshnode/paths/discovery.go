package paths

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/geo"
)

// Endpoint discovery: the addresses peers may reach this node's UDP socket
// at. Candidates are the local interface addresses, the public addresses
// relays see in STUN answers sent from this very socket, when those differ
// per relay (a hard NAT) the STUN address with the local port, and the
// gateway's port mapping (NAT-PMP, PCP or UPnP) when one is held: the one
// address of a hard NAT that every peer can reach.
//
// STUN runs when discovery starts, every RestunInterval (under the usual
// 30 s UDP NAT timeout, so the mapping stays warm), at once when the local
// addresses change (the node moved networks), and on Kick (the relay map
// arrived, or the port mapping changed).
const (
	RestunInterval = 25 * time.Second
	// NetCheckEvery is how often local addresses are compared for a
	// network change: one netlink dump of the interface addresses (tens
	// of microseconds), and what bounds how fast a migration is noticed.
	NetCheckEvery = 250 * time.Millisecond
	// stunBudget bounds one discovery round's STUN.
	stunBudget = 2 * time.Second
)

// STUN asks relays for this socket's mapped address (stunprobe.Prober).
type STUN interface {
	ProbeAll(ctx context.Context, relayAddrs []string) map[string]netip.AddrPort
}

// Network is what discovery reacts to: the path machine (Manager).
type Network interface {
	NetworkChanged()
	Announce()
}

// DiscoveryConfig configures a Discovery.
type DiscoveryConfig struct {
	// LocalAddrs returns this host's candidate interface addresses,
	// sorted (LocalAddrs below, usually).
	LocalAddrs func() []netip.Addr
	// Port returns the UDP socket's port; 0 while it is not open.
	Port func() uint16
	// Relays returns the relay addresses to STUN against; none means
	// there is no relay map yet.
	Relays func() []string
	STUN   STUN
	// Report is told of each new endpoint set. It must not block.
	Report func([]netip.AddrPort)
	// NAT is told after each STUN round how many relays answered and
	// whether their mappings differed (a hard NAT). May be nil.
	NAT func(mapped int, hard bool)
	// PortMapping returns the external ip:port the gateway forwards to
	// the socket (meshnode/portmap), or the zero AddrPort when none is
	// held. It is one more candidate; call Kick when it changes. May be
	// nil.
	PortMapping func() netip.AddrPort
	Paths       Network
	Log         *slog.Logger
	Now         func() time.Time
}

// Discovery finds this node's endpoints. Create it with NewDiscovery.
type Discovery struct {
	cfg DiscoveryConfig

	mu       sync.Mutex
	current  []netip.AddrPort // last reported endpoints
	public   netip.Addr       // the public IPv4 the last STUN round saw
	publicEP netip.AddrPort   // ... with its port (the lowest answer)
	kick     chan struct{}
	// firstRound is closed when the first round that could run (socket
	// open, relay map known) is done.
	firstRound chan struct{}
	firstOnce  sync.Once
}

// NewDiscovery returns a Discovery.
func NewDiscovery(cfg DiscoveryConfig) *Discovery {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Discovery{cfg: cfg, kick: make(chan struct{}, 1), firstRound: make(chan struct{})}
}

// Endpoints returns the current endpoint candidates.
func (d *Discovery) Endpoints() []netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.current)
}

// PublicAddr returns the public IPv4 address relays saw in the last STUN
// round that got an answer, or the zero Addr before any did.
func (d *Discovery) PublicAddr() netip.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.public
}

// PublicEndpoint returns the public IPv4 ip:port relays saw for the
// socket in the last STUN round that got an answer (on a hard NAT, one of
// several), or the zero AddrPort before any did.
func (d *Discovery) PublicEndpoint() netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.publicEP
}

// FirstRound is closed once the first discovery round has run: STUN has
// answered (PublicAddr is set) or timed out. Port mapping waits for it,
// since a UPnP gateway may need PublicAddr.
func (d *Discovery) FirstRound() <-chan struct{} { return d.firstRound }

// Kick asks for a discovery round now (a relay map arrived, say).
func (d *Discovery) Kick() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// Run discovers endpoints until ctx ends.
func (d *Discovery) Run(ctx context.Context) {
	t := time.NewTicker(NetCheckEvery)
	defer t.Stop()
	var lastSTUN time.Time
	var local []netip.Addr
	first, done := true, false
	for {
		next := d.cfg.LocalAddrs()
		moved := !first && !slices.Equal(next, local)
		local = next
		if moved {
			d.cfg.Log.Info("network changed", "addresses", local)
			d.cfg.Paths.NetworkChanged()
		}
		if first || moved || !done || d.cfg.Now().Sub(lastSTUN) >= RestunInterval {
			first = false
			lastSTUN = d.cfg.Now()
			done = d.discover(ctx, local, moved)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.kick:
			done = false
		}
	}
}

// discover runs STUN and reports the endpoint set if it changed. It
// returns false if it could not run yet (no relay map or socket).
func (d *Discovery) discover(ctx context.Context, local []netip.Addr, moved bool) bool {
	port := d.cfg.Port()
	relays := d.cfg.Relays()
	if port == 0 || len(relays) == 0 {
		return false
	}
	sctx, cancel := context.WithTimeout(ctx, stunBudget)
	mapped := d.cfg.STUN.ProbeAll(sctx, relays)
	cancel()
	var pm netip.AddrPort
	if d.cfg.PortMapping != nil {
		pm = d.cfg.PortMapping()
	}
	eps, hard := endpointSet(local, port, mapped, pm)
	if d.cfg.NAT != nil {
		d.cfg.NAT(len(mapped), hard)
	}
	d.mu.Lock()
	same := slices.Equal(eps, d.current)
	d.current = eps
	if ep := publicEndpoint(mapped); ep.IsValid() {
		d.public, d.publicEP = ep.Addr(), ep
	}
	d.mu.Unlock()
	d.firstOnce.Do(func() { close(d.firstRound) })
	if same && !moved {
		return true
	}
	d.cfg.Log.Info("endpoints", "endpoints", eps, "hard_nat", hard, "port_mapping", pm)
	d.cfg.Report(eps)
	if moved {
		d.cfg.Paths.Announce() // tell active peers where we are now
	}
	return true
}

// publicEndpoint picks the public IPv4 ip:port from STUN answers: the
// lowest, so the choice is stable when a multi-homed NAT shows several.
func publicEndpoint(mapped map[string]netip.AddrPort) netip.AddrPort {
	var ep netip.AddrPort
	for _, m := range mapped {
		m = netip.AddrPortFrom(m.Addr().Unmap(), m.Port())
		if m.Addr().Is4() && (!ep.IsValid() || m.Compare(ep) < 0) {
			ep = m
		}
	}
	return ep
}

// endpointSet builds the sorted candidate set from local addresses, STUN
// answers and the port mapping (pm, if valid); hard reports an
// endpoint-dependent mapping, for which the local port is guessed on each
// public address (port preservation).
func endpointSet(local []netip.Addr, port uint16, mapped map[string]netip.AddrPort, pm netip.AddrPort) ([]netip.AddrPort, bool) {
	var eps []netip.AddrPort
	add := func(ap netip.AddrPort) {
		if ap.IsValid() && ap.Port() != 0 && !slices.Contains(eps, ap) {
			eps = append(eps, ap)
		}
	}
	for _, ip := range local {
		add(netip.AddrPortFrom(ip, port))
	}
	for _, m := range mapped {
		add(m)
	}
	add(pm)
	hard := geo.MappingVariesByDest(mapped)
	if hard {
		for _, m := range mapped {
			add(netip.AddrPortFrom(m.Addr(), port))
		}
	}
	slices.SortFunc(eps, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return eps, hard
}

// LocalAddrs returns this host's IPv4 interface addresses that peers might
// reach: not loopback, link-local or inside exclude (the mesh prefix); or,
// when only is set, the addresses inside those prefixes (loopback
// included). The result is sorted.
func LocalAddrs(only []netip.Prefix, exclude netip.Prefix) []netip.Addr {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range ifaddrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr()
		if len(only) > 0 {
			if slices.ContainsFunc(only, func(p netip.Prefix) bool { return p.Contains(ip) }) {
				out = append(out, ip)
			}
			continue
		}
		if !ip.Is4() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || exclude.Contains(ip) {
			continue
		}
		out = append(out, ip)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}
