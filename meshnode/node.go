// Package meshnode is the Wiremesh node daemon: it joins the mesh through
// the coordinator, runs a wireguard-go device over the peer-keyed bind
// (meshnode/bind), reaches every peer through the relay fleet at once,
// enforces the inbound packet filter, answers disco pings, and serves the
// local API the meshnode CLI uses.
//
// Startup:
//
//	load node key ─► cached netmap? ─yes─► build engine, apply cache ──┐
//	      │                                                            ▼
//	      └─► control loop: register (first run) ─► netmap stream ─► apply (IpcSet deltas,
//	             ▲  reconnect with backoff   │                          filter rules, relays,
//	             └───────────────────────────┘                          token, cache)
//
// The engine is built from the first netmap (cached or streamed) because
// the node's mesh address must be known to configure the TUN device or
// netstack. Afterwards peers change only through UAPI IpcSet updates; the
// device is never rebuilt.
package meshnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/bind"
	"github.com/wiremesh/wiremesh/meshnode/dns"
	"github.com/wiremesh/wiremesh/meshnode/filter"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/meshnode/netcheck"
	"github.com/wiremesh/wiremesh/meshnode/netstack"
	"github.com/wiremesh/wiremesh/meshnode/paths"
	"github.com/wiremesh/wiremesh/meshnode/portmap"
	"github.com/wiremesh/wiremesh/meshnode/punch"
	"github.com/wiremesh/wiremesh/meshnode/relays"
	"github.com/wiremesh/wiremesh/meshnode/reporter"
	"github.com/wiremesh/wiremesh/meshnode/router"
	"github.com/wiremesh/wiremesh/meshnode/stunprobe"
	"github.com/wiremesh/wiremesh/metrics"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/relayclient"
)

// MTU is the tunnel MTU, Tailscale's 1280 (the IPv6 minimum). A full-size
// WireGuard packet is 1280 + 32 (header and tag) = 1312 bytes; over the
// relay fast path it travels in a 1353-byte FastSend datagram (41-byte
// header; the relay's limit is 2,048) and a 1345-byte FastRecv (33), well
// within a 1500-byte path. It no longer fits quic-go's 1313-byte first
// datagram (1312 + 33 = 1345), so without a fast path full-size packets
// go over the QUIC stream (relayclient and the relay fall back by
// themselves); smaller ones still go as datagrams. See docs/meshnode.md.
const MTU = 1280

// DefaultPort is the UDP port for WireGuard, disco and STUN.
const DefaultPort = 41641

// Config configures a node.
type Config struct {
	Coordinator string // coordinator URL
	AuthKey     string // needed on the first run only
	Hostname    string
	StateDir    string
	TUN         string // kernel TUN device name (when !Userspace)
	Userspace   bool
	Port        uint16 // UDP port; 0 picks one
	Socks5      string // userspace SOCKS5 listen address
	Metrics     string // --metrics-listen; empty: off
	// ForwardHost is where --userspace forwards inbound mesh TCP
	// connections (default 127.0.0.1).
	ForwardHost string
	// ForwardPorts are the ports --userspace forwards (--forward-ports);
	// empty forwards none. Socks5 and Metrics ports never are.
	ForwardPorts netstack.PortSet
	// Socks5AllowRemote lets Socks5 be a non-loopback address.
	Socks5AllowRemote bool
	// EndpointPrefixes, if set, limits the local interface addresses
	// offered to peers as direct-path candidates to these prefixes (for
	// example 127.0.0.0/8 when every node runs on one host).
	EndpointPrefixes []netip.Prefix
	// RelayOnly disables direct paths: every packet goes through relays.
	RelayOnly bool
	// PortMapping asks the gateway (NAT-PMP, PCP, UPnP IGD) to forward
	// the UDP port and offers the mapped address to peers
	// (--port-mapping, on by default in the CLI).
	PortMapping bool
	// Home-relay preferences (beside the relay map's): a region to pin,
	// regions never to use as home, and latency weights by region.
	PinRegion      string
	ExcludeRegions []string
	RegionWeights  map[string]float64
	// AcceptDNS runs MagicDNS (--accept-dns): the resolver on
	// 100.100.100.100:53 and, in kernel TUN mode, the OS pointed at it.
	AcceptDNS bool
	// CoordinatorPin is the coordinator certificate's pin, for a first
	// start without AuthKey (interactive login); empty trusts the system's
	// CA roots then.
	CoordinatorPin string
	// Subnet routes and exit nodes (kernel TUN for the router side):
	// AdvertiseRoutes (--advertise-routes, validated with routes.Validate)
	// and AdvertiseExitNode (--advertise-exit-node) are what this node
	// offers, SNATSubnetRoutes (--snat-subnet-routes, on in the CLI)
	// masquerades routed traffic behind its LAN address; AcceptRoutes
	// (--accept-routes) uses peers' approved routes, ExitNode
	// (--exit-node NAME|IP) sends all non-local traffic through that peer,
	// and ExitNodeAllowLAN (--exit-node-allow-lan-access) keeps the LAN
	// off it.
	AdvertiseRoutes   []netip.Prefix
	AdvertiseExitNode bool
	SNATSubnetRoutes  bool
	AcceptRoutes      bool
	ExitNode          string
	ExitNodeAllowLAN  bool
	// LoginOut receives the "To authenticate, visit: URL" line of an
	// interactive login (default os.Stderr).
	LoginOut io.Writer
	Log      *slog.Logger

	// testHook, if set, is called with the node once it has started.
	testHook func(*Node)
	// testNow, if set, is the clock for peer key expiry.
	testNow func() time.Time
	// testPortmap, if set, replaces the real port-mapping client.
	testPortmap startMapper
	// testResolvConf replaces /etc/resolv.conf; testNoBus skips the
	// system bus (systemd-resolved).
	testResolvConf string
	testNoBus      bool
}

