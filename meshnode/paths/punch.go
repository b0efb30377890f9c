package paths

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/punch"
)

// Coordinated punches, for the pairs plain hole punching leaves on the
// relay.
//
// Easy–hard: a birthday search (meshnode/punch). The relay carries the
// coordination as disco punch messages:
//
//	hard side                               easy side
//	attempt: punch{hard, my public IP} ──►
//	                                   ◄── punch{easy, my public ip:port}
//	open N sockets, one ping from each
//	to the easy side's ip:port
//	punch{probe} ──────────────────────►   M pings, paced, to random ports
//	                                        of the hard side's public IP
//	a ping lands on socket i: pong ────►   the pong proves hard_ip:port_i
//	keep socket i (Sides.AddSide), close the rest; both sides make the
//	found address the peer's tentative path, and the usual second pong
//	confirms it.
//
// Roles come from each side's own netcheck (mapping_varies_by_dest, with a
// port mapping counting as easy): only a hard side starts, only an easy
// side answers, so two hard sides stay on the relay.
//
// Bare Linux NATs: a punch packet that reaches the far router before the
// far host has sent anything makes that router record a connection to
// itself and remap the host's flow. So with priming on, an upgrade
// attempt first sends every candidate a primer with a TTL that passes the
// node's own NATs and dies before the far side (PunchConfig.Prime), then
// tells the peer through the relay (call-me-maybe), and sends no full
// ping yet. The peer primes on its side and pings; those pings now pass
// both sides' NATs, and the first one's pong-and-ping-back finish the
// punch. The relay is the rendezvous: neither side's full-TTL packet
// leaves before the other side has primed. A try spoiled anyway leaves a
// conntrack entry on the far router that every further packet of the flow
// keeps alive, so the retry comes after that entry's timeout
// (PrimedRetry), and only the lower node key of a pair retries.
const (
	// MaxSearches bounds birthday searches running at once (each hard
	// side holds up to punch.MaxSockets sockets while it runs).
	MaxSearches = 4
	// SearchRetry is the least time between two searches with a peer.
	SearchRetry = UpgradeRetry
	// searchOfferTTL is how long an offer (punch{hard}) or answer waits
	// for the next step before the attempt is given up.
	searchOfferTTL = 5 * time.Second
	// ConntrackUnreplied is Linux's nf_conntrack_udp_timeout: how long a
	// router keeps a UDP entry that saw no reply.
	ConntrackUnreplied = 30 * time.Second
	// PrimedRetry is the first upgrade retry when priming is on: past
	// ConntrackUnreplied, so a spoiled entry has expired.
	PrimedRetry = ConntrackUnreplied + 5*time.Second
	// ConntrackGCLag is how long an expired conntrack entry may stay in
	// the table until the kernel's garbage collector (whose scan interval
	// goes up to 60 s on a quiet table) removes it. Until then masquerade
	// still finds it by source and gives new flows from the same ip:port
	// the same (remapped) port, so a retry inside that window is spoiled
	// like the try before it.
	ConntrackGCLag = 60 * time.Second
	// PrimedRetrySlow is every later retry when priming is on: past the
	// timeout and the collector's lag.
	PrimedRetrySlow = ConntrackUnreplied + ConntrackGCLag + 5*time.Second
	// roundGap separates rounds of attempts: a node's own attempt and
	// the one that follows the peer's call-me-maybe a moment later are
	// one round.
	roundGap = 5 * time.Second
)

// Sides takes a hard side's winning socket (meshnode/bind).
type Sides interface {
	// AddSide makes c the socket of peer's direct path to remote; it
	// owns c from then on (and closes it on error).
	AddSide(peer key.NodePublic, c *net.UDPConn, remote netip.AddrPort) error
	// RemoveSide closes the peer's side socket, if any.
	RemoveSide(peer key.NodePublic)
}

// PunchConfig configures coordinated punches. Nil fields disable the part
// that needs them.
type PunchConfig struct {
	// Self reports this node's NAT from its latest STUN round: hard is an
	// endpoint-dependent mapping with no port mapping held; public is the
	// socket's public ip:port (on a hard NAT, one of several); zero while
	// unknown.
	Self func() (hard bool, public netip.AddrPort)
	// Listen opens one extra UDP socket for a hard side's search.
	Listen func() (*net.UDPConn, error)
	// Sides takes the winning socket. Birthday searches need Self,
	// Listen and Sides.
	Sides Sides
	// Prime sends one priming packet to dst from the node's socket's
	// port with a TTL that passes the node's own NATs (punch.Primer).
	// Nil: no priming.
	Prime func(pkt []byte, dst netip.AddrPort) error
	// Metrics counts searches; may be nil.
	Metrics *punch.Metrics
	// Sockets, Probes and Rate override punch's defaults (0: default).
	Sockets, Probes, Rate int
}

