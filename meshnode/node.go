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
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/bind"
	"github.com/wiremesh/wiremesh/meshnode/filter"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/meshnode/netstack"
	"github.com/wiremesh/wiremesh/metrics"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/relayclient"
)

// MTU is the tunnel MTU. A relayed packet must fit one QUIC datagram right
// after the handshake on a 1500-byte path, where quic-go carries 1313 bytes
// of datagram payload: 1248 (inner packet) + 32 (WireGuard header and tag)
// + 33 (relay frame type and source key) = 1313. See docs/meshnode.md.
const MTU = 1248

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
	// Home-relay preferences (beside the relay map's): a region to pin,
	// regions never to use as home, and latency weights by region.
	PinRegion      string
	ExcludeRegions []string
	RegionWeights  map[string]float64
	// CoordinatorPin is the coordinator certificate's pin, for a first
	// start without AuthKey (interactive login); empty trusts the system's
	// CA roots then.
	CoordinatorPin string
	// LoginOut receives the "To authenticate, visit: URL" line of an
	// interactive login (default os.Stderr).
	LoginOut io.Writer
	Log      *slog.Logger
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
	relays    *relays
	disco     *discoState
	paths     *paths
	endpoints *endpointState
	geo       *geoState

	ctx  context.Context // the daemon's lifetime
	wg   sync.WaitGroup
	down chan struct{}
	// fatal carries an error that ends the daemon (an interactive login
	// that expired unapproved).
	fatal chan error
	// login is the interactive login in progress; only controlLoop uses it.
	login *netmap.LoginResponse

	mu struct {
		sync.Mutex
		engine    *engine // nil until the first netmap
		nm        *netmap.NetworkMap
		applied   map[key.NodePublic]netmap.Node // peers configured in the device
		token     []byte
		home      relayclient.Relay
		homeSince time.Time
		coordUp   bool
		coordErr  string
		rtt       map[key.NodePublic]float64 // last disco RTT, ms
		// goneFrom records peers a relay said left it (peer-gone notice),
		// by the region of that relay: until the netmap names the peer's
		// new home, packets to it go through our own home relay.
		goneFrom   map[key.NodePublic]string
		dirtyCache bool
	}
	engineReady chan struct{}
}

// Run runs a node until ctx ends or `meshnode down` is called.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.ForwardHost == "" {
		cfg.ForwardHost = "127.0.0.1"
	}
	st := stateDir(cfg.StateDir)
	if err := st.init(); err != nil {
		return err
	}
	priv, err := st.nodeKey()
	if err != nil {
		return fmt.Errorf("node key: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := &Node{
		cfg: cfg, log: cfg.Log, state: st, priv: priv,
		filter: filter.New(nil), ctx: ctx, down: make(chan struct{}), fatal: make(chan error, 1),
		engineReady: make(chan struct{}),
	}
	n.mu.applied = map[key.NodePublic]netmap.Node{}
	n.mu.rtt = map[key.NodePublic]float64{}
	n.mu.goneFrom = map[key.NodePublic]string{}
	reg := metrics.NewRegistry()
	n.metrics = newNodeMetrics(reg, n)
	n.disco = newDiscoState(n)
	n.paths = newPaths(n)
	n.endpoints = newEndpointState(n)
	n.geo = newGeoState(n)
	n.log.Info("starting", "node_key", priv.Public(), "state_dir", cfg.StateDir)

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
	n.relays = &relays{n: n, pool: pool, pending: map[string]*pendingQueue{}}
	n.bind = bind.New(bind.Config{Relay: n.relays, Direct: !cfg.RelayOnly, OnDisco: n.disco.handle,
		OnSTUN: n.endpoints.onSTUN, OnRelaySend: n.paths.onRelaySend})

	// The local API comes up first so `meshnode status` works while the
	// node waits for the coordinator.
	ln, err := localapi.Listen(st.path(localapi.SocketName))
	if err != nil {
		return err
	}
	n.goAsync(func(ctx context.Context) {
		if err := localapi.NewServer(n, n.log).Serve(ctx, ln); err != nil {
			n.log.Error("local api failed", "err", err)
		}
	})
	if cfg.Metrics != "" {
		ms, err := metrics.Listen(cfg.Metrics, reg, n.health)
		if err != nil {
			return err
		}
		n.goAsync(func(ctx context.Context) { ms.Run(ctx, n.log) })
	}
	n.goAsync(func(ctx context.Context) { pool.Run(ctx) })

	if cached, err := st.loadNetmap(); err != nil {
		n.log.Warn("ignoring unreadable netmap cache", "err", err)
	} else if cached != nil {
		n.log.Info("starting from cached netmap", "peers", len(cached.Peers))
		if err := n.applyNetmap(cached, false); err != nil {
			return err
		}
	}
	n.goAsync(n.controlLoop)
	n.goAsync(n.housekeeping)
	n.goAsync(n.endpoints.run)
	n.goAsync(n.geo.run)

	var fatal error
	select {
	case <-ctx.Done():
	case <-n.down:
		n.log.Info("shutting down: meshnode down")
	case fatal = <-n.fatal:
	}
	cancel()
	n.wg.Wait()
	n.saveCache()
	n.mu.Lock()
	eng := n.mu.engine
	n.mu.Unlock()
	if eng != nil {
		eng.close()
	}
	os.Remove(st.path(localapi.SocketName))
	return fatal
}