// Node is a running daemon.
type Node struct {
	cfg       Config
	log       *slog.Logger
	state     stateDir
	priv      key.NodePrivate
	metrics   *nodeMetrics
	filter    *filter.Filter
	bind      *bind.Bind
	pool      *relayclient.Pool
	relays    *relays.Router
	paths     *paths.Manager
	discovery *paths.Discovery
	stun      *stunprobe.Prober
	check     *netcheck.Checker
	report    *reporter.Reporter
	dns       *magicDNS // nil with AcceptDNS off

	ctx    context.Context // the daemon's lifetime
	wg     sync.WaitGroup
	down   chan struct{}
	reg    *prometheus.Registry
	socket string // the local API socket, once listening
	// fatal carries an error that ends the daemon (an interactive login
	// that expired unapproved).
	fatal chan error
	// login is the interactive login in progress; only controlLoop uses it.
	login *netmap.LoginResponse
	// early is the router that blocks exit-node traffic before the first
	// netmap (blockUntilNetmap); nil once the engine's router owns it.
	early atomic.Pointer[router.Router]
	// uapiMu orders UAPI peer updates (netmap changes, expiries, route
	// moves) so that each is computed and applied before the next.
	uapiMu sync.Mutex

	mu struct {
		sync.Mutex
		engine     *engine // nil until the first netmap
		nm         *netmap.NetworkMap
		applied    map[key.NodePublic]netmap.Node // peers configured in the device
		token      []byte
		homeSince  time.Time
		coord      *coordclient.Client // the long-lived coordinator client
		coordUp    bool
		coordErr   string
		mapper     portmap.Mapper             // the port-mapping client; nil while none runs
		rtt        map[key.NodePublic]float64 // last disco RTT, ms
		dirtyCache bool
		// routeIPs are the routed prefixes each peer carries in WireGuard
		// beside its addresses (the primaries the route controller chose).
		routeIPs map[key.NodePublic][]netip.Prefix
		nat      natFacts
		// nextExpiry is when the earliest configured peer key expires
		// (plus KeyExpiryGrace); zero: none. It may be early (the peer
		// was since renewed or removed), which costs one scan.
		nextExpiry time.Time
	}
	engineReady chan struct{}
}

// Run runs a node until ctx ends or `meshnode down` is called. It returns
// only after every goroutine it started has exited, on every path: a
// start-up error, a stop before the first netmap, or a normal stop. The
// state directory is locked for the daemon's lifetime, so a second daemon
// on it refuses to start instead of taking the socket over.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ForwardHost == "" {
		cfg.ForwardHost = "127.0.0.1"
	}
	if cfg.AuthKey != "" {
		// A malformed key can never work: say so once, at start-up.
		if _, _, err := netmap.ParseAuthKey(cfg.AuthKey); err != nil {
			return fmt.Errorf("--authkey: %w", err)
		}
	}
	st := stateDir(cfg.StateDir)
	if err := st.init(); err != nil {
		return err
	}
	unlock, err := st.lock()
	if err != nil {
		return err
	}
	defer unlock()
	priv, err := st.nodeKey()
	if err != nil {
		return fmt.Errorf("node key: %w", err)
	}
	if err := checkRouteFlags(cfg); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	recoverDNS(cfg, st)
	cleanupRoutes(cfg)
	n := newNode(ctx, cfg, st, priv)
	defer n.stop(cancel)
	if err := n.start(); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case <-n.down:
		n.log.Info("shutting down: meshnode down")
	case err := <-n.fatal:
		return err
	}
	return nil
}

