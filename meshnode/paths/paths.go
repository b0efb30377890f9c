// Package paths decides, for every peer, how its packets travel: through
// the relay fleet, or directly over UDP once disco pings have proved a
// direct address works. It is Wiremesh's magicsock, smaller: disco (the
// sealed ping/pong/call-me-maybe exchange), endpoint discovery, and the
// per-peer path state machine.
//
// Inputs: peer deltas (UpsertPeer, RemovePeer), disco packets from either
// path (HandleDisco: pings, pongs, call-me-maybes, and the punch messages
// that coordinate birthday searches; see punch.go), relay traffic that
// could be upgraded (RelaySent), local address changes and STUN results
// (Discovery). Output: each peer's path, handed to the Bind (SetDirect,
// SetTentative), and the addresses WireGuard packets may come from
// (AcceptFrom, ForgetAddr).
//
// The state machine, per peer:
//
//	relay ──(traffic, or peer's call-me-maybe)──► probing: call-me-maybe via relay,
//	  ▲                                            disco ping every candidate over UDP
//	  │                                                   │ first pong
//	  │ trust lapses (no pong for TrustFor),              ▼
//	  │ the peer moves, or this node's network     tentative: packets go both ways,
//	  │ changes                                     one more ping sent at once
//	  │                                                   │ second pong on it
//	  │                                                   ▼
//	  └──────────────────────────────────────────── direct (best = lowest-RTT ponged
//	                                                 candidate; heartbeat while active)
//
// While probing, packets keep flowing through the relay: the first packet
// never waits for a path. A better candidate replaces the best only by the
// hysteresis margins (BetterAbs and BetterRel). Upgrades are retried every
// UpgradeRetry while the peer is active, and at once when either side's
// network changes.
//
// Nothing here reads the wall clock directly: Config.Now is the clock,
// and Run's ticker drives heartbeats, trust expiry and retries, so tests
// run the machine under testing/synctest.
package paths

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// Anchors (Tailscale magicsock): heartbeat 3 s, trust 6.5 s, retry 1 min,
// ping timeout 5 s. We keep heartbeat and trust, and retry sooner: a retry
// costs one call-me-maybe and a few pings, and 20 s halves the worst time a
// pair sits on the relay after a transient failure.
const (
	HeartbeatInterval = 3 * time.Second
	TrustFor          = 6500 * time.Millisecond
	UpgradeRetry      = 20 * time.Second
	PingTimeout       = 5 * time.Second
	// ActiveFor is how recent traffic must be for a peer to count as
	// active: heartbeats and retries are only spent on active peers.
	ActiveFor = 10 * time.Second
	// MaxCandidates bounds each peer's candidate set (call-me-maybe
	// carries at most disco.MaxEndpoints).
	MaxCandidates = 2 * disco.MaxEndpoints
	// CandidateTTL is how long a candidate learned from a ping or a
	// call-me-maybe stays without being heard of again: three upgrade
	// retries. The peer's own reported endpoints stay while it reports
	// them, and the best address while it answers.
	CandidateTTL = 3 * UpgradeRetry
	// maxPathPings bounds outstanding path pings across all peers.
	maxPathPings = 4096
	// BetterAbs and BetterRel are the hysteresis for switching the best
	// address: the new one must be faster by both margins.
	BetterAbs = 2 * time.Millisecond
	BetterRel = 0.2
	// tickEvery is how often Run checks heartbeats, trust and retries.
	tickEvery = time.Second
)

// Inbound pings are answered at most pingAnswerBurst at a time per peer,
// refilled every pingAnswerInterval: enough for a path probe round, too
// little to make the node a reflector.
const (
	pingAnswerBurst    = 20
	pingAnswerInterval = 50 * time.Millisecond
)

// Bind receives path decisions and reports peers' activity. The meshnode
// bind implements it.
type Bind interface {
	// SetDirect makes addr the peer's only send path; an invalid addr
	// sends through the relay again.
	SetDirect(peer key.NodePublic, addr netip.AddrPort)
	// SetTentative sends to addr and through the relay, until confirmed.
	SetTentative(peer key.NodePublic, addr netip.AddrPort)
	// AcceptFrom lets WireGuard packets from addr count as peer's.
	AcceptFrom(peer key.NodePublic, addr netip.AddrPort)
	// ForgetAddr undoes AcceptFrom (unless addr is the send path).
	ForgetAddr(peer key.NodePublic, addr netip.AddrPort)
	// TxBytes returns bytes sent to peer so far, over any path.
	TxBytes(peer key.NodePublic) uint64
}

