package meshnode

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/bind"
	"github.com/wiremesh/wiremesh/netmap"
)

// The direct-path state machine, per peer:
//
//	relay ──(traffic, or peer's call-me-maybe)──► probing: call-me-maybe via relay,
//	  ▲                                            disco ping every candidate over UDP
//	  │                                                   │ first pong
//	  │ trust lapses (no pong for trustFor),              ▼
//	  │ or this node's network changes              direct (best = lowest-RTT ponged
//	  └──────────────────────────────────────────── candidate; heartbeat while active)
//
// While probing, packets keep flowing through the relay: the first packet
// never waits for a path. Once a pong confirms a candidate, packets go only
// to it. A better candidate replaces the best only by the hysteresis
// margins below. Upgrades are retried every upgradeRetry while the peer is
// active, and at once when either side's network changes.
//
// Anchors (Tailscale magicsock): heartbeat 3 s, trust 6.5 s, retry 1 min,
// ping timeout 5 s. We keep heartbeat and trust, and retry sooner: a retry
// costs one call-me-maybe and a few pings, and 20 s halves the worst time a
// pair sits on the relay after a transient failure.
const (
	heartbeatInterval = 3 * time.Second
	trustFor          = 6500 * time.Millisecond
	upgradeRetry      = 20 * time.Second
	pingTimeout       = 5 * time.Second
	// activeFor is how recent traffic must be for a peer to count as
	// active: heartbeats and retries are only spent on active peers.
	activeFor = 10 * time.Second
	// maxCandidates bounds each peer's candidate set (call-me-maybe carries
	// at most disco.MaxEndpoints).
	maxCandidates = 2 * disco.MaxEndpoints
	// maxPathPings bounds outstanding path pings across all peers.
	maxPathPings = 4096
	// betterBy is the hysteresis for switching the best address: the new
	// one must be faster by both margins.
	betterAbs = 2 * time.Millisecond
	betterRel = 0.2
)

type paths struct {
	n *Node

	mu    sync.Mutex
	peers map[key.NodePublic]*peerPath
	pings map[disco.TxID]sentPing
}

type peerPath struct {
	confirmed bool // a second pong on best confirmed it (else tentative)
	node      key.NodePublic
	discoKey  key.DiscoPublic             // a new one means the peer restarted
	fromMap   []netip.AddrPort            // the peer's reported endpoints
	cands     map[netip.AddrPort]struct{} // every candidate, map ones included
	best      netip.AddrPort
	bestRTT   time.Duration
	lastPong  time.Time // on best
	lastPing  time.Time // heartbeat sent to best
	attempted time.Time // last upgrade attempt
	probing   time.Time // when the current upgrade began (time to direct)
	lastTx    uint64
	active    time.Time
}

type sentPing struct {
	peer key.NodePublic
	addr netip.AddrPort // zero: through the relay
	sent time.Time
	cli  chan<- pongResult // set for meshnode ping
}

func newPaths(n *Node) *paths {
	return &paths{n: n, peers: map[key.NodePublic]*peerPath{}, pings: map[disco.TxID]sentPing{}}
}

// setPeers matches the peer set and each peer's reported endpoints. A peer
// that reports new endpoints while we talk to it through the relay is
// probed at once: its first report often arrives just after our first
// packet, whose upgrade attempt then had nothing to ping.
func (ps *paths) setPeers(next map[key.NodePublic]netmap.Node) {
	var probe []key.NodePublic
	defer func() {
		for _, k := range probe {
			ps.attempt(k, true)
		}
	}()
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for k := range ps.peers {
		if _, ok := next[k]; !ok {
			delete(ps.peers, k)
		}
	}
	for k, p := range next {
		pp := ps.peers[k]
		if pp != nil && pp.discoKey != p.DiscoKey {
			// The peer restarted: whatever path we had is unconfirmed.
			if pp.best.IsValid() {
				ps.n.bind.SetDirect(k, netip.AddrPort{})
			}
			pp = nil
		}
		if pp == nil {
			pp = &peerPath{node: k, discoKey: p.DiscoKey, cands: map[netip.AddrPort]struct{}{}}
			ps.peers[k] = pp
		}
		if !pp.best.IsValid() && !slices.Equal(pp.fromMap, p.Endpoints) && len(p.Endpoints) > 0 &&
			time.Since(pp.attempted) < activeFor {
			probe = append(probe, k)
		}
		for _, old := range pp.fromMap {
			delete(pp.cands, old)
		}
		pp.fromMap = pp.fromMap[:0]
		for _, ep := range p.Endpoints {
			if len(pp.cands) >= maxCandidates {
				break
			}
			pp.fromMap = append(pp.fromMap, ep)
			pp.cands[ep] = struct{}{}
		}
	}
}