func newNode(ctx context.Context, cfg Config, st stateDir, priv key.NodePrivate) *Node {
	n := &Node{
		cfg: cfg, log: cfg.Log, state: st, priv: priv,
		filter: filter.New(nil), ctx: ctx, down: make(chan struct{}), fatal: make(chan error, 1),
		engineReady: make(chan struct{}),
	}
	n.filter.SetLocalOnly([]netip.Addr{dns.Address.Addr()}) // the resolver is for this node only
	n.mu.applied = map[key.NodePublic]netmap.Node{}
	n.mu.rtt = map[key.NodePublic]float64{}
	n.reg = metrics.NewRegistry()
	n.metrics = newNodeMetrics(n.reg, n)
	pool := &relayclient.Pool{Template: relayclient.Config{
		NodeKey:   priv,
		Token:     n.currentToken,
		Datagrams: true,
		FastPath:  true,
		Handler:   n.onRelayPacket,
		OnNotice:  n.onRelayNotice,
		Log:       n.log.With("component", "relay"),
		Prefs:     &relayclient.Prefs{},
	}}
	if cfg.markSockets() {
		pool.Template.Control = router.Control
	}
	n.pool = pool
	n.relays = relays.New(relays.Config{Pool: pool, Bind: bindRef{n}, PendingDrops: n.metrics.relayPendingDrops,
		Log: n.log.With("component", "relays")})
	n.bind = bind.New(bind.Config{Relay: n.relays, Direct: !cfg.RelayOnly,
		OnDisco:     func(src bind.Source, pkt []byte) { n.paths.HandleDisco(paths.Source(src), pkt) },
		OnSTUN:      func(src netip.AddrPort, pkt []byte) { n.stun.Handle(src, pkt) },
		OnRelaySend: func(peer key.NodePublic) { n.paths.RelaySent(peer) }})
	// Relay fast paths run over the bind's own UDP socket, so relayed
	// packets are sent and received in wireguard-go's batches (sendmmsg,
	// GSO, recvmmsg). Without a socket (--relay-only) each relay
	// connection opens one of its own.
	pool.Template.Shared = n.bind
	n.stun = stunprobe.New(n.bind, nil)
	n.paths = paths.New(paths.Config{Bind: n.bind, Transport: discoTransport{n.bind, n.relays},
		Self: priv.Public(), Disco: key.NewDisco(), Metrics: n.metrics.paths(),
		Endpoints: func() []netip.AddrPort { return n.discovery.Endpoints() },
		Punch:     n.punchConfig(),
		Log:       n.log.With("component", "paths")})
	n.discovery = paths.NewDiscovery(paths.DiscoveryConfig{
		LocalAddrs:  func() []netip.Addr { return paths.LocalAddrs(cfg.EndpointPrefixes, meshPrefix) },
		Port:        n.bind.Port,
		Relays:      n.relayAddrs,
		STUN:        n.stun,
		Report:      func(eps []netip.AddrPort) { n.report.Endpoints(eps) },
		NAT:         n.setNAT,
		PortMapping: n.mappedAddr,
		Paths:       n.paths,
		Log:         n.log,
	})
	if cfg.AcceptDNS {
		n.dns = n.newMagicDNS()
	}
	n.report = reporter.New(n.coordClient, n.log.With("component", "reporter"))
	n.check = netcheck.New(netcheck.Config{
		STUN: n.stun, UDP: func() bool { return n.bind.Port() != 0 },
		Relays: netcheck.PoolPinger{Pool: pool}, Home: n.relays.Home, OnHome: n.setHome,
		Prefs:   netcheck.Prefs{PinRegion: cfg.PinRegion, ExcludeRegions: cfg.ExcludeRegions, RegionWeights: cfg.RegionWeights},
		Metrics: netcheck.Metrics{RegionRTT: n.metrics.regionRTT, RegionLatency: n.metrics.regionLatency},
		OnUDP:   func(blocked bool) { n.mu.Lock(); n.mu.nat.udpBlocked = blocked; n.mu.Unlock() },
		Log:     n.log,
	})
	return n
}

// natFacts are what the probes say of this node's NAT, for metrics.
type natFacts struct {
	mapped     int  // relays that answered the last STUN round
	hard       bool // and saw different mappings
	udpBlocked bool // STUN fails while relay pings work
}

