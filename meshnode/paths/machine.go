package paths

import (
	"net/netip"
	"slices"
	"time"

	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
)

// RelaySent is the bind's hook for packets sent to peer through the relay:
// it starts an upgrade if none ran recently. It does not block for long
// (an attempt is a few sealed packets).
func (m *Manager) RelaySent(k key.NodePublic) {
	now := m.cfg.Now()
	m.mu.Lock()
	pp := m.peers[k]
	due := pp != nil && !pp.best.IsValid() && m.retryDue(k, pp.attempted, pp.tries, now)
	m.mu.Unlock()
	if due {
		m.attempt(k, true)
	}
}

// attempt starts an upgrade: call-me-maybe through the relay (when
// announce is set) and a ping to every candidate. With priming on, every
// candidate is primed first, and an announcing attempt sends no ping: the
// peer pings once it has primed too (see punch.go). A hard-NAT node also
// offers a birthday search.
func (m *Manager) attempt(k key.NodePublic, announce bool) {
	now := m.cfg.Now()
	m.mu.Lock()
	pp := m.peers[k]
	if pp == nil {
		m.mu.Unlock()
		return
	}
	if !pp.best.IsValid() && (pp.attempted.IsZero() || now.Sub(pp.attempted) >= roundGap) {
		pp.tries++ // a new round (an announce and the follow-up to the peer's count once)
	}
	pp.attempted = now
	if pp.probing.IsZero() && !pp.best.IsValid() {
		pp.probing = now
	}
	cands := make([]netip.AddrPort, 0, len(pp.cands))
	for c := range pp.cands {
		cands = append(cands, c)
	}
	m.mu.Unlock()
	m.cfg.Log.Debug("upgrade attempt", "peer", k.ShortString(), "announce", announce, "candidates", len(cands))
	m.prime(cands)
	m.offerSearch(k)
	if announce {
		m.sendTo(k, netip.AddrPort{}, &disco.CallMeMaybe{Endpoints: m.cfg.Endpoints()})
		if m.primingOn() {
			return
		}
	}
	for _, c := range cands {
		m.ping(k, c, nil)
	}
}

// ping sends a disco ping to peer at addr (over UDP), or through the relay
// if addr is zero. cli, if set, receives the pong.
func (m *Manager) ping(k key.NodePublic, addr netip.AddrPort, cli chan<- Pong) {
	tx := disco.NewTxID()
	now := m.cfg.Now()
	m.mu.Lock()
	if len(m.pings) >= maxPathPings {
		m.expirePingsLocked(now)
		if len(m.pings) >= maxPathPings {
			m.mu.Unlock()
			return
		}
	}
	m.pings[tx] = sentPing{peer: k, addr: addr, sent: now, cli: cli}
	m.mu.Unlock()
	inc(m.cfg.Metrics.DiscoPings, "sent")
	m.sendTo(k, addr, &disco.Ping{TxID: tx, NodeKey: m.cfg.Self})
}

// gotPing notes that peer pinged us from addr over UDP: addr is a
// candidate, and WireGuard packets from it are the peer's. If we have no
// direct path yet, ping back so the pong confirms it (simultaneous open).
func (m *Manager) gotPing(k key.NodePublic, addr netip.AddrPort) {
	now := m.cfg.Now()
	m.mu.Lock()
	pp := m.peers[k]
	if pp == nil {
		m.mu.Unlock()
		return
	}
	if !m.addCandidateLocked(pp, addr, now) {
		m.mu.Unlock()
		return // the candidate table is full of fresher addresses
	}
	needPing := !pp.best.IsValid() || (pp.best != addr && now.Sub(pp.lastPong) > HeartbeatInterval)
	if pp.probing.IsZero() && !pp.best.IsValid() {
		pp.probing = now
	}
	// Every time, not once: the bind forgets an address when it stops
	// being the peer's send path.
	pp.accepted[addr] = struct{}{}
	m.cfg.Bind.AcceptFrom(k, addr)
	m.mu.Unlock()
	if needPing {
		m.ping(k, addr, nil)
	}
}

// addCandidateLocked records addr as heard of now; it reports false if the
// table is full.
func (m *Manager) addCandidateLocked(pp *peer, addr netip.AddrPort, now time.Time) bool {
	if _, ok := pp.cands[addr]; !ok && len(pp.cands) >= MaxCandidates {
		return false
	}
	pp.cands[addr] = now
	return true
}

