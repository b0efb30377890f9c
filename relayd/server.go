// Package relayd is the Wiremesh relay server. It admits nodes that present
// a coordinator-signed admission token and prove possession of their node
// key, forwards WireGuard and disco packets between them by node key or
// short handle, serves STUN on its QUIC port, falls back to TLS over TCP for
// networks that drop UDP, and meshes with the other relays of its region so
// that two nodes homed on different servers of one region reach each other
// in one hop.
//
// Flow of a packet (see client.go for the queues):
//
//	reader (stream or datagram loop) → rate limit → lookup destination
//	  local  → destination's bounded queue (drop oldest) → its writer → datagram or stream
//	  remote → mesh peer's bounded queue → MeshForward on the mesh stream
//	  absent → dropped (no_such_peer) and a PeerGone notice to the sender
//
// Every goroutine belongs to the Server's WaitGroup and stops when Run's
// context ends; Run returns only after all of them have exited.
package relayd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
	"github.com/wiremesh/wiremesh/tlspin"
)

// Protocol timing. Clients send QUIC keep-alives every KeepAlive (under the
// usual 30 s UDP NAT timeout); a connection silent for IdleTimeout (three
// keep-alives) is dead.
const (
	KeepAlive   = relayproto.KeepAlive
	IdleTimeout = 3 * KeepAlive
	// DefaultHelloTimeout bounds the time from a connection's accept to its
	// hello (QUIC: also the handshake itself). A real client needs two or
	// three round trips; 10 s covers the slowest mobile links while an idle
	// connection holds its pending slot no longer than that.
	DefaultHelloTimeout = 10 * time.Second
	// DefaultHandshakeTimeout bounds a TLS-over-TCP handshake, the first
	// stage of DefaultHelloTimeout.
	DefaultHandshakeTimeout = 5 * time.Second
	// pingInterval is how often the relay pings each client to measure
	// its RTT (relayd_client_rtt_seconds). It also keeps TCP alive.
	pingInterval = 20 * time.Second
)

// Default queue sizes. DefaultQueueLen is 4× derper's 32 so a burst the size
// of quic-go's 32-datagram send queue plus a few RTTs of 1 Gbit/s traffic
// fits; the disco queue only needs room for a handful of probes.
const (
	DefaultQueueLen      = 128
	DefaultDiscoQueueLen = 16
	ctrlQueueLen         = 64 // control frames; overflow closes the client (it is not reading)
)

// Transport names, the values of the transport label.
const (
	transportQUIC = relayproto.TransportQUIC
	transportTCP  = relayproto.TransportTCP
)

// Config configures a Server.
type Config struct {
	Region     string // region code this relay serves; tokens for other regions are refused
	Listen     string // UDP address for QUIC and STUN
	ListenTCP  string // TCP address for TLS fallback; "" means the port of Listen; "off" disables
	ListenSTUN string // optional extra plain STUN UDP address (e.g. ":3478")
	ListenFast string // optional UDP fast-path address; "" disables the fast path
	// FastShared makes every fast-path client use the ListenFast socket
	// instead of a socket of its own (for firewalls that open one port);
	// fairness between fast-path clients is then lost (docs/relayd.md).
	FastShared bool
	// FastNoGSO turns UDP GSO off on the fast path's sends (sendmmsg
	// batching stays); for measuring, or kernels that misbehave with it.
	FastNoGSO bool
	// FastBulkNice is how much lower the CPU priority (nice) of a bulk
	// client's fast-path loop is: a client that keeps its own socket full
	// is served from a thread of its own at that lower priority, so that
	// the other clients' packets preempt it (docs/relayd.md). 0 means
	// DefaultFastBulkNice, negative turns it off.
	FastBulkNice int
	PublicAddr   string // host:port clients use; only put in the certificate
	StateDir     string // relay key and certificate live here

	Trusted    []key.SigningPublic // coordinator signing keys (see SetTrusted)
	MeshWith   []string            // regional peers' addresses (see SetMesh)
	MeshSecret []byte

	QueueLen      int     // per-client data queue; 0 means DefaultQueueLen
	DiscoQueueLen int     // per-client disco queue; 0 means DefaultDiscoQueueLen
	QueueBytes    int     // payload bytes queued per client, both queues; 0 means DefaultQueueBytes
	ClientRate    float64 // bytes/s per client; 0 means DefaultClientRate, negative unlimited
	ClientBurst   int     // token bucket depth in bytes; 0 means DefaultClientBurst of ClientRate
	DrainGrace    time.Duration

	// Admission limits (see pending.go). Zero values take the defaults.
	HelloTimeout        time.Duration // accept to hello; DefaultHelloTimeout
	HandshakeTimeout    time.Duration // TCP accept to TLS handshake done; DefaultHandshakeTimeout
	MaxPending          int           // connections not yet admitted, QUIC and TCP together; DefaultMaxPending
	MaxPendingPerSource int           // of those, per source address (IPv6: per /64); DefaultMaxPendingPerSource
	// RetryAbove makes QUIC send Retry (address validation) while at least
	// this many connections are pending or handshaking; 0 means
	// MaxPending/4, negative means always.
	RetryAbove int

	// Now returns the time for token checks; nil means time.Now.
	Now func() time.Time
}

