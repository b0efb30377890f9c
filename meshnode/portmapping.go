package meshnode

import (
	"context"
	"net/netip"
	"time"

	"github.com/wiremesh/wiremesh/meshnode/portmap"
)

// Port mapping (--port-mapping): once the engine has opened the UDP socket,
// a portmap client asks the gateway (NAT-PMP, PCP or UPnP IGD) to forward
// the socket's port. Its mapped ip:port is one more endpoint candidate
// (paths.DiscoveryConfig.PortMapping): every change kicks discovery, which
// reports the new endpoint set to the coordinator (and so to peers) as it
// does STUN's. The client's goroutine belongs to the node; on the way out
// it closes the client, which deletes the mapping at the gateway, so Run
// returns only after the mapping is gone (or the 2 s delete timed out).

// firstSTUNWait bounds the wait for discovery's first STUN round before
// mapping: a UPnP gateway that hides its external address (miniupnpd does
// behind CGNAT) needs STUN's public address. One round is bounded by 2 s;
// past this the client starts anyway, NAT-PMP and PCP do not need it.
const firstSTUNWait = 3 * time.Second

// portCheckEvery is how often the loop compares the socket's port with the
// mapped one: wireguard-go reopens the bind on some configuration changes,
// and with --port 0 the port may move. One mutex-guarded read.
const portCheckEvery = time.Second

// startMapper starts a port-mapping client; tests replace it
// (Config.testPortmap).
type startMapper func(ctx context.Context, cfg portmap.Config) (portmap.Mapper, error)

func startPortmap(ctx context.Context, cfg portmap.Config) (portmap.Mapper, error) {
	c, err := portmap.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// portMapping returns the current port mapping and its kind, or the zero
// AddrPort and KindNone.
func (n *Node) portMapping() (netip.AddrPort, portmap.Kind) {
	n.mu.Lock()
	m := n.mu.mapper
	n.mu.Unlock()
	if m == nil {
		return netip.AddrPort{}, portmap.KindNone
	}
	return m.Mapping()
}

// mappedAddr is portMapping's address, for discovery.
func (n *Node) mappedAddr() netip.AddrPort {
	ap, _ := n.portMapping()
	return ap
}

// runPortMapping holds a port mapping for the UDP socket until ctx ends,
// then deletes it. It does nothing until the engine is up and the first
// STUN round is done (or firstSTUNWait passed), and nothing while the bind
// has no UDP socket (--relay-only).
func (n *Node) runPortMapping(ctx context.Context) {
	select {
	case <-n.engineReady:
	case <-ctx.Done():
		return
	}
	wait := time.NewTimer(firstSTUNWait)
	select {
	case <-n.discovery.FirstRound():
	case <-wait.C:
	case <-ctx.Done():
		wait.Stop()
		return
	}
	wait.Stop()
	start := n.cfg.testPortmap
	if start == nil {
		start = startPortmap
	}
	log := n.log.With("component", "portmap")
	var m portmap.Mapper
	var port uint16
	closeMapper := func() {
		if m == nil {
			return
		}
		n.mu.Lock()
		n.mu.mapper = nil
		n.mu.Unlock()
		if err := m.Close(); err != nil {
			log.Warn("closing the port mapping failed", "err", err)
		}
		m = nil
	}
	defer closeMapper()
	t := time.NewTicker(portCheckEvery)
	defer t.Stop()
	for {
		if p := n.bind.Port(); p != port {
			if m != nil {
				log.Info("UDP port changed; mapping the new one", "old", port, "new", p)
				closeMapper()
				n.discovery.Kick()
			}
			port = p
			if p != 0 {
				var err error
				m, err = start(ctx, portmap.Config{Port: p, Logger: n.log, Metrics: n.metrics.portmap,
					PublicAddr: n.discovery.PublicAddr})
				if err != nil {
					log.Warn("port mapping not started", "port", p, "err", err)
					m = nil
				} else {
					n.mu.Lock()
					n.mu.mapper = m
					n.mu.Unlock()
				}
			}
		}
		var changed <-chan struct{}
		if m != nil {
			changed = m.Changed()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed:
			ap, kind := m.Mapping()
			log.Info("port mapping changed", "addr", ap, "kind", kind)
			n.discovery.Kick()
		}
	}
}