// gotCallMeMaybe adds the peer's endpoints and pings them all now. If the
// list no longer holds our best address for the peer, the peer has moved:
// the direct path is dropped at once (traffic goes through the relay) and
// the new candidates' pongs pick the next one.
func (m *Manager) gotCallMeMaybe(k key.NodePublic, eps []netip.AddrPort) {
	now := m.cfg.Now()
	m.mu.Lock()
	pp := m.peers[k]
	if pp == nil {
		m.mu.Unlock()
		return
	}
	for _, ep := range eps {
		m.addCandidateLocked(pp, ep, now)
	}
	// A birthday search's path is to a port the peer never reports;
	// trust expiry looks after it instead.
	moved := pp.best.IsValid() && !pp.punched && !slices.Contains(eps, pp.best)
	if moved {
		m.forgetLocked(pp, pp.best)
		pp.best, pp.bestRTT = netip.AddrPort{}, 0
		pp.probing = now
		m.cfg.Bind.SetDirect(k, netip.AddrPort{})
	}
	m.mu.Unlock()
	if moved {
		inc(m.cfg.Metrics.PathChanges, "downgrade", ReasonPeerMoved)
		m.cfg.Log.Info("peer moved; probing its new endpoints", "peer", k.ShortString())
	}
	m.attempt(k, false)
}

// forgetLocked drops a candidate and takes back its accepted address.
func (m *Manager) forgetLocked(pp *peer, addr netip.AddrPort) {
	delete(pp.cands, addr)
	if _, ok := pp.accepted[addr]; ok {
		delete(pp.accepted, addr)
		m.cfg.Bind.ForgetAddr(pp.node, addr)
	}
}

// gotPong handles a pong from peer; src is where it came from (invalid for
// the relay). It returns false if the pong answers no ping of ours.
func (m *Manager) gotPong(k key.NodePublic, tx disco.TxID, src netip.AddrPort) bool {
	at := m.cfg.Now()
	m.mu.Lock()
	sp, ok := m.pings[tx]
	if !ok || sp.peer != k || sp.addr != src {
		m.mu.Unlock()
		return false
	}
	delete(m.pings, tx)
	rtt := at.Sub(sp.sent)
	var upgraded bool
	var ttd time.Duration
	if pp := m.peers[k]; pp != nil && src.IsValid() {
		upgraded, ttd = m.pongLocked(pp, src, rtt, at)
	}
	m.mu.Unlock()
	path := "relay"
	if src.IsValid() {
		path = "direct"
	}
	inc(m.cfg.Metrics.DiscoPings, "pong")
	if v := m.cfg.Metrics.PingRTT; v != nil {
		v.WithLabelValues(path).Observe(rtt.Seconds())
	}
	if upgraded {
		inc(m.cfg.Metrics.PathChanges, "upgrade", ReasonFirstPong)
		if h := m.cfg.Metrics.TimeToDirect; ttd > 0 && h != nil {
			h.Observe(ttd.Seconds())
		}
		m.cfg.Log.Info("direct path", "peer", k.ShortString(), "addr", src, "rtt", rtt, "time_to_direct", ttd)
		// The first pong proves the path works now; a second one (sent
		// at once) confirms it.
		m.ping(k, src, nil)
	}
	if sp.cli != nil {
		select {
		case sp.cli <- Pong{From: k, Src: src, RTT: rtt}:
		default:
		}
	}
	return true
}

// pongLocked applies a direct pong to pp's path and publishes the result:
// the first pong makes a tentative path, a second on it confirms it, and a
// clearly faster (or still answering) address replaces a best that is
// slower (or quiet).
func (m *Manager) pongLocked(pp *peer, src netip.AddrPort, rtt time.Duration, at time.Time) (upgraded bool, ttd time.Duration) {
	if _, ok := pp.cands[src]; ok {
		pp.cands[src] = at
	}
	switch {
	case !pp.best.IsValid():
		pp.best, pp.bestRTT, pp.lastPong = src, rtt, at
		pp.confirmed = false
		pp.tries = 0
		if !pp.probing.IsZero() {
			ttd = at.Sub(pp.probing)
		}
		pp.probing = time.Time{}
		m.acceptLocked(pp, src)
		m.cfg.Bind.SetTentative(pp.node, src)
		return true, ttd
	case pp.best == src:
		pp.lastPong, pp.bestRTT = at, rtt
		if !pp.confirmed {
			pp.confirmed = true
			m.cfg.Bind.SetDirect(pp.node, src)
		}
	case pp.bestRTT-rtt >= BetterAbs && float64(rtt) <= float64(pp.bestRTT)*(1-BetterRel),
		at.Sub(pp.lastPong) > HeartbeatInterval:
		// Clearly faster, or the best went quiet while this one answers.
		pp.best, pp.bestRTT, pp.lastPong = src, rtt, at
		pp.confirmed = true
		m.acceptLocked(pp, src)
		m.cfg.Bind.SetDirect(pp.node, src)
	}
	return false, 0
}