// Server is a relay. Create with New, serve with Run.
type Server struct {
	cfg  Config
	log  *slog.Logger
	m    *metrics
	priv key.RelayPrivate
	pub  key.RelayPublic
	cert tls.Certificate
	pin  string
	t0   time.Time // base for queue timestamps (monotonic)
	// fastKey keys the fast-path challenges (fastChallenge); it never
	// leaves the process, and a restart invalidates every fast path anyway.
	fastKey [32]byte

	udp  *net.UDPConn
	tr   *quic.Transport
	ql   *quic.Listener
	tcp  net.Listener
	stun *net.UDPConn
	fast *net.UDPConn
	// fastBC batches reads and writes on fast; fastNoGSO is set once a
	// send shows the path cannot do UDP GSO (or Config.FastNoGSO).
	fastBC    batchConn
	fastNoGSO atomic.Bool
	// bulkNiceFailed is set once lowering a bulk loop's priority failed
	// (logged once).
	bulkNiceFailed atomic.Bool
	// pollKick wakes pollKeeper (see fastKick).
	pollKick chan struct{}

	trusted  atomic.Pointer[[]key.SigningPublic]
	draining atomic.Bool

	revokedKeys    revokedSet // see revoke.go
	stunLim        *stunLimiter
	pending        *pendingSet  // connections not yet admitted
	quicHandshakes atomic.Int64 // QUIC connections between ConnContext and Accept

	wg sync.WaitGroup // every goroutine the server starts

	mu struct {
		sync.RWMutex
		clients  map[key.NodePublic]*client
		remote   map[key.NodePublic]key.RelayPublic // client → mesh peer it is on
		sessions map[[relayproto.SessionLen]byte]*client
		meshOut  map[key.RelayPublic]*meshOut // authenticated outbound mesh links
	}
	mesh meshState
}

// New loads or creates the relay's key and certificate in cfg.StateDir and
// binds its sockets. Call Run to serve, or Close if Run is never called.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = DefaultQueueLen
	}
	if cfg.DiscoQueueLen <= 0 {
		cfg.DiscoQueueLen = DefaultDiscoQueueLen
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = DefaultHelloTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	if cfg.MaxPendingPerSource <= 0 {
		cfg.MaxPendingPerSource = DefaultMaxPendingPerSource
	}
	if cfg.RetryAbove == 0 {
		cfg.RetryAbove = max(1, cfg.MaxPending/4)
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = DefaultQueueBytes
	}
	if cfg.ClientRate == 0 {
		cfg.ClientRate = DefaultClientRate
	}
	if cfg.FastBulkNice == 0 {
		cfg.FastBulkNice = DefaultFastBulkNice
	}
	cfg.FastBulkNice = min(cfg.FastBulkNice, 19)
	if cfg.ClientRate > 0 && cfg.ClientBurst <= 0 {
		cfg.ClientBurst = max(int(cfg.ClientRate*DefaultClientBurst.Seconds()), minClientBurst)
	}
	priv, cert, err := LoadState(cfg.StateDir, cfg.PublicAddr)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, m: newMetrics(reg), priv: priv, pub: priv.Public(), cert: cert,
		pin: pinFromCert(cert), t0: time.Now(), pollKick: make(chan struct{}, 1)}
	s.m.regionInfo.WithLabelValues(cfg.Region).Set(1)
	rand.Read(s.fastKey[:])
	if err := s.loadRevoked(); err != nil {
		return nil, err
	}
	s.stunLim = newSTUNLimiter(time.Now())
	s.pending = newPendingSet(cfg.MaxPending, cfg.MaxPendingPerSource, s.m)
	s.mu.clients = map[key.NodePublic]*client{}
	s.mu.remote = map[key.NodePublic]key.RelayPublic{}
	s.mu.sessions = map[[relayproto.SessionLen]byte]*client{}
	s.mu.meshOut = map[key.RelayPublic]*meshOut{}
	s.SetTrusted(cfg.Trusted)
	s.mesh.init(cfg.MeshWith, cfg.MeshSecret)
	if err := s.bind(); err != nil {
		s.closeSockets()
		return nil, err
	}
	return s, nil
}