// search is one birthday search with a peer, from the offer on.
type search struct {
	id      uint32
	role    punch.Role
	at      time.Time   // last step
	peerIP  netip.Addr  // easy side: the hard side's public IP
	easy    *punch.Easy // easy side, once answered
	running bool        // the goroutine runs
	tx      disco.TxID  // our probes' ping txid
	cancel  context.CancelFunc
}

func (m *Manager) searchesOn() bool {
	p := m.cfg.Punch
	return p != nil && p.Self != nil && p.Listen != nil && p.Sides != nil
}

func (m *Manager) primingOn() bool { return m.cfg.Punch != nil && m.cfg.Punch.Prime != nil }

// retryEvery is the upgrade retry interval after tries rounds of
// attempts without a direct path.
func (m *Manager) retryEvery(tries int) time.Duration {
	switch {
	case !m.primingOn():
		return UpgradeRetry
	case tries <= 1:
		return PrimedRetry
	}
	return PrimedRetrySlow
}

// retryDue reports whether a retry towards k is due, attempted being the
// last attempt and tries the rounds of attempts since the last direct
// path: with priming on, only the lower node key of the pair retries on
// its own (the other one follows its call-me-maybe), at twice the
// interval as a fallback.
func (m *Manager) retryDue(k key.NodePublic, attempted time.Time, tries int, now time.Time) bool {
	every := m.retryEvery(tries)
	if m.primingOn() && !attempted.IsZero() && keyLess(k, m.cfg.Self) {
		every *= 2
	}
	return now.Sub(attempted) >= every
}

// keyLess orders node keys by their bytes.
func keyLess(a, b key.NodePublic) bool {
	ra, rb := a.Raw(), b.Raw()
	return bytes.Compare(ra[:], rb[:]) < 0
}

// prime sends a primer to every IPv4 candidate.
func (m *Manager) prime(cands []netip.AddrPort) {
	if !m.primingOn() {
		return
	}
	for _, c := range cands {
		if c.Addr().Unmap().Is4() {
			// The payload is never read; a disco-free marker keeps it
			// from being mistaken for anything else.
			if err := m.cfg.Punch.Prime(primerPayload, c); err != nil {
				m.cfg.Log.Debug("prime", "addr", c, "err", err)
			}
		}
	}
}

var primerPayload = []byte("wiremesh-prime")

// offerSearch starts a search as the hard side: it sends punch{hard}
// through the relay when this node is behind a hard NAT and no search
// with the peer ran recently.
func (m *Manager) offerSearch(k key.NodePublic) {
	if !m.searchesOn() {
		return
	}
	hard, public := m.cfg.Punch.Self()
	if !hard || !public.IsValid() {
		return
	}
	now := m.cfg.Now()
	m.mu.Lock()
	pp := m.peers[k]
	if pp == nil || pp.best.IsValid() || m.ctx == nil || m.searchBusyLocked(pp, now) {
		m.mu.Unlock()
		return
	}
	s := &search{id: rand.Uint32(), role: punch.RoleHard, at: now}
	pp.search, pp.searchAt = s, now
	m.mu.Unlock()
	m.cfg.Log.Debug("birthday search: offer", "peer", k.ShortString(), "id", s.id)
	m.sendTo(k, netip.AddrPort{}, &disco.Punch{Step: disco.StepHard, ID: s.id, Addr: netip.AddrPortFrom(public.Addr(), 0)})
}

// searchBusyLocked reports whether pp has a search under way, or had one
// too recently to start another.
func (m *Manager) searchBusyLocked(pp *peer, now time.Time) bool {
	if s := pp.search; s != nil && (s.running || now.Sub(s.at) < searchOfferTTL) {
		return true
	}
	return !pp.searchAt.IsZero() && now.Sub(pp.searchAt) < SearchRetry
}

// runningSearchesLocked counts searches whose goroutine runs.
func (m *Manager) runningSearchesLocked() int {
	n := 0
	for _, pp := range m.peers {
		if pp.search != nil && pp.search.running {
			n++
		}
	}
	return n
}

// gotPunch handles a punch message from peer k (through the relay).
func (m *Manager) gotPunch(k key.NodePublic, msg *disco.Punch) {
	if !m.searchesOn() {
		return
	}
	m.cfg.Log.Debug("punch", "peer", k.ShortString(), "step", msg.Step, "id", msg.ID, "addr", msg.Addr)
	switch msg.Step {
	case disco.StepHard:
		m.answerSearch(k, msg)
	case disco.StepEasy:
		m.startHard(k, msg)
	case disco.StepProbe:
		m.startEasy(k, msg)
	}
}