// onRelaySend is the bind's hook for a packet sent to peer through the
// relay: it starts an upgrade if none ran recently.
func (ps *paths) onRelaySend(peer key.NodePublic) {
	ps.mu.Lock()
	pp := ps.peers[peer]
	if pp == nil || pp.best.IsValid() || time.Since(pp.attempted) < upgradeRetry {
		ps.mu.Unlock()
		return
	}
	ps.mu.Unlock()
	ps.attempt(peer, true)
}

// attempt starts an upgrade: call-me-maybe through the relay (when
// announce is set) and a ping to every candidate.
func (ps *paths) attempt(peer key.NodePublic, announce bool) {
	ps.mu.Lock()
	pp := ps.peers[peer]
	if pp == nil {
		ps.mu.Unlock()
		return
	}
	now := time.Now()
	pp.attempted = now
	if pp.probing.IsZero() && !pp.best.IsValid() {
		pp.probing = now
	}
	cands := make([]netip.AddrPort, 0, len(pp.cands))
	for c := range pp.cands {
		cands = append(cands, c)
	}
	ps.mu.Unlock()
	if announce {
		eps := ps.n.endpoints.endpoints()
		ps.n.disco.sendTo(peer, bind.Source{Peer: peer}, &disco.CallMeMaybe{Endpoints: eps})
	}
	for _, c := range cands {
		ps.ping(peer, c, nil)
	}
}

// ping sends a disco ping to peer at addr (over UDP), or through the relay
// if addr is zero. cli, if set, receives the pong.
func (ps *paths) ping(peer key.NodePublic, addr netip.AddrPort, cli chan<- pongResult) {
	tx := disco.NewTxID()
	ps.mu.Lock()
	if len(ps.pings) >= maxPathPings {
		ps.expireLocked(time.Now())
		if len(ps.pings) >= maxPathPings {
			ps.mu.Unlock()
			return
		}
	}
	ps.pings[tx] = sentPing{peer: peer, addr: addr, sent: time.Now(), cli: cli}
	ps.mu.Unlock()
	ps.n.metrics.discoPings.WithLabelValues("sent").Inc()
	ps.n.disco.sendTo(peer, bind.Source{Peer: peer, Addr: addr}, &disco.Ping{TxID: tx, NodeKey: ps.n.priv.Public()})
}

// gotPing notes that peer pinged us from addr over UDP: addr is a
// candidate, and WireGuard packets from it are the peer's. If we have no
// direct path yet, ping back so the pong confirms it (simultaneous open).
func (ps *paths) gotPing(peer key.NodePublic, addr netip.AddrPort) {
	ps.mu.Lock()
	pp := ps.peers[peer]
	if pp == nil {
		ps.mu.Unlock()
		return
	}
	_, known := pp.cands[addr]
	if !known && len(pp.cands) < maxCandidates {
		pp.cands[addr] = struct{}{}
	}
	needPing := !pp.best.IsValid() || (pp.best != addr && time.Since(pp.lastPong) > heartbeatInterval)
	if pp.probing.IsZero() && !pp.best.IsValid() {
		pp.probing = time.Now()
	}
	ps.mu.Unlock()
	ps.n.bind.AcceptFrom(peer, addr)
	if needPing {
		ps.ping(peer, addr, nil)
	}
}