// Transport sends sealed disco packets.
type Transport interface {
	// WriteTo sends from the node's UDP socket.
	WriteTo(pkt []byte, dst netip.AddrPort) error
	// SendDisco sends to peer through the relay fleet.
	SendDisco(peer key.NodePublic, pkt []byte) error
}

// Path-change reasons: the values of meshnode_path_changes_total's reason
// label, each with the direction it goes with.
const (
	ReasonFirstPong      = "first_pong"      // upgrade: a pong came back over a direct candidate
	ReasonTrustExpired   = "trust_expired"   // downgrade: no pong within the trust window
	ReasonPeerMoved      = "peer_moved"      // downgrade: the peer's endpoints no longer include our best address
	ReasonNetworkChanged = "network_changed" // downgrade: our own network changed, every direct path is dropped
	ReasonBirthday       = "birthday"        // upgrade: a birthday search (easy–hard NAT) found the path
)

// Metrics are the counters the machine feeds; any may be nil.
type Metrics struct {
	DiscoRx      *prometheus.CounterVec   // by kind
	DiscoPings   *prometheus.CounterVec   // by result: sent, pong, timeout
	PathChanges  *prometheus.CounterVec   // by direction (upgrade, downgrade) and reason
	PingRTT      *prometheus.HistogramVec // by path
	TimeToDirect prometheus.Histogram
}

func inc(v *prometheus.CounterVec, labels ...string) {
	if v != nil {
		v.WithLabelValues(labels...).Inc()
	}
}

// Config configures a Manager.
type Config struct {
	Bind      Bind
	Transport Transport
	// Self is this node's key, carried in pings.
	Self key.NodePublic
	// Disco is this run's disco key.
	Disco key.DiscoPrivate
	// Endpoints returns this node's current endpoint candidates, for
	// call-me-maybe. May be nil.
	Endpoints func() []netip.AddrPort
	Metrics   Metrics
	// Punch enables coordinated punches (birthday searches, priming);
	// nil: plain hole punching only.
	Punch *PunchConfig
	Log   *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Manager runs the path state machine for every peer. Create it with New.
type Manager struct {
	cfg Config
	pub key.DiscoPublic

	mu      sync.Mutex
	peers   map[key.NodePublic]*peer
	byDisco map[key.DiscoPublic]*peer
	pings   map[disco.TxID]sentPing
	// ctx is Run's context while it runs (searches need an owner);
	// searches counts their goroutines, which Run waits for.
	ctx      context.Context
	searches sync.WaitGroup
}

type peer struct {
	node     key.NodePublic
	discoKey key.DiscoPublic // a new one means the peer restarted
	shared   key.SharedKey
	// token bucket for answering pings
	tokens int
	refill time.Time

	fromMap   []netip.AddrPort             // the peer's reported endpoints
	cands     map[netip.AddrPort]time.Time // every candidate → last heard of
	accepted  map[netip.AddrPort]struct{}  // handed to Bind.AcceptFrom
	best      netip.AddrPort
	bestRTT   time.Duration
	confirmed bool      // a second pong on best confirmed it (else tentative)
	lastPong  time.Time // on best
	lastPing  time.Time // heartbeat sent to best
	attempted time.Time // last upgrade attempt
	tries     int       // rounds of attempts since the last direct path
	probing   time.Time // when the current upgrade began (time to direct)
	lastTx    uint64
	active    time.Time
	search    *search   // a birthday search with the peer, from the offer on
	searchAt  time.Time // when the last search began or ended
	punched   bool      // best came from a birthday search
	side      bool      // ... and its packets leave from a side socket (hard side)
}

type sentPing struct {
	peer key.NodePublic
	addr netip.AddrPort // zero: through the relay
	sent time.Time
	cli  chan<- Pong // set for meshnode ping
}

// Pong is a pong that answered a Probe.
type Pong struct {
	From key.NodePublic
	Src  netip.AddrPort // invalid: it came through the relay
	RTT  time.Duration
}

// New returns a Manager.
func New(cfg Config) *Manager {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Endpoints == nil {
		cfg.Endpoints = func() []netip.AddrPort { return nil }
	}
	return &Manager{cfg: cfg, pub: cfg.Disco.Public(), peers: map[key.NodePublic]*peer{},
		byDisco: map[key.DiscoPublic]*peer{}, pings: map[disco.TxID]sentPing{}}
}

// DiscoKey returns this run's public disco key.
func (m *Manager) DiscoKey() key.DiscoPublic { return m.pub }

// Run drives heartbeats, trust expiry, retries and candidate expiry until
// ctx ends.
func (m *Manager) Run(ctx context.Context) {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.ctx = nil
		m.mu.Unlock()
		m.searches.Wait() // they run under ctx, which has ended
	}()
	t := time.NewTicker(tickEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.tick(m.cfg.Now())
		}
	}
}