func (n *Node) setNAT(mapped int, hard bool) {
	n.metrics.hardNAT.Set(boolFloat(hard))
	n.mu.Lock()
	n.mu.nat.mapped, n.mu.nat.hard = mapped, hard
	n.mu.Unlock()
}

// PrimeTTL is the TTL of priming packets for bare Linux NATs: it passes
// two NATs of the node's own (a home router behind a carrier's NAT) and
// dies at the first router past them, before the far side's.
const PrimeTTL = 3

// punchConfig wires coordinated punches: birthday searches (our NAT kind
// from discovery, extra sockets, the winner handed to the bind) and
// priming from the bind's port. Nil with direct paths off.
func (n *Node) punchConfig() *paths.PunchConfig {
	if n.cfg.RelayOnly {
		return nil
	}
	return &paths.PunchConfig{
		Self: func() (bool, netip.AddrPort) {
			n.mu.Lock()
			hard := n.mu.nat.hard
			n.mu.Unlock()
			if pm, _ := n.portMapping(); pm.IsValid() {
				hard = false // the mapped address is one every peer reaches
			}
			return hard, n.discovery.PublicEndpoint()
		},
		Listen: func() (*net.UDPConn, error) { return net.ListenUDP("udp4", nil) },
		Sides:  n.bind,
		Prime: func(pkt []byte, dst netip.AddrPort) error {
			port := n.bind.Port()
			if port == 0 {
				return errors.New("no UDP socket")
			}
			p, err := punch.NewPrimer(PrimeTTL)
			if err != nil {
				return err
			}
			defer p.Close()
			return p.Send(port, dst, pkt)
		},
		Metrics: n.metrics.birthday,
	}
}

// discoTransport sends disco packets from the bind's UDP socket or
// through the relays.
type discoTransport struct {
	*bind.Bind
	*relays.Router
}

// bindRef hands the bind to the relay router, which is built first.
type bindRef struct{ n *Node }

func (b bindRef) SetRelay(peer key.NodePublic, link bind.RelayLink) { b.n.bind.SetRelay(peer, link) }

// relayAddrs lists every relay address in the current map.
func (n *Node) relayAddrs() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.nm == nil {
		return nil
	}
	var out []string
	for _, reg := range n.mu.nm.RelayMap.Regions {
		for _, r := range reg.Relays {
			out = append(out, r.Addr)
		}
	}
	return out
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// start brings up the local API, metrics and relay pool, applies the
// cached netmap and starts the control loop and the background parts.
func (n *Node) start() error {
	n.log.Info("starting", "node_key", n.priv.Public(), "state_dir", n.cfg.StateDir)
	// The local API comes up first so `meshnode status` works while the
	// node waits for the coordinator.
	sock := n.state.path(localapi.SocketName)
	ln, err := localapi.Listen(sock)
	if err != nil {
		return err
	}
	n.socket = sock
	n.goAsync(func(ctx context.Context) {
		if err := localapi.NewServer(n, n.log).Serve(ctx, ln); err != nil {
			n.log.Error("local api failed", "err", err)
		}
	})
	if n.cfg.Metrics != "" {
		ms, err := metrics.Listen(n.cfg.Metrics, n.reg, n.health)
		if err != nil {
			return err
		}
		n.goAsync(func(ctx context.Context) { ms.Run(ctx, n.log) })
	}
	n.goAsync(func(ctx context.Context) { n.pool.Run(ctx) })
	n.goAsync(n.relays.Run)

	if cached, err := n.state.loadNetmap(); err != nil {
		n.log.Warn("ignoring unreadable netmap cache", "err", err)
	} else if cached != nil {
		n.log.Info("starting from cached netmap", "peers", len(cached.Peers))
		if err := n.applyNetmap(cached, false); err != nil {
			return err
		}
	}
	if err := n.blockUntilNetmap(); err != nil {
		return err
	}
	// First in the reporter's queue: any later report (endpoints,
	// netcheck) the coordinator holds means the advertisement is in too.
	n.advertise()
	n.goAsync(n.controlLoop)
	n.goAsync(n.housekeeping)
	n.goAsync(n.paths.Run)
	n.goAsync(func(ctx context.Context) {
		select {
		case <-n.engineReady:
			n.discovery.Run(ctx)
		case <-ctx.Done():
		}
	})
	n.goAsync(n.check.Run)
	n.goAsync(n.report.Run)
	if n.cfg.PortMapping {
		n.goAsync(n.runPortMapping)
	}
	if n.cfg.testHook != nil {
		n.cfg.testHook(n)
	}
	return nil
}