// gotCallMeMaybe adds the peer's endpoints and pings them all now. If the
// list no longer holds our best address for the peer, the peer has moved:
// the direct path is dropped at once (traffic goes through the relay) and
// the new candidates' pongs pick the next one.
func (ps *paths) gotCallMeMaybe(peer key.NodePublic, eps []netip.AddrPort) {
	ps.mu.Lock()
	pp := ps.peers[peer]
	if pp == nil {
		ps.mu.Unlock()
		return
	}
	for _, ep := range eps {
		if len(pp.cands) >= maxCandidates {
			break
		}
		pp.cands[ep] = struct{}{}
	}
	moved := pp.best.IsValid() && !slices.Contains(eps, pp.best)
	if moved {
		delete(pp.cands, pp.best)
		pp.best, pp.bestRTT = netip.AddrPort{}, 0
		pp.probing = time.Now()
	}
	ps.mu.Unlock()
	if moved {
		ps.n.bind.SetDirect(peer, netip.AddrPort{})
		ps.n.metrics.pathChanges.WithLabelValues("downgrade", pathPeerMoved).Inc()
		ps.n.log.Info("peer moved; probing its new endpoints", "peer", peer.ShortString())
	}
	ps.attempt(peer, false)
}

// gotPong handles a pong from peer; src is where it came from (zero for
// the relay). It returns false if the pong answers no ping of ours.
func (ps *paths) gotPong(peer key.NodePublic, tx disco.TxID, src bind.Source, at time.Time) bool {
	ps.mu.Lock()
	sp, ok := ps.pings[tx]
	if !ok || sp.peer != peer || sp.addr != src.Addr {
		ps.mu.Unlock()
		return false
	}
	delete(ps.pings, tx)
	rtt := at.Sub(sp.sent)
	pp := ps.peers[peer]
	var upgraded, confirm bool
	var ttd time.Duration
	if pp != nil && src.Addr.IsValid() {
		switch {
		case !pp.best.IsValid():
			pp.best, pp.bestRTT, pp.lastPong = src.Addr, rtt, at
			pp.confirmed = false
			upgraded = true
			if !pp.probing.IsZero() {
				ttd = at.Sub(pp.probing)
			}
			pp.probing = time.Time{}
		case pp.best == src.Addr:
			pp.lastPong, pp.bestRTT = at, rtt
			if !pp.confirmed {
				pp.confirmed = true
				confirm = true
			}
		case pp.bestRTT-rtt >= betterAbs && float64(rtt) <= float64(pp.bestRTT)*(1-betterRel),
			at.Sub(pp.lastPong) > heartbeatInterval:
			// Clearly faster, or the best went quiet while this one answers.
			pp.best, pp.bestRTT, pp.lastPong = src.Addr, rtt, at
			ps.n.bind.SetDirect(peer, src.Addr)
		}
	}
	ps.mu.Unlock()
	path := "relay"
	if src.Addr.IsValid() {
		path = "direct"
	}
	ps.n.metrics.discoPings.WithLabelValues("pong").Inc()
	ps.n.metrics.pingRTT.WithLabelValues(path).Observe(rtt.Seconds())
	if upgraded {
		// The first pong proves the path works now; until a second one
		// (sent at once) confirms it, packets go both ways.
		ps.n.bind.SetTentative(peer, src.Addr)
		ps.n.metrics.pathChanges.WithLabelValues("upgrade", pathFirstPong).Inc()
		if ttd > 0 {
			ps.n.metrics.timeToDirect.Observe(ttd.Seconds())
		}
		ps.n.log.Info("direct path", "peer", peer.ShortString(), "addr", src.Addr, "rtt", rtt, "time_to_direct", ttd)
		ps.ping(peer, src.Addr, nil)
	}
	if confirm {
		ps.n.bind.SetDirect(peer, src.Addr)
	}
	if sp.cli != nil {
		select {
		case sp.cli <- pongResult{from: peer, src: src, at: at, rtt: rtt}:
		default:
		}
	}
	return true
}

