package meshnode

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/pion/stun/v3"
	"github.com/wiremesh/wiremesh/geo"
	"github.com/wiremesh/wiremesh/netmap"
)

// Endpoint discovery: the addresses peers may reach this node's UDP socket
// at. Candidates are the local interface addresses, the public addresses
// relays see in STUN answers sent from this very socket, and, when those
// differ per relay (a hard NAT), the STUN address with the local port.
//
// STUN runs when the node starts, every restunInterval (under the usual
// 30 s UDP NAT timeout, so the mapping stays warm), and at once when the
// local addresses change (the node moved networks).
const (
	restunInterval = 25 * time.Second
	stunTimeout    = 2 * time.Second
	// netCheckEvery is how often local addresses are compared for a network
	// change: one netlink dump of the interface addresses (tens of
	// microseconds), and what bounds how fast a migration is noticed.
	netCheckEvery = 250 * time.Millisecond
)

// endpointState is owned by the endpoints goroutine, except for what the
// mutex guards.
type endpointState struct {
	n *Node

	mu      sync.Mutex
	pending map[[stun.TransactionIDSize]byte]stunProbe
	mapped  map[string]netip.AddrPort // by relay address
	current []netip.AddrPort          // last reported endpoints
	local   []netip.Addr
	changed chan struct{} // network change: re-STUN now
}

type stunProbe struct {
	relay string
	sent  time.Time
	done  chan netip.AddrPort
}

func newEndpointState(n *Node) *endpointState {
	return &endpointState{n: n, pending: map[[stun.TransactionIDSize]byte]stunProbe{},
		mapped: map[string]netip.AddrPort{}, changed: make(chan struct{}, 1)}
}

// onSTUN handles a STUN answer arriving on the node's socket.
func (e *endpointState) onSTUN(src netip.AddrPort, pkt []byte) {
	m := &stun.Message{Raw: append([]byte(nil), pkt...)}
	if err := m.Decode(); err != nil || m.Type != stun.BindingSuccess {
		return
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(m); err != nil {
		return
	}
	ip, ok := netip.AddrFromSlice(xor.IP)
	if !ok {
		return
	}
	e.mu.Lock()
	p, ok := e.pending[m.TransactionID]
	delete(e.pending, m.TransactionID)
	e.mu.Unlock()
	if ok {
		select {
		case p.done <- netip.AddrPortFrom(ip.Unmap(), uint16(xor.Port)):
		default:
		}
	}
}

// stunAll asks every relay in the map for our mapped address, in parallel,
// from the node's UDP socket. It returns relay address → mapped address.
func (e *endpointState) stunAll(ctx context.Context, rm netmap.RelayMap) map[string]netip.AddrPort {
	var addrs []string
	for _, reg := range rm.Regions {
		for _, r := range reg.Relays {
			addrs = append(addrs, r.Addr)
		}
	}
	out := map[string]netip.AddrPort{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if m, _, ok := e.stunRTT(ctx, a); ok {
				mu.Lock()
				out[a] = m
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

// stunRTT asks one relay for our mapped address, retrying a lost packet
// twice, and returns it with the round trip of the answered request.
func (e *endpointState) stunRTT(ctx context.Context, relayAddr string) (netip.AddrPort, time.Duration, bool) {
	dst, err := resolveAddrPort(relayAddr)
	if err != nil {
		return netip.AddrPort{}, 0, false
	}
	for try := 0; try < 3; try++ {
		msg, err := stun.Build(stun.TransactionID, stun.BindingRequest)
		if err != nil {
			return netip.AddrPort{}, 0, false
		}
		p := stunProbe{relay: relayAddr, sent: time.Now(), done: make(chan netip.AddrPort, 1)}
		e.mu.Lock()
		e.pending[msg.TransactionID] = p
		e.mu.Unlock()
		if err := e.n.bind.WriteTo(msg.Raw, dst); err != nil {
			return netip.AddrPort{}, 0, false
		}
		select {
		case m := <-p.done:
			return m, time.Since(p.sent), true
		case <-time.After(stunTimeout / 3):
		case <-ctx.Done():
		}
		e.mu.Lock()
		delete(e.pending, msg.TransactionID)
		e.mu.Unlock()
		if ctx.Err() != nil {
			break
		}
	}
	return netip.AddrPort{}, 0, false
}

func resolveAddrPort(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	ua, err := net.ResolveUDPAddr("udp4", s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return ua.AddrPort(), nil
}

// localAddrs returns this host's IPv4 interface addresses that peers might
// reach: not loopback, link-local or mesh addresses; or, when only is set,
// the addresses inside those prefixes (loopback included).
func localAddrs(only []netip.Prefix) []netip.Addr {
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
		if !ip.Is4() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || meshPrefix.Contains(ip) {
			continue
		}
		out = append(out, ip)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

// run discovers endpoints until ctx ends, reporting changes to the
// coordinator and telling the path manager when the network changed.
func (e *endpointState) run(ctx context.Context) {
	select { // a daemon stopped before its first netmap never gets one
	case <-e.n.engineReady:
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(netCheckEvery)
	defer t.Stop()
	var lastSTUN time.Time
	first := true
	for {
		local := localAddrs(e.n.cfg.EndpointPrefixes)
		e.mu.Lock()
		moved := !first && !slices.Equal(local, e.local)
		e.local = local
		e.mu.Unlock()
		if moved {
			e.n.log.Info("network changed", "addresses", local)
			e.n.paths.networkChanged()
		}
		if first || moved || time.Since(lastSTUN) >= restunInterval {
			first = false
			lastSTUN = time.Now()
			e.discover(ctx, local, moved)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.changed:
		}
	}
}

// discover runs STUN and reports the endpoint set if it changed.
func (e *endpointState) discover(ctx context.Context, local []netip.Addr, moved bool) {
	n := e.n
	n.mu.Lock()
	nm := n.mu.nm
	n.mu.Unlock()
	port := n.bind.Port()
	if nm == nil || port == 0 {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, stunTimeout)
	mapped := e.stunAll(sctx, nm.RelayMap)
	cancel()
	var eps []netip.AddrPort
	add := func(ap netip.AddrPort) {
		if ap.IsValid() && !slices.Contains(eps, ap) {
			eps = append(eps, ap)
		}
	}
	for _, ip := range local {
		add(netip.AddrPortFrom(ip, port))
	}
	for _, m := range mapped {
		add(m)
	}
	hard := geo.MappingVariesByDest(mapped)
	if hard {
		// Port preservation guess for endpoint-dependent NATs.
		for _, m := range mapped {
			add(netip.AddrPortFrom(m.Addr(), port))
		}
	}
	slices.SortFunc(eps, func(a, b netip.AddrPort) int { return a.Compare(b) })
	e.mu.Lock()
	e.mapped = mapped
	same := slices.Equal(eps, e.current)
	e.current = eps
	e.mu.Unlock()
	n.metrics.hardNAT.Set(boolFloat(hard))
	if same && !moved {
		return
	}
	n.log.Info("endpoints", "endpoints", eps, "hard_nat", hard)
	n.goAsync(func(ctx context.Context) {
		for try := 0; try < 5; try++ {
			if err := n.update(ctx, netmap.UpdateRequest{Endpoints: &eps}); err == nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(try+1) * time.Second):
			}
		}
	})
	if moved {
		n.paths.announce() // tell active peers where we are now
	}
}

// endpoints returns the current endpoint candidates.
func (e *endpointState) endpoints() []netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.current)
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