func (m *Manager) acceptLocked(pp *peer, addr netip.AddrPort) {
	pp.accepted[addr] = struct{}{}
}

// tick runs heartbeats, trust expiry, retries and candidate expiry.
func (m *Manager) tick(now time.Time) {
	type action struct {
		peer  key.NodePublic
		addr  netip.AddrPort
		retry bool
	}
	var acts []action
	var lost, sides []key.NodePublic
	m.mu.Lock()
	m.expirePingsLocked(now)
	for k, pp := range m.peers {
		if tx := m.cfg.Bind.TxBytes(k); tx != pp.lastTx {
			pp.lastTx, pp.active = tx, now
		}
		m.expireCandidatesLocked(pp, now)
		active := now.Sub(pp.active) < ActiveFor
		switch {
		case pp.best.IsValid() && now.Sub(pp.lastPong) > TrustFor:
			pp.best, pp.bestRTT = netip.AddrPort{}, 0
			m.cfg.Bind.SetDirect(k, netip.AddrPort{})
			lost = append(lost, k)
			if lostPathLocked(pp) {
				sides = append(sides, k)
			}
		case pp.best.IsValid() && active && now.Sub(pp.lastPing) >= HeartbeatInterval:
			pp.lastPing = now
			acts = append(acts, action{peer: k, addr: pp.best})
		case !pp.best.IsValid() && active && m.retryDue(k, pp.attempted, pp.tries, now):
			acts = append(acts, action{peer: k, retry: true})
		}
	}
	m.mu.Unlock()
	for _, k := range sides {
		m.removeSide(k)
	}
	for _, k := range lost {
		inc(m.cfg.Metrics.PathChanges, "downgrade", ReasonTrustExpired)
		m.cfg.Log.Info("direct path lost; back to the relay", "peer", k.ShortString())
	}
	for _, a := range acts {
		if a.retry {
			m.attempt(a.peer, true)
		} else {
			m.ping(a.peer, a.addr, nil)
		}
	}
}

// expireCandidatesLocked drops candidates not heard of for CandidateTTL,
// except the peer's reported endpoints and the best address.
func (m *Manager) expireCandidatesLocked(pp *peer, now time.Time) {
	for a, seen := range pp.cands {
		if a == pp.best || slices.Contains(pp.fromMap, a) || now.Sub(seen) < CandidateTTL {
			continue
		}
		m.forgetLocked(pp, a)
	}
	for a := range pp.accepted {
		if _, ok := pp.cands[a]; !ok && a != pp.best {
			delete(pp.accepted, a)
			m.cfg.Bind.ForgetAddr(pp.node, a)
		}
	}
}

func (m *Manager) expirePingsLocked(now time.Time) {
	for tx, sp := range m.pings {
		if now.Sub(sp.sent) > PingTimeout {
			delete(m.pings, tx)
			inc(m.cfg.Metrics.DiscoPings, "timeout")
		}
	}
}

// NetworkChanged drops every direct path at once (traffic falls back to
// the relay without waiting for trust to lapse) and clears retry timers so
// the next packet, or Announce, probes again.
func (m *Manager) NetworkChanged() {
	now := m.cfg.Now()
	m.mu.Lock()
	lost := 0
	var sides []key.NodePublic
	for k, pp := range m.peers {
		if pp.best.IsValid() {
			lost++
			pp.best, pp.bestRTT = netip.AddrPort{}, 0
			pp.probing = now
			m.cfg.Bind.SetDirect(k, netip.AddrPort{})
		}
		if lostPathLocked(pp) {
			sides = append(sides, k)
		}
		pp.attempted = time.Time{}
		pp.tries = 0
		pp.searchAt = time.Time{}
	}
	m.mu.Unlock()
	for _, k := range sides {
		m.removeSide(k)
	}
	for range lost {
		inc(m.cfg.Metrics.PathChanges, "downgrade", ReasonNetworkChanged)
	}
}

// Announce sends call-me-maybe and pings to every recently active peer,
// after a network change gave us new endpoints.
func (m *Manager) Announce() {
	now := m.cfg.Now()
	m.mu.Lock()
	var peers []key.NodePublic
	for k, pp := range m.peers {
		if now.Sub(pp.active) < ActiveFor {
			peers = append(peers, k)
		}
	}
	m.mu.Unlock()
	for _, k := range peers {
		m.attempt(k, true)
	}
}
