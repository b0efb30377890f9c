// Package coordinator is Wiremesh's control plane: it registers nodes with
// pre-auth keys, gives each a stable name and 100.64.0.0/10 address, streams
// every node its netmap (a full map, then deltas), keeps the relay fleet
// (join keys, join, heartbeats), compiles the policy into per-node packet
// filters and peer lists, and serves the admin socket. It never carries
// traffic.
//
// Flow of one change: a request (register, endpoint update, stream open or
// close, admin delete/expire, policy set, relay heartbeat) is authenticated,
// written through the store, then applied to the in-memory state under one
// lock, which marks the sessions of exactly the nodes it affects (see
// state.go). Each session's writer sends one coalesced delta (session.go).
package coordinator

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/coordinator/policy"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/tlspin"
)

// Defaults, with reasons.
const (
	// DefaultKeyExpiry is how long a node key stays valid after
	// registration: 180 days, as Tailscale does, so a stolen key dies on its
	// own while honest nodes re-authenticate twice a year.
	DefaultKeyExpiry = 180 * 24 * time.Hour
	// DefaultEphemeralTimeout is how long an ephemeral node may stay offline
	// before it is deleted: long enough to ride out a reconnect.
	DefaultEphemeralTimeout = 2 * time.Minute
	// DefaultHeartbeatInterval is how often relays heartbeat; a relay is
	// marked down after netmap.RelayDownAfter missed ones (30 s).
	DefaultHeartbeatInterval = 10 * time.Second
	// DefaultSweepInterval is how often expiries, relay silence and token
	// refreshes are checked. One second keeps a node whose key expiry
	// passes within the 2 s revocation goal (peers drop it, relays are
	// told), and a sweep is one read-locked pass over the nodes.
	DefaultSweepInterval = time.Second
	// DefaultDNSDomain is the suffix of MagicDNS names.
	DefaultDNSDomain = "mesh.internal"
	// MaxRequestBody bounds every node and relay request body. The largest,
	// an update with many endpoints and a netcheck, is a few KiB.
	MaxRequestBody = 64 << 10
	// maxConcurrentStreams per HTTP/2 connection: a node needs two (its
	// map stream and a request). Go's HTTP/2 round-robin write scheduler
	// scans every stream of a connection, with a cache miss each, on every
	// frame it sends: at 100 streams per connection that scan was a quarter
	// of the coordinator's CPU in a 10,000-stream fan-out. 16 keeps it small
	// while a load generator still multiplexes (clients open more
	// connections past the limit).
	maxConcurrentStreams = 16
)

// Files in the state directory.
const (
	dbFile      = "coordinator.db"
	coordKeyF   = "coordinator.key"
	signKeyF    = "signing.key"
	certName    = "tls" // tls.crt and tls.key, made by tlspin
	AdminSocket = "admin.sock"
)