// answerSearch: the peer is hard. If we are easy, answer with our public
// ip:port and get ready to probe its IP.
func (m *Manager) answerSearch(k key.NodePublic, msg *disco.Punch) {
	hard, public := m.cfg.Punch.Self()
	ip := msg.Addr.Addr().Unmap()
	if punch.RoleFor(hard, false, true, false) != punch.RoleEasy || !public.IsValid() || !ip.Is4() || ip.IsUnspecified() {
		return // two hard sides (or no STUN answer yet): stay on the relay
	}
	now := m.cfg.Now()
	m.mu.Lock()
	pp := m.peers[k]
	if pp == nil || pp.best.IsValid() || m.ctx == nil {
		m.mu.Unlock()
		return
	}
	if s := pp.search; s != nil && s.running {
		m.mu.Unlock()
		return
	}
	shared := pp.shared
	s := &search{id: msg.ID, role: punch.RoleEasy, at: now, peerIP: ip, tx: disco.NewTxID()}
	tx := s.tx
	e, err := punch.NewEasy(punch.EasyConfig{
		Peer:   ip,
		Probes: m.cfg.Punch.Probes,
		Rate:   m.cfg.Punch.Rate,
		Payload: func(uint16) []byte {
			return disco.Seal(nil, m.pub, &shared, &disco.Ping{TxID: tx, NodeKey: m.cfg.Self})
		},
		Send:   m.cfg.Transport.WriteTo,
		Verify: m.verifier(k, shared, tx, false),
	})
	if err != nil {
		m.mu.Unlock()
		m.cfg.Log.Warn("birthday search", "peer", k.ShortString(), "err", err)
		return
	}
	s.easy = e
	pp.search, pp.searchAt = s, now
	m.mu.Unlock()
	m.sendTo(k, netip.AddrPort{}, &disco.Punch{Step: disco.StepEasy, ID: msg.ID, Addr: public})
}

// verifier returns the punch.Verifier for a search with peer node: a ping
// from the peer proves the path (and, on the hard side, is answered with
// a pong from the same socket); so does a pong to our probes' txid.
func (m *Manager) verifier(node key.NodePublic, shared key.SharedKey, tx disco.TxID, answer bool) punch.Verifier {
	return func(pkt []byte, from netip.AddrPort) ([]byte, bool) {
		if len(pkt) > disco.MaxPacket || !disco.LooksLikeDisco(pkt) {
			return nil, false
		}
		msg, err := disco.Open(pkt, &shared)
		if err != nil {
			return nil, false
		}
		switch msg := msg.(type) {
		case *disco.Ping:
			if msg.NodeKey != node {
				return nil, false
			}
			if answer {
				return disco.Seal(nil, m.pub, &shared, &disco.Pong{TxID: msg.TxID, Src: from}), true
			}
			return nil, true
		case *disco.Pong:
			return nil, msg.TxID == tx
		}
		return nil, false
	}
}

// searchLocked returns k's search in progress, or nil. m.mu is held.
func (m *Manager) searchLocked(k key.NodePublic) *search {
	if pp := m.peers[k]; pp != nil {
		return pp.search
	}
	return nil
}

// startHard: the easy side answered our offer; open the sockets.
func (m *Manager) startHard(k key.NodePublic, msg *disco.Punch) {
	peerEP := netip.AddrPortFrom(msg.Addr.Addr().Unmap(), msg.Addr.Port())
	if !peerEP.Addr().Is4() || peerEP.Port() == 0 {
		return
	}
	now := m.cfg.Now()
	m.mu.Lock()
	s := m.searchLocked(k)
	if s == nil || s.id != msg.ID || s.role != punch.RoleHard || s.running || m.ctx == nil ||
		m.runningSearchesLocked() >= MaxSearches {
		m.mu.Unlock()
		return
	}
	shared := m.peers[k].shared // s != nil: the peer is there
	s.running, s.at, s.tx = true, now, disco.NewTxID()
	ctx, cancel := context.WithCancel(m.ctx)
	s.cancel = cancel
	tx := s.tx
	m.searches.Add(1)
	m.mu.Unlock()
	cfg := punch.HardConfig{
		Peer:    peerEP,
		Sockets: m.cfg.Punch.Sockets,
		Listen:  m.cfg.Punch.Listen,
		Payload: func(int) []byte {
			return disco.Seal(nil, m.pub, &shared, &disco.Ping{TxID: tx, NodeKey: m.cfg.Self})
		},
		Verify: m.verifier(k, shared, tx, true),
		Sent: func() {
			m.sendTo(k, netip.AddrPort{}, &disco.Punch{Step: disco.StepProbe, ID: msg.ID})
		},
	}
	go func() {
		defer m.searches.Done()
		defer cancel()
		res, err := punch.Hard(ctx, cfg)
		m.cfg.Punch.Metrics.Observe(punch.SideHard, res, err)
		if err != nil {
			m.endSearch(k, s, netip.AddrPort{}, err)
			return
		}
		if err := m.cfg.Punch.Sides.AddSide(k, res.Conn, res.Remote); err != nil {
			m.endSearch(k, s, netip.AddrPort{}, err)
			return
		}
		m.endSearch(k, s, res.Remote, nil)
	}()
}