// stop ends the node's lifetime (cancel), waits for every goroutine, saves
// the netmap cache, closes the engine and removes the socket. Run defers
// it, so it runs on every return path.
func (n *Node) stop(cancel context.CancelFunc) {
	cancel()
	n.wg.Wait()
	n.saveCache()
	n.stopDNS()
	n.closeEarlyBlock(true)
	n.mu.Lock()
	eng := n.mu.engine
	n.mu.Unlock()
	if eng != nil {
		eng.close()
		if eng.router != nil {
			// After the TUN device (and the routes through it) is gone:
			// until now the backstops kept traffic from the underlay.
			if err := eng.router.Close(); err != nil {
				n.log.Warn("removing routing state failed", "err", err)
			}
		}
	}
	if n.socket != "" {
		os.Remove(n.socket)
	}
}

// goAsync starts f as a goroutine owned by the node: Run waits for it.
func (n *Node) goAsync(f func(ctx context.Context)) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f(n.ctx)
	}()
}

// now is the node's clock for key expiry.
func (n *Node) now() time.Time {
	if n.cfg.testNow != nil {
		return n.cfg.testNow()
	}
	return time.Now()
}

func (n *Node) currentToken() []byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mu.token
}

func (n *Node) health() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.engine == nil {
		return errors.New("waiting for the first netmap")
	}
	return nil
}

func (n *Node) onRelayPacket(p relayclient.Packet) {
	if p.Disco {
		n.paths.HandleDisco(paths.Source{Peer: p.Src}, p.Payload)
		return
	}
	n.bind.DeliverRelay(p.Src, p.Payload)
}

func (n *Node) onRelayNotice(no relayclient.Notice) {
	switch no.Kind {
	case relayclient.NoticeRestarting:
		n.log.Info("relay restarting", "region", no.Relay.Region, "relay", no.Relay.Addr)
		n.check.RelayDraining(no.Relay.Region)
	case relayclient.NoticePeerGone:
		n.log.Debug("peer gone from relay", "peer", no.Peer.ShortString(), "region", no.Relay.Region, "reason", no.Gone)
		n.relays.PeerGone(no.Peer, no.Relay.Region)
	case relayclient.NoticePeerPresent:
		n.relays.PeerPresent(no.Peer)
	}
}

// housekeeping saves the netmap cache, expires filter flows and watches the
// home relay.
func (n *Node) housekeeping(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.expirePeers()
		n.saveCache()
		n.filter.Expire()
	}
}

// saveCache writes the netmap cache if it changed since the last write.
// Housekeeping calls it every second, and Run once more on the way out, so
// at most a second of changes is lost to a crash and none to a clean stop.
func (n *Node) saveCache() {
	n.mu.Lock()
	dirty, nm := n.mu.dirtyCache, n.mu.nm
	n.mu.dirtyCache = false
	var b []byte
	var err error
	if dirty && nm != nil {
		b, err = json.Marshal(nm) // under the lock: frames change nm in place
	}
	n.mu.Unlock()
	if !dirty || nm == nil {
		return
	}
	if err == nil {
		err = n.state.writeFile(netmapFile, b)
	}
	if err != nil {
		n.log.Warn("saving netmap cache failed", "err", err)
		return
	}
	n.log.Debug("saved netmap cache", "bytes", len(b))
}

// setHome makes r the home relay and tells the coordinator.
func (n *Node) setHome(r relayclient.Relay, reason string) {
	if n.relays.Home().Addr == r.Addr {
		return
	}
	n.relays.SetHome(r)
	n.mu.Lock()
	n.mu.homeSince = time.Now()
	n.mu.Unlock()
	n.metrics.homeChanges.WithLabelValues(reason).Inc()
	if _, err := n.pool.SetHome(r); err != nil {
		n.log.Warn("connecting home relay failed", "relay", r.Addr, "err", err)
	}
	n.report.Home(r.Region)
}

// peerByNameOrIP finds a peer for the CLI.
func (n *Node) peerByNameOrIP(s string) (netmap.Node, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ip, ipErr := netip.ParseAddr(s)
	for _, p := range n.mu.applied {
		if p.Name == s {
			return p, true
		}
		if ipErr == nil {
			for _, a := range p.Addresses {
				if a.Addr() == ip {
					return p, true
				}
			}
		}
	}
	return netmap.Node{}, false
}

// relayRegions maps relay addresses in the current map to their regions.
func (n *Node) relayRegions() map[string]string {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[string]string{}
	if n.mu.nm == nil {
		return out
	}
	for _, reg := range n.mu.nm.RelayMap.Regions {
		for _, r := range reg.Relays {
			out[r.Addr] = reg.Code
		}
	}
	return out
}