// tick runs heartbeats, trust expiry and retries. Housekeeping calls it
// every second.
func (ps *paths) tick(now time.Time) {
	type action struct {
		peer      key.NodePublic
		addr      netip.AddrPort
		downgrade bool
		retry     bool
	}
	var acts []action
	ps.mu.Lock()
	ps.expireLocked(now)
	for k, pp := range ps.peers {
		tx, _ := ps.n.bind.Peer(k).Bytes()
		if tx != pp.lastTx {
			pp.lastTx, pp.active = tx, now
		}
		active := now.Sub(pp.active) < activeFor
		switch {
		case pp.best.IsValid() && now.Sub(pp.lastPong) > trustFor:
			acts = append(acts, action{peer: k, downgrade: true})
			pp.best, pp.bestRTT = netip.AddrPort{}, 0
		case pp.best.IsValid() && active && now.Sub(pp.lastPing) >= heartbeatInterval:
			pp.lastPing = now
			acts = append(acts, action{peer: k, addr: pp.best})
		case !pp.best.IsValid() && active && now.Sub(pp.attempted) >= upgradeRetry:
			acts = append(acts, action{peer: k, retry: true})
		}
	}
	ps.mu.Unlock()
	for _, a := range acts {
		switch {
		case a.downgrade:
			ps.n.bind.SetDirect(a.peer, netip.AddrPort{})
			ps.n.metrics.pathChanges.WithLabelValues("downgrade", pathTrustExpired).Inc()
			ps.n.log.Info("direct path lost; back to the relay", "peer", a.peer.ShortString())
		case a.retry:
			ps.attempt(a.peer, true)
		default:
			ps.ping(a.peer, a.addr, nil)
		}
	}
}

func (ps *paths) expireLocked(now time.Time) {
	for tx, sp := range ps.pings {
		if now.Sub(sp.sent) > pingTimeout {
			delete(ps.pings, tx)
			ps.n.metrics.discoPings.WithLabelValues("timeout").Inc()
		}
	}
}

// networkChanged drops every direct path at once (traffic falls back to
// the relay without waiting for trust to lapse) and clears retry timers so
// the next packet, or announce, probes again.
func (ps *paths) networkChanged() {
	ps.mu.Lock()
	var lost []key.NodePublic
	now := time.Now()
	for k, pp := range ps.peers {
		if pp.best.IsValid() {
			lost = append(lost, k)
			pp.best, pp.bestRTT = netip.AddrPort{}, 0
			pp.probing = now
		}
		pp.attempted = time.Time{}
	}
	ps.mu.Unlock()
	for _, k := range lost {
		ps.n.bind.SetDirect(k, netip.AddrPort{})
		ps.n.metrics.pathChanges.WithLabelValues("downgrade", pathNetworkChanged).Inc()
	}
}

// announce sends call-me-maybe and pings to every recently active peer,
// after a network change gave us new endpoints.
func (ps *paths) announce() {
	ps.mu.Lock()
	var peers []key.NodePublic
	for k, pp := range ps.peers {
		if time.Since(pp.active) < activeFor {
			peers = append(peers, k)
		}
	}
	ps.mu.Unlock()
	for _, k := range peers {
		ps.attempt(k, true)
	}
}

// direct returns the peer's best direct address and its RTT.
func (ps *paths) direct(peer key.NodePublic) (netip.AddrPort, time.Duration, bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	pp := ps.peers[peer]
	if pp == nil || !pp.best.IsValid() {
		return netip.AddrPort{}, 0, false
	}
	return pp.best, pp.bestRTT, true
}

// candidates returns the peer's candidate addresses.
func (ps *paths) candidates(peer key.NodePublic) []netip.AddrPort {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	pp := ps.peers[peer]
	if pp == nil {
		return nil
	}
	out := make([]netip.AddrPort, 0, len(pp.cands))
	for c := range pp.cands {
		out = append(out, c)
	}
	return out
}

// cliPing pings peer through the relay and every candidate at once and
// reports pongs on ch until ctx ends.
func (ps *paths) cliPing(ctx context.Context, peer key.NodePublic, ch chan<- pongResult) int {
	sent := 1
	ps.ping(peer, netip.AddrPort{}, ch)
	for _, c := range ps.candidates(peer) {
		ps.ping(peer, c, ch)
		sent++
	}
	return sent
}