// Config configures a Server. Zero durations take the defaults above.
type Config struct {
	Listen    string
	StateDir  string
	ServerURL string
	// DB is empty (SQLite in StateDir), sqlite://PATH, or a postgres://
	// URL shared by every replica.
	DB           string
	PolicyFile   string
	RelayMapFile string
	TLSCert      string
	TLSKey       string
	// InsecureHTTP serves plain HTTP; allowed only on a loopback address.
	InsecureHTTP      bool
	KeyExpiry         time.Duration
	EphemeralTimeout  time.Duration
	HeartbeatInterval time.Duration
	TokenLifetime     time.Duration
	SweepInterval     time.Duration
	DNSDomain         string
	Nameservers       []netip.Addr
	// WebListen serves the web console (HTTPS) when set; WebURL is its
	// address as browsers reach it (default https://WEB_LISTEN).
	WebListen, WebURL string
	// LoginLifetime is how long an interactive login waits for approval
	// (zero: LoginLifetime, 10 minutes). Tests make it short.
	LoginLifetime time.Duration
	// NoAdminSocket skips the admin socket (tests drive Admin directly).
	NoAdminSocket bool
	// ReplayCacheSize and ReplayPerSource bound the proof replay cache
	// (whole, and per source address); zero takes maxReplayEntries and
	// maxReplayPerSource. Tests make them small.
	ReplayCacheSize, ReplayPerSource int
	// BodyTimeout bounds how long a request body may take to arrive;
	// MaxConnsPerSource how many connections one address may hold (see
	// conns.go). Zero takes DefaultBodyTimeout, DefaultMaxConnsPerSource.
	BodyTimeout       time.Duration
	MaxConnsPerSource int
	// RevocationPollTimeout is how long a relay's revocation poll is held
	// with nothing new; zero takes netmap.RevocationPollTimeout.
	RevocationPollTimeout time.Duration

	Logger   *slog.Logger
	Registry prometheus.Registerer
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server is a running coordinator.
type Server struct {
	cfg   Config
	log   *slog.Logger
	store store.Store
	st    *state
	// dns is the DNS settings in force; guarded by st.mu, replaced whole
	// (never changed in place), so a frame may hold a shallow copy.
	dns netmap.DNS
	m   *serverMetrics

	coordPriv key.CoordPrivate
	coordPub  key.CoordPublic
	signPriv  key.SigningPrivate
	signer    key.Signer
	signPub   key.SigningPublic
	cert      tls.Certificate
	pin       string

	relays *relayFleet
	revs   *revocations
	replay *replayCache
	// shared is the store as replicas share it; nil with SQLite, whose
	// coordinator is the only one.
	shared store.Shared
	rep    *replicas
	// policyMu orders policy changes: store write, then install.
	policyMu sync.Mutex
	// dnsMu orders DNS settings changes the same way (dns.go).
	dnsMu sync.Mutex

	ln      net.Listener
	adminLn net.Listener
	webLn   net.Listener // nil without --web-listen
	webTmpl map[string]*template.Template
	// webSwept is when expired console rows were last deleted (sweep
	// goroutine only).
	webSwept time.Time
	// started is when New ran (see revokeUntil).
	started time.Time
}

// webSweepInterval spaces the deletion of expired sign-in links, sessions
// and logins: they are refused when read anyway, so this only bounds the
// tables.
const webSweepInterval = time.Minute

// New opens the state directory and the store, loads the working set, and
// binds the listeners. Call Run to serve.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("--state-dir is required")
	}
	if cfg.Listen == "" {
		return nil, errors.New("--listen is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.KeyExpiry, DefaultKeyExpiry)
	def(&cfg.EphemeralTimeout, DefaultEphemeralTimeout)
	def(&cfg.HeartbeatInterval, DefaultHeartbeatInterval)
	def(&cfg.TokenLifetime, admit.DefaultLifetime)
	def(&cfg.RevocationPollTimeout, netmap.RevocationPollTimeout)
	def(&cfg.SweepInterval, DefaultSweepInterval)
	def(&cfg.BodyTimeout, DefaultBodyTimeout)
	def(&cfg.LoginLifetime, LoginLifetime)
	if cfg.MaxConnsPerSource <= 0 {
		cfg.MaxConnsPerSource = DefaultMaxConnsPerSource
	}
	if cfg.DNSDomain == "" {
		cfg.DNSDomain = DefaultDNSDomain
	}
	dbPath := filepath.Join(cfg.StateDir, dbFile)
	pg := store.IsPostgresURL(cfg.DB)
	switch {
	case pg:
	case strings.HasPrefix(cfg.DB, "sqlite://"):
		dbPath = strings.TrimPrefix(cfg.DB, "sqlite://")
	case cfg.DB != "":
		return nil, fmt.Errorf("--db %q: want postgres://USER@HOST:PORT/DB?sslmode=disable or sqlite://PATH (or omit it)", cfg.DB)
	}
	if cfg.InsecureHTTP {
		host, _, err := net.SplitHostPort(cfg.Listen)
		ip, perr := netip.ParseAddr(host)
		if err != nil || perr != nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("--insecure-http needs a loopback --listen address such as 127.0.0.1:8080, not %q", cfg.Listen)
		}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if cfg.ReplayCacheSize <= 0 {
		cfg.ReplayCacheSize = maxReplayEntries
	}
	if cfg.ReplayPerSource <= 0 {
		cfg.ReplayPerSource = maxReplayPerSource
	}
	srv := &Server{cfg: cfg, log: cfg.Logger, st: newState(), started: cfg.Now(),
		replay: newReplayCache(netmap.ProofWindow, cfg.ReplayCacheSize, cfg.ReplayPerSource)}
	srv.rep = newReplicas(srv)
	var err error
	// The admin socket comes first: it also detects another coordinator
	// on this state directory before anything is opened or written.
	if !cfg.NoAdminSocket {
		if srv.adminLn, err = listenAdmin(filepath.Join(cfg.StateDir, AdminSocket)); err != nil {
			return nil, err
		}
	}
	fail := func(err error) (*Server, error) {
		srv.closeAll()
		return nil, err
	}
	if pg {
		ps, err := store.OpenPostgres(ctx, cfg.DB, cfg.Logger)
		if err != nil {
			return fail(err)
		}
		srv.store, srv.shared = ps, ps
	} else {
		ss, err := store.OpenSQLite(ctx, dbPath)
		if err != nil {
			return fail(err)
		}
		srv.store = ss
	}
	if err := srv.loadSecrets(ctx); err != nil {
		return fail(err)
	}
	st := srv.store
	snap, err := st.Load(ctx)
	if err != nil {
		return fail(err)
	}
	if err := srv.initDNS(snap.DNS); err != nil {
		return fail(err)
	}
	if err := srv.loadSnapshot(snap); err != nil {
		return fail(err)
	}
	if srv.relays, err = newRelayFleet(srv, snap); err != nil {
		return fail(err)
	}
	if srv.revs, err = newRevocations(snap); err != nil {
		return fail(err)
	}
	if cfg.PolicyFile != "" {
		text, err := os.ReadFile(cfg.PolicyFile)
		if err != nil {
			return fail(fmt.Errorf("--policy: %w", err))
		}
		if err := srv.SetPolicy(ctx, text); err != nil {
			return fail(fmt.Errorf("--policy %s: %w", cfg.PolicyFile, err))
		}
	}
	srv.m = newServerMetrics(cfg.Registry, srv)

	if srv.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return fail(fmt.Errorf("listen %s: %w", cfg.Listen, err))
	}
	if cfg.WebListen != "" {
		if srv.webTmpl, err = loadTemplates(); err != nil {
			return fail(err)
		}
		if srv.webLn, err = net.Listen("tcp", cfg.WebListen); err != nil {
			return fail(fmt.Errorf("--web-listen %s: %w", cfg.WebListen, err))
		}
	}
	return srv, nil
}

