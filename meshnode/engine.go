package meshnode

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"

	"github.com/wiremesh/wiremesh/meshnode/filter"
	"github.com/wiremesh/wiremesh/meshnode/netstack"
	"github.com/wiremesh/wiremesh/meshnode/routectl"
	"github.com/wiremesh/wiremesh/meshnode/router"
	"github.com/wiremesh/wiremesh/meshnode/socks5"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// engine is the data plane: a wireguard-go device over the bind, with a
// kernel TUN device or a userspace netstack behind the packet filter.
type engine struct {
	dev   *device.Device
	tun   tun.Device
	stack *netstack.Stack // userspace mode only
	// routes decides subnet routes and the exit node; router installs
	// them in the kernel (kernel TUN with a routing flag only, else nil).
	routes *routectl.Controller
	router *router.Router
}

func (n *Node) newEngine(self netip.Addr) (*engine, error) {
	e := &engine{}
	if n.cfg.Userspace {
		st, err := netstack.New(self, MTU)
		if err != nil {
			return nil, err
		}
		e.stack, e.tun = st, st
	} else {
		t, err := createTUN(n.cfg.TUN, self, MTU)
		if err != nil {
			return nil, err
		}
		e.tun = t
		if n.dns != nil {
			name, _ := t.Name()
			n.dns.serveFailed(n.log, n.serveDNSKernel(name))
		}
	}
	filtered := filter.Wrap(e.tun, n.filter, func(v filter.Verdict) {
		n.metrics.filterDrops.WithLabelValues(v.String()).Inc()
	})
	// A router's forwarder sits outside the filter, so forwarded packets
	// it drops are counted as router drops.
	wrapped, err := n.newRouting(e, filtered, !n.cfg.Userspace, self)
	if err != nil {
		e.tun.Close()
		return nil, err
	}
	e.dev = device.NewDevice(wrapped, n.bind, wgLogger(n.log))
	ok := false
	defer func() {
		if !ok && e.router != nil {
			e.router.Close()
		}
	}()
	cfg := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", n.priv.UAPI(), n.cfg.Port)
	if n.cfg.markSockets() {
		// The UDP socket to peers (and relays' fast path on it) bypasses
		// the routing table; wireguard-go sets SO_MARK on it.
		cfg += fmt.Sprintf("fwmark=%d\n", router.BypassMark)
	}
	if err := e.dev.IpcSet(cfg); err != nil {
		e.dev.Close()
		return nil, fmt.Errorf("configure wireguard: %w", err)
	}
	if err := e.dev.Up(); err != nil {
		e.dev.Close()
		return nil, fmt.Errorf("wireguard up: %w", err)
	}
	ok = true
	n.goAsync(e.routes.Run)
	if e.stack != nil {
		if n.dns != nil {
			n.dns.serveFailed(n.log, n.serveDNSUserspace(e.stack))
		}
		n.startUserspace(e.stack)
	}
	return e, nil
}

func (e *engine) close() { e.dev.Close() }

// wgLogger routes wireguard-go's logs to slog at debug level: they are per
// handshake and far too chatty for info.
func wgLogger(log *slog.Logger) *device.Logger {
	l := log.With("component", "wireguard")
	return &device.Logger{
		Verbosef: func(format string, args ...any) { l.Debug(fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { l.Debug(fmt.Sprintf(format, args...)) },
	}
}

// startUserspace runs the SOCKS5 proxy for outbound traffic and forwards
// inbound mesh TCP connections to the same port on ForwardHost, for the
// ports in ForwardPorts only; the node's own listeners never.
func (n *Node) startUserspace(st *netstack.Stack) {
	fwd := &netstack.Forwarder{Host: n.cfg.ForwardHost, Ports: n.cfg.ForwardPorts,
		Never: listenerPorts(n.cfg.Socks5, n.cfg.Metrics), Log: n.log}
	st.ForwardTCP(fwd.Allowed, func(c net.Conn, port uint16) bool {
		n.goAsync(func(ctx context.Context) { fwd.Handle(ctx, c, port) })
		return true
	})
	if n.cfg.Socks5 == "" {
		return
	}
	ln, err := socks5.Listen(n.cfg.Socks5, n.cfg.Socks5AllowRemote)
	if err != nil {
		n.log.Error("socks5 listen failed", "addr", n.cfg.Socks5, "err", err)
		return
	}
	n.log.Info("socks5 proxy", "addr", ln.Addr().String())
	srv := &socks5.Server{Dial: st.DialContext, Resolve: n.resolveName, Allow: n.socksAllow, Log: n.log}
	n.goAsync(func(ctx context.Context) { srv.Serve(ctx, ln) })
}

// listenerPorts returns the ports of the node's own TCP listen addresses.
func listenerPorts(addrs ...string) []uint16 {
	var ports []uint16
	for _, a := range addrs {
		if _, p, err := net.SplitHostPort(a); err == nil {
			if v, err := strconv.ParseUint(p, 10, 16); err == nil {
				ports = append(ports, uint16(v))
			}
		}
	}
	return ports
}

// socksAllow is the SOCKS5 proxy's view of the policy: it may reach the
// addresses of the peers in its netmap (the coordinator sends only peers
// the policy relates to this node), and nothing else: not this node itself
// (whose netstack would hand the connection to the forwarder, as if a peer
// had made it) and nothing outside the mesh. The peer's own filter still
// judges the port.
func (n *Node) socksAllow(dst netip.AddrPort) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.nm != nil {
		if self, ok := selfAddr(n.mu.nm.Self); ok && self == dst.Addr() {
			return fmt.Errorf("%w: %s is this node", socks5.ErrNotAllowed, dst)
		}
	}
	for _, p := range n.mu.applied {
		ips := p.AllowedIPs
		if len(ips) == 0 {
			ips = p.Addresses
		}
		for _, pfx := range ips {
			if pfx.Contains(dst.Addr()) {
				return nil
			}
		}
	}
	// A routed destination (--accept-routes, --exit-node) whose route is
	// up: the netstack sends it into the tunnel, WireGuard to the
	// primary router.
	if eng := n.mu.engine; eng != nil && eng.routes != nil && eng.routes.Routed(dst.Addr()) {
		return nil
	}
	if n.cfg.routesUsed() {
		return fmt.Errorf("%w: %s is no peer's address and no route to it is up", socks5.ErrNotAllowed, dst)
	}
	return fmt.Errorf("%w: %s is no peer's address", socks5.ErrNotAllowed, dst)
}