// startEasy: the hard side's sockets have sent; probe.
func (m *Manager) startEasy(k key.NodePublic, msg *disco.Punch) {
	now := m.cfg.Now()
	m.mu.Lock()
	s := m.searchLocked(k)
	if s == nil || s.id != msg.ID || s.role != punch.RoleEasy || s.running || s.easy == nil || m.ctx == nil ||
		m.runningSearchesLocked() >= MaxSearches {
		m.mu.Unlock()
		return
	}
	s.running, s.at = true, now
	ctx, cancel := context.WithCancel(m.ctx)
	s.cancel = cancel
	m.searches.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.searches.Done()
		defer cancel()
		res, err := s.easy.Run(ctx)
		m.cfg.Punch.Metrics.Observe(punch.SideEasy, res, err)
		m.endSearch(k, s, res.Remote, err)
	}()
}

// deliverSearch hands a datagram from src to the peer's running easy
// search, if src is the hard side's IP.
func (m *Manager) deliverSearch(k key.NodePublic, src netip.AddrPort, pkt []byte) {
	m.mu.Lock()
	var e *punch.Easy
	if pp := m.peers[k]; pp != nil && pp.search != nil && pp.search.easy != nil && pp.search.peerIP == src.Addr() {
		e = pp.search.easy
	}
	m.mu.Unlock()
	if e != nil {
		e.Deliver(pkt, src)
	}
}

// endSearch records a search's end; found, if valid, is the peer's
// address on the found path, which becomes its tentative path.
func (m *Manager) endSearch(k key.NodePublic, s *search, found netip.AddrPort, err error) {
	now := m.cfg.Now()
	m.mu.Lock()
	pp := m.peers[k]
	if pp == nil || pp.search != s {
		m.mu.Unlock()
		if found.IsValid() && s.role == punch.RoleHard {
			m.cfg.Punch.Sides.RemoveSide(k) // the peer went away meanwhile
		}
		return
	}
	pp.search = nil
	pp.searchAt = now
	var upgraded bool
	var ttd time.Duration
	if found.IsValid() {
		pp.punched = true
		pp.side = s.role == punch.RoleHard
		m.addCandidateLocked(pp, found, now)
		if pp.best.IsValid() && pp.best != found {
			// A plain punch won meanwhile; keep it.
			pp.punched, pp.side = false, false
		} else {
			upgraded, ttd = m.pongLocked(pp, found, now.Sub(s.at), now)
		}
	}
	side := pp.side
	m.mu.Unlock()
	if err != nil {
		m.cfg.Log.Info("birthday search: no path", "peer", k.ShortString(), "side", s.role, "err", err)
		return
	}
	if !side && s.role == punch.RoleHard {
		m.cfg.Punch.Sides.RemoveSide(k)
	}
	if upgraded {
		inc(m.cfg.Metrics.PathChanges, "upgrade", ReasonBirthday)
		if h := m.cfg.Metrics.TimeToDirect; ttd > 0 && h != nil {
			h.Observe(ttd.Seconds())
		}
		m.cfg.Log.Info("direct path (birthday search)", "peer", k.ShortString(), "side", s.role,
			"addr", found, "time_to_direct", ttd)
		m.ping(k, found, nil) // its pong confirms the path
	}
}

// lostPathLocked clears pp's direct path bookkeeping for a punched path
// and reports whether a side socket must be closed (outside m.mu: its
// reader may be waiting for m.mu).
func lostPathLocked(pp *peer) (closeSide bool) {
	closeSide = pp.side
	pp.punched, pp.side = false, false
	return closeSide
}

// removeSide closes a side socket; call without m.mu.
func (m *Manager) removeSide(k key.NodePublic) {
	if m.cfg.Punch != nil && m.cfg.Punch.Sides != nil {
		m.cfg.Punch.Sides.RemoveSide(k)
	}
}