// Close releases what New opened (listeners, admin socket, store), for a
// server that will not Run.
func (srv *Server) Close() error {
	srv.closeAll()
	return nil
}

func (srv *Server) closeAll() {
	if srv.ln != nil {
		srv.ln.Close()
	}
	if srv.adminLn != nil {
		srv.adminLn.Close()
	}
	if srv.webLn != nil {
		srv.webLn.Close()
	}
	if srv.store != nil {
		srv.store.Close()
	}
}

// loadSecrets loads or makes the coordinator key, the signing key and the
// TLS certificate: from files in the state directory with SQLite, from the
// database with PostgreSQL, so that every replica has the same ones (the
// same pin, the same node-facing key, the same token signer).
func (srv *Server) loadSecrets(ctx context.Context) error {
	var err error
	if srv.shared == nil {
		if srv.coordPriv, err = key.LoadOrCreate(filepath.Join(srv.cfg.StateDir, coordKeyF), key.NewCoord); err != nil {
			return fmt.Errorf("coordinator key: %w", err)
		}
		if srv.signPriv, err = key.LoadOrCreate(filepath.Join(srv.cfg.StateDir, signKeyF), key.NewSigning); err != nil {
			return fmt.Errorf("signing key: %w", err)
		}
	} else {
		if err := sharedKey(ctx, srv.store, secretCoordKey, &srv.coordPriv, key.NewCoord); err != nil {
			return fmt.Errorf("coordinator key: %w", err)
		}
		if err := sharedKey(ctx, srv.store, SecretSigningKey, &srv.signPriv, key.NewSigning); err != nil {
			return fmt.Errorf("signing key: %w", err)
		}
	}
	srv.coordPub, srv.signer, srv.signPub = srv.coordPriv.Public(), srv.signPriv.Signer(), srv.signPriv.Public()
	return srv.loadCert(ctx)
}