func (s *Server) bind() error {
	ua, err := net.ResolveUDPAddr("udp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("relayd: --listen %q: %w", s.cfg.Listen, err)
	}
	if s.udp, err = net.ListenUDP("udp", ua); err != nil {
		return fmt.Errorf("relayd: listen udp: %w", err)
	}
	s.tr = &quic.Transport{Conn: s.udp, ConnContext: s.quicConnContext, VerifySourceAddress: s.quicVerifySource}
	tconf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{s.cert},
		NextProtos:   []string{relayproto.ALPN, relayproto.MeshALPN},
		// Clients never resume: a ticket per connection is wasted work and memory.
		SessionTicketsDisabled: true,
	}
	if s.ql, err = s.tr.Listen(tconf, quicConfig(s.cfg.HelloTimeout)); err != nil {
		return fmt.Errorf("relayd: quic listen: %w", err)
	}
	// quic-go discards non-QUIC packets until the first ReadNonQUICPacket
	// call; make that call now so STUN that arrives before Run is queued.
	done, cancel := context.WithCancel(context.Background())
	cancel()
	s.tr.ReadNonQUICPacket(done, nil)
	switch tcpAddr := s.cfg.ListenTCP; tcpAddr {
	case "off":
	default:
		if tcpAddr == "" {
			tcpAddr = s.udp.LocalAddr().String()
		}
		ln, err := net.Listen("tcp", tcpAddr)
		if err != nil {
			return fmt.Errorf("relayd: listen tcp: %w", err)
		}
		s.tcp = tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{s.cert}, NextProtos: []string{relayproto.ALPN}})
	}
	if s.cfg.ListenSTUN != "" {
		sa, err := net.ResolveUDPAddr("udp", s.cfg.ListenSTUN)
		if err != nil {
			return fmt.Errorf("relayd: --stun-listen %q: %w", s.cfg.ListenSTUN, err)
		}
		if s.stun, err = net.ListenUDP("udp", sa); err != nil {
			return fmt.Errorf("relayd: listen stun: %w", err)
		}
	}
	if s.cfg.ListenFast != "" {
		fa, err := net.ResolveUDPAddr("udp", s.cfg.ListenFast)
		if err != nil {
			return fmt.Errorf("relayd: --fastpath-listen %q: %w", s.cfg.ListenFast, err)
		}
		if s.fast, err = net.ListenUDP("udp", fa); err != nil {
			return fmt.Errorf("relayd: listen fast path: %w", err)
		}
		// Same buffer quic-go asks for on its socket; the fast path has no
		// other queue in front of it.
		s.fast.SetReadBuffer(7 << 20)
		s.fast.SetWriteBuffer(7 << 20)
		s.fastBC = newBatchConn(s.fast)
		s.fastNoGSO.Store(s.cfg.FastNoGSO)
	}
	return nil
}

// quicConfig is shared by the listener and the mesh dialer.
func quicConfig(helloTimeout time.Duration) *quic.Config {
	return &quic.Config{
		EnableDatagrams:       true,
		MaxIdleTimeout:        IdleTimeout,
		HandshakeIdleTimeout:  helloTimeout,
		MaxIncomingStreams:    4, // one control stream; room for a client retrying
		MaxIncomingUniStreams: -1,
		KeepAlivePeriod:       KeepAlive,
	}
}

func (s *Server) closeSockets() {
	if s.ql != nil {
		s.ql.Close()
	}
	if s.tr != nil {
		s.tr.Close() // does not close a conn it was given
	}
	if s.udp != nil {
		s.udp.Close()
	}
	if s.tcp != nil {
		s.tcp.Close()
	}
	if s.stun != nil {
		s.stun.Close()
	}
	if s.fast != nil {
		s.fast.Close()
	}
}

// Addr returns the bound UDP (QUIC and STUN) address.
func (s *Server) Addr() *net.UDPAddr { return s.udp.LocalAddr().(*net.UDPAddr) }

// TCPAddr returns the bound TLS-over-TCP address, or nil if disabled.
func (s *Server) TCPAddr() net.Addr {
	if s.tcp == nil {
		return nil
	}
	return s.tcp.Addr()
}

// STUNAddr returns the extra STUN address, or nil.
func (s *Server) STUNAddr() net.Addr {
	if s.stun == nil {
		return nil
	}
	return s.stun.LocalAddr()
}

// PublicKey returns the relay's key, to which clients seal their proof.
func (s *Server) PublicKey() key.RelayPublic { return s.pub }

// Pin returns the certificate pin clients verify.
func (s *Server) Pin() string { return s.pin }

// SetTrusted replaces the coordinator signing keys that admission tokens
// must be signed by. Safe to call while serving; connected clients stay.
func (s *Server) SetTrusted(keys []key.SigningPublic) {
	k := append([]key.SigningPublic(nil), keys...)
	s.trusted.Store(&k)
}