// UpsertPeer adds a peer or applies a change to one: one peer's work. A
// peer that reports new endpoints while we talk to it through the relay is
// probed at once: its first report often arrives just after our first
// packet, whose upgrade attempt then had nothing to ping.
func (m *Manager) UpsertPeer(p netmap.Node) {
	now := m.cfg.Now()
	m.mu.Lock()
	pp := m.peers[p.NodeKey]
	var closeSide bool
	if pp != nil && pp.discoKey != p.DiscoKey {
		// The peer restarted: whatever path we had is unconfirmed.
		closeSide = lostPathLocked(pp)
		m.dropLocked(pp)
		if pp.best.IsValid() {
			m.cfg.Bind.SetDirect(p.NodeKey, netip.AddrPort{})
		}
		pp = nil
	}
	if pp == nil {
		pp = &peer{node: p.NodeKey, discoKey: p.DiscoKey, tokens: pingAnswerBurst,
			cands: map[netip.AddrPort]time.Time{}, accepted: map[netip.AddrPort]struct{}{}}
		if !p.DiscoKey.IsZero() {
			pp.shared = key.Precompute(m.cfg.Disco, p.DiscoKey)
			m.byDisco[p.DiscoKey] = pp
		}
		m.peers[p.NodeKey] = pp
	}
	probe := !pp.best.IsValid() && len(p.Endpoints) > 0 && !equalAddrs(pp.fromMap, p.Endpoints) &&
		now.Sub(pp.attempted) < ActiveFor
	for _, old := range pp.fromMap {
		delete(pp.cands, old)
	}
	pp.fromMap = pp.fromMap[:0]
	for _, ep := range p.Endpoints {
		if len(pp.cands) >= MaxCandidates {
			break
		}
		pp.fromMap = append(pp.fromMap, ep)
		pp.cands[ep] = now
	}
	m.mu.Unlock()
	if closeSide {
		m.removeSide(p.NodeKey)
	}
	if probe {
		m.attempt(p.NodeKey, true)
	}
}

// RemovePeer forgets a peer: its path, candidates and accepted addresses.
func (m *Manager) RemovePeer(k key.NodePublic) {
	m.mu.Lock()
	var closeSide bool
	if pp := m.peers[k]; pp != nil {
		if pp.search != nil && pp.search.cancel != nil {
			pp.search.cancel()
		}
		closeSide = lostPathLocked(pp)
		m.dropLocked(pp)
	}
	m.mu.Unlock()
	if closeSide {
		m.removeSide(k)
	}
}

// dropLocked removes pp from every table and takes back its accepted
// addresses.
func (m *Manager) dropLocked(pp *peer) {
	delete(m.peers, pp.node)
	if m.byDisco[pp.discoKey] == pp {
		delete(m.byDisco, pp.discoKey)
	}
	for a := range pp.accepted {
		m.cfg.Bind.ForgetAddr(pp.node, a)
	}
	clear(pp.accepted)
}

func equalAddrs(a, b []netip.AddrPort) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Direct returns the peer's best direct address and its RTT.
func (m *Manager) Direct(k key.NodePublic) (netip.AddrPort, time.Duration, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	pp := m.peers[k]
	if pp == nil || !pp.best.IsValid() {
		return netip.AddrPort{}, 0, false
	}
	return pp.best, pp.bestRTT, true
}

// Candidates returns the peer's candidate addresses.
func (m *Manager) Candidates(k key.NodePublic) []netip.AddrPort {
	m.mu.Lock()
	defer m.mu.Unlock()
	pp := m.peers[k]
	if pp == nil {
		return nil
	}
	out := make([]netip.AddrPort, 0, len(pp.cands))
	for c := range pp.cands {
		out = append(out, c)
	}
	return out
}

// Probe pings peer through the relay and at every candidate at once; each
// pong that answers goes to ch (if it has room). It returns how many pings
// went out.
func (m *Manager) Probe(k key.NodePublic, ch chan<- Pong) int {
	sent := 1
	m.ping(k, netip.AddrPort{}, ch)
	for _, c := range m.Candidates(k) {
		m.ping(k, c, ch)
		sent++
	}
	return sent
}