// Names of the secrets a shared store keeps. An operator (or a test) may
// store a signing key under SecretSigningKey, in its text form, before the
// first replica starts, as it may put signing.key in a SQLite state
// directory.
const (
	secretCoordKey   = "coordinator_key"
	SecretSigningKey = "signing_key"
	secretTLS        = "tls_certificate" // certificate and key, PEM
)

// sharedKey loads the key stored as name, storing gen's first.
func sharedKey[T any, PT interface {
	*T
	MarshalText() ([]byte, error)
	UnmarshalText([]byte) error
}](ctx context.Context, st store.Store, name string, k PT, gen func() T) error {
	text, err := st.Secret(ctx, name, func() ([]byte, error) {
		fresh := gen()
		return PT(&fresh).MarshalText()
	})
	if err != nil {
		return err
	}
	return k.UnmarshalText(text)
}

func (srv *Server) loadCert(ctx context.Context) error {
	var err error
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, _, err := net.SplitHostPort(srv.cfg.Listen); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	if u, err := url.Parse(srv.cfg.ServerURL); err == nil && u.Hostname() != "" {
		hosts = append(hosts, u.Hostname())
	}
	switch {
	case srv.cfg.TLSCert != "" || srv.cfg.TLSKey != "":
		if srv.cfg.TLSCert == "" || srv.cfg.TLSKey == "" {
			return errors.New("--tls-cert and --tls-key go together")
		}
		srv.cert, err = tls.LoadX509KeyPair(srv.cfg.TLSCert, srv.cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
	case srv.shared != nil:
		// The first replica's certificate serves them all: nodes check the
		// pin, not the name, so its host names need not cover the others.
		pair, err := srv.store.Secret(ctx, secretTLS, func() ([]byte, error) {
			c, k, err := tlspin.Generate(certName, hosts...)
			return append(c, k...), err
		})
		if err != nil {
			return fmt.Errorf("tls certificate: %w", err)
		}
		if srv.cert, err = tls.X509KeyPair(pair, pair); err != nil {
			return fmt.Errorf("stored tls certificate: %w", err)
		}
	default:
		srv.cert, err = tlspin.LoadOrCreate(srv.cfg.StateDir, certName, hosts...)
		if err != nil {
			return fmt.Errorf("tls certificate: %w", err)
		}
	}
	if srv.cert.Leaf == nil {
		if srv.cert.Leaf, err = parseLeaf(srv.cert); err != nil {
			return err
		}
	}
	srv.pin = tlspin.Pin(srv.cert.Leaf)
	return nil
}

// loadSnapshot fills the in-memory state from the store.
func (srv *Server) loadSnapshot(snap *store.Snapshot) error {
	st := srv.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if snap.Policy != "" {
		p, err := policy.Parse([]byte(snap.Policy))
		if err != nil {
			return fmt.Errorf("stored policy: %w", err)
		}
		st.setPolicyLocked(p)
	} else {
		st.setPolicyLocked(policy.AllowAll())
	}
	for _, rec := range snap.Nodes {
		n, err := srv.newNodeState(rec)
		if err != nil {
			return fmt.Errorf("stored node %s: %w", rec.Name, err)
		}
		// A key that expired recently (while the coordinator was down, say)
		// is left for the sweep, which revokes it at the relays; older
		// ones have no token left that a relay would take.
		// (A token outlives the key expiry by at most the longest token
		// lifetime, legacy 12-hour tokens included.)
		recent := srv.now().Before(rec.KeyExpiry.Add(max(srv.cfg.TokenLifetime, legacyTokenLifetime) + admit.ClockSkew))
		n.expiredSent = n.expired(srv.now()) && !recent
		st.addLocked(n)
	}
	st.ipCursor = snap.IPCursor
	return nil
}

func (srv *Server) newNodeState(rec store.Node) (*nodeState, error) {
	nk, err := key.ParseNodePublic(rec.NodeKey)
	if err != nil {
		return nil, err
	}
	dk, _ := key.ParseDiscoPublic(rec.DiscoKey)
	n := &nodeState{rec: rec, id: netmap.NodeID(rec.ID), nodeKey: nk, discoKey: dk}
	n.shared = key.Precompute(srv.coordPriv, nk)
	return n, nil
}

func (srv *Server) now() time.Time { return srv.cfg.Now() }

// Addr returns the address the API listens on.
func (srv *Server) Addr() net.Addr { return srv.ln.Addr() }

// Pin returns the pin of the coordinator's TLS certificate.
func (srv *Server) Pin() string { return srv.pin }

// URL returns the coordinator's base URL (--server-url, else derived from
// the listener).
func (srv *Server) URL() string {
	if srv.cfg.ServerURL != "" {
		return strings.TrimRight(srv.cfg.ServerURL, "/")
	}
	scheme := "https"
	if srv.cfg.InsecureHTTP {
		scheme = "http"
	}
	return scheme + "://" + srv.ln.Addr().String()
}

// Registry returns where the server registered its metrics.
func (srv *Server) Registry() prometheus.Registerer { return srv.cfg.Registry }

// Run serves the API and the admin socket and runs the sweeper until ctx is
// done, then stops them all and closes the store. It returns only after
// every goroutine it started has exited.
func (srv *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer srv.store.Close()
	// Handlers still running when the servers close (Close does not wait
	// for them) must finish before the store closes under them.
	var inflight atomic.Int64
	track := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			inflight.Add(1)
			defer inflight.Add(-1)
			h.ServeHTTP(w, r)
		})
	}
	hs := &http.Server{
		Handler:           track(srv.Handler()),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(srv.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: maxConcurrentStreams},
	}
	var ln net.Listener = newSourceLimitListener(srv.ln, srv.cfg.MaxConnsPerSource, func() {
		srv.m.connsRefused.Inc()
	})
	if !srv.cfg.InsecureHTTP {
		hs.TLSConfig = &tls.Config{Certificates: []tls.Certificate{srv.cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
		ln = tls.NewListener(ln, hs.TLSConfig)
	} else {
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		hs.Protocols = &p
	}
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(2)
	go func() {
		defer wg.Done()
		srv.sweepLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		srv.rep.run(ctx)
	}()
	if srv.shared != nil {
		t := time.NewTimer(listenReadyTimeout)
		select {
		case <-srv.rep.ready:
		case <-t.C:
			srv.log.Warn("serving before the database change listener is up; changes made meanwhile arrive with its first resync")
		case <-ctx.Done():
		}
		t.Stop()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serve: %w", err)
		}
	}()
	var as *http.Server
	if srv.adminLn != nil {
		as = &http.Server{Handler: track(srv.adminHandler()), ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := as.Serve(srv.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("admin socket: %w", err)
			}
		}()
	}
	var ws *http.Server
	if srv.webLn != nil {
		ws = &http.Server{
			Handler: track(srv.webHandler()), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute,
			MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(srv.log.Handler(), slog.LevelDebug),
			BaseContext: func(net.Listener) context.Context { return ctx },
			TLSConfig:   &tls.Config{Certificates: []tls.Certificate{srv.cert}, MinVersion: tls.VersionTLS12},
		}
		wln := tls.NewListener(newSourceLimitListener(srv.webLn, srv.cfg.MaxConnsPerSource, func() { srv.m.connsRefused.Inc() }), ws.TLSConfig)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ws.Serve(wln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("web console: %w", err)
			}
		}()
		srv.log.Info("web console serving", "url", srv.WebURL())
	}
	srv.log.Info("coordinator serving", "addr", srv.ln.Addr().String(), "url", srv.URL(), "pin", srv.pin)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	hs.Shutdown(sctx) // streams end: their contexts derive from ctx
	hs.Close()
	if as != nil {
		as.Shutdown(sctx)
		as.Close()
	}
	if ws != nil {
		ws.Shutdown(sctx)
		ws.Close()
	}
	wg.Wait()
	for deadline := time.Now().Add(handlerDrain); inflight.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if n := inflight.Load(); n > 0 {
		srv.log.Warn("closing the store with handlers still running", "handlers", n)
	}
	return err
}