// FastAddr returns the fast-path UDP address, or nil.
func (s *Server) FastAddr() net.Addr {
	if s.fast == nil {
		return nil
	}
	return s.fast.LocalAddr()
}

// Clients returns the number of connected clients.
func (s *Server) Clients() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.mu.clients)
}

// Healthy returns nil while the relay accepts clients; /healthz uses it.
func (s *Server) Healthy() error {
	if s.draining.Load() {
		return errors.New("draining")
	}
	return nil
}

// Run serves until ctx ends, then drains: it tells every client the relay
// is restarting, waits up to DrainGrace for them to leave, and closes.
// It returns after every goroutine it started has exited.
func (s *Server) Run(ctx context.Context) error {
	sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	s.spawn(func() { s.acceptQUIC(sctx) })
	if s.tcp != nil {
		s.spawn(func() { s.acceptTCP(sctx) })
	}
	s.spawn(func() { s.serveSTUNQUIC(sctx) })
	if s.stun != nil {
		s.spawn(func() { s.serveSTUNUDP(sctx) })
	}
	if s.fast != nil {
		s.spawn(func() { s.serveFast(sctx) })
		s.spawn(func() { s.pollKeeper(sctx) })
	}
	s.spawn(func() { s.pingLoop(sctx) })
	s.spawn(func() { s.meshLoop(sctx) })
	s.log.Info("relay serving", "udp", s.Addr().String(), "tcp", fmt.Sprint(s.TCPAddr()),
		"region", s.cfg.Region, "relay_key", s.pub.String(), "pin", s.pin)

	<-ctx.Done()
	s.drain()
	// Close clients while the socket is still open, so their close
	// frames reach them; closing the transport first would drop them
	// silently and leave clients waiting out the idle timeout.
	s.closeAllClients("relay shut down")
	stop()
	if s.tcp != nil {
		s.tcp.Close() // unblocks acceptTCP
	}
	s.wg.Wait()
	s.closeSockets()
	return nil
}

// drain stops admitting, tells clients to reconnect elsewhere or later and
// waits up to DrainGrace for them to go.
func (s *Server) drain() {
	s.draining.Store(true)
	s.m.draining.Set(1)
	if s.ql != nil {
		s.ql.Close() // established connections are unaffected
	}
	grace := s.cfg.DrainGrace
	s.log.Info("draining", "clients", s.Clients(), "grace", grace)
	body := (&relayproto.Restarting{ReconnectIn: grace, TryFor: 2 * grace}).Append(nil)
	for _, c := range s.snapshotClients() {
		c.enqueueCtrl(relayproto.FrameRestarting, body)
	}
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for s.Clients() > 0 {
		select {
		case <-deadline.C:
			return
		case <-tick.C:
		}
	}
}

func (s *Server) spawn(f func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
}

func (s *Server) snapshotClients() []*client {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*client, 0, len(s.mu.clients))
	for _, c := range s.mu.clients {
		out = append(out, c)
	}
	return out
}

func (s *Server) closeAllClients(why string) {
	for _, c := range s.snapshotClients() {
		c.close(why)
	}
}

// nowNanos returns monotonic nanoseconds since the server started, for
// queue timestamps (8 bytes instead of a 24-byte time.Time per packet).
func (s *Server) nowNanos() int64 { return int64(time.Since(s.t0)) }

func pinFromCert(c tls.Certificate) string { return tlspin.Pin(c.Leaf) }

// State file names in --state-dir.
const (
	relayKeyFile = "relay.key"
	certName     = "relay" // relay.crt and relay.key.pem
)

// LoadState loads (or creates on first start) the relay key and TLS
// certificate kept in dir. publicAddr's host goes into the certificate.
func LoadState(dir, publicAddr string) (key.RelayPrivate, tls.Certificate, error) {
	if dir == "" {
		return key.RelayPrivate{}, tls.Certificate{}, errors.New("relayd: --state-dir is required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return key.RelayPrivate{}, tls.Certificate{}, fmt.Errorf("relayd: state dir: %w", err)
	}
	priv, err := key.LoadOrCreate(filepath.Join(dir, relayKeyFile), key.NewRelay)
	if err != nil {
		return priv, tls.Certificate{}, fmt.Errorf("relayd: relay key: %w", err)
	}
	var hosts []string
	if h, _, err := net.SplitHostPort(publicAddr); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	cert, err := tlspin.LoadOrCreate(dir, certName+"-tls", hosts...)
	if err != nil {
		return priv, cert, fmt.Errorf("relayd: certificate: %w", err)
	}
	return priv, cert, nil
}