// maxGone bounds the peer-gone table (entries are dropped when the netmap
// changes the peer's home, or the peer shows up again).
const maxGone = 4096

// goAsync starts f as a goroutine owned by the node: Run waits for it.
func (n *Node) goAsync(f func(ctx context.Context)) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f(n.ctx)
	}()
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

// relayFor returns the relay to reach peer through: its home relay if the
// map knows it, else our own home.
func (n *Node) relayFor(peer key.NodePublic) (relayclient.Relay, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p, ok := n.mu.applied[peer]; ok && p.HomeRelay != "" && n.mu.nm != nil && n.mu.goneFrom[peer] != p.HomeRelay {
		if r, ok := relayOf(n.mu.nm.RelayMap, p.HomeRelay); ok {
			return r, true
		}
	}
	if n.mu.home.Addr != "" {
		return n.mu.home, true
	}
	return relayclient.Relay{}, false
}

func (n *Node) onRelayPacket(p relayclient.Packet) {
	if p.Disco {
		n.disco.handle(bind.Source{Peer: p.Src}, p.Payload)
		return
	}
	n.bind.DeliverRelay(p.Src, p.Payload)
}

func (n *Node) onRelayNotice(no relayclient.Notice) {
	switch no.Kind {
	case relayclient.NoticeRestarting:
		n.log.Info("relay restarting", "region", no.Relay.Region, "relay", no.Relay.Addr)
		n.geo.relayDraining(no.Relay.Region)
	case relayclient.NoticePeerGone:
		n.log.Debug("peer gone from relay", "peer", no.Peer.ShortString(), "region", no.Relay.Region, "reason", no.Gone)
		n.mu.Lock()
		if len(n.mu.goneFrom) < maxGone {
			n.mu.goneFrom[no.Peer] = no.Relay.Region
		}
		n.mu.Unlock()
	case relayclient.NoticePeerPresent:
		n.mu.Lock()
		delete(n.mu.goneFrom, no.Peer)
		n.mu.Unlock()
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
		n.paths.tick(time.Now())
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
	n.mu.Unlock()
	if !dirty || nm == nil {
		return
	}
	if err := n.state.saveNetmap(nm); err != nil {
		n.log.Warn("saving netmap cache failed", "err", err)
		return
	}
	n.log.Debug("saved netmap cache", "peers", len(nm.Peers))
}

// setHome makes r the home relay and tells the coordinator.
func (n *Node) setHome(r relayclient.Relay, reason string) {
	n.mu.Lock()
	if n.mu.home.Addr == r.Addr {
		n.mu.Unlock()
		return
	}
	n.mu.home = r
	n.mu.homeSince = time.Now()
	n.mu.Unlock()
	n.metrics.homeChanges.WithLabelValues(reason).Inc()
	if _, err := n.relays.pool.SetHome(r); err != nil {
		n.log.Warn("connecting home relay failed", "relay", r.Addr, "err", err)
	}
	n.goAsync(func(ctx context.Context) { n.reportHome(ctx, r.Region) })
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