// handlerDrain bounds how long Run waits, after its servers close, for
// handlers still running; their contexts are already cancelled.
const handlerDrain = 10 * time.Second

// sweepLoop enforces deadlines: node-key expiry, ephemeral nodes gone
// offline, silent relays, and admission tokens due for refresh.
func (srv *Server) sweepLoop(ctx context.Context) {
	t := time.NewTicker(srv.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			srv.sweep(ctx)
		}
	}
}

func (srv *Server) sweep(ctx context.Context) {
	lead := srv.lead(ctx)
	now := srv.now()
	var expired, ephemeral []*nodeState
	st := srv.st
	// Scan under the read lock: streams keep flowing. Only sessions whose
	// admission token is due are woken, so a sweep costs O(nodes) reads and
	// no stream work in the common case.
	st.mu.RLock()
	for _, n := range st.nodes {
		if n.expired(now) && !n.expiredSent {
			expired = append(expired, n)
		}
		if lead && n.rec.Ephemeral && !n.online() && now.Sub(n.rec.LastSeen) > srv.cfg.EphemeralTimeout {
			ephemeral = append(ephemeral, n)
		}
		if n.sess != nil && n.sess.admissionDue(srv.cfg.TokenLifetime, now) {
			n.sess.wake()
		}
	}
	st.mu.RUnlock()
	if len(expired) > 0 {
		var revoke []key.NodePublic
		st.mu.Lock()
		for _, n := range expired {
			if _, live := st.nodes[n.id]; live && !n.expiredSent {
				n.expiredSent = true
				st.removedLocked(n, now)
				if n.sess != nil {
					n.sess.cancel()
				}
				revoke = append(revoke, n.nodeKey)
			}
		}
		st.mu.Unlock()
		for _, k := range revoke {
			if err := srv.revoke(ctx, k, "key expiry passed"); err != nil {
				srv.log.Warn("store revocation", "key", k.ShortString(), "err", err)
			}
		}
	}
	for _, n := range ephemeral {
		if err := srv.deleteNode(ctx, n.rec.Name, true); err != nil && !errors.Is(err, store.ErrNotFound) {
			srv.log.Warn("delete ephemeral node", "node", n.rec.Name, "err", err)
		} else if err == nil {
			srv.log.Info("deleted ephemeral node after going offline", "node", n.rec.Name)
		}
	}
	if lead {
		srv.relays.sweep(ctx, now)
		if now.Sub(srv.webSwept) >= webSweepInterval {
			srv.webSwept = now
			if _, err := srv.store.SweepWeb(ctx, now); err != nil && ctx.Err() == nil {
				srv.log.Debug("sweep expired console sessions and logins", "err", err)
			}
		}
	}
}

// lead reports whether this replica runs the jobs that write: always with
// SQLite; with a shared store, while it holds the jobs lock.
func (srv *Server) lead(ctx context.Context) bool {
	lead := true
	if srv.shared != nil {
		var err error
		if lead, err = srv.shared.TryLead(ctx); err != nil && ctx.Err() == nil {
			srv.log.Debug("jobs lock", "err", err)
		}
	}
	srv.rep.mu.Lock()
	if lead != srv.rep.leader {
		srv.log.Info("periodic jobs", "running_here", lead)
		srv.rep.leader = lead
	}
	srv.rep.mu.Unlock()
	if lead {
		srv.m.leader.Set(1)
	} else {
		srv.m.leader.Set(0)
	}
	return lead
}

func encodeToken(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
