package paths

import (
	"errors"
	"net/netip"

	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
)

// Source says where a disco packet came from: a relay (Peer set, Addr
// invalid) or the UDP socket (Addr set, Peer zero).
type Source struct {
	Peer key.NodePublic
	Addr netip.AddrPort
}

// HandleDisco processes a disco packet from either path. Anything that
// does not come from a known peer's disco key and open with its shared key
// is dropped (and counted by reason).
func (m *Manager) HandleDisco(src Source, pkt []byte) {
	sender, err := disco.Sender(pkt)
	if err != nil {
		inc(m.cfg.Metrics.DiscoRx, "bad")
		return
	}
	m.mu.Lock()
	p := m.byDisco[sender]
	var node key.NodePublic
	var shared key.SharedKey
	if p != nil {
		node, shared = p.node, p.shared
	}
	m.mu.Unlock()
	if p == nil {
		inc(m.cfg.Metrics.DiscoRx, "unknown_sender")
		return
	}
	if !src.Peer.IsZero() && src.Peer != node {
		// A relay says the packet came from another node key than the
		// disco key belongs to: forged or confused; drop.
		inc(m.cfg.Metrics.DiscoRx, "bad")
		return
	}
	msg, err := disco.Open(pkt, &shared)
	if err != nil {
		inc(m.cfg.Metrics.DiscoRx, "bad")
		return
	}
	if src.Addr.IsValid() {
		m.deliverSearch(node, src.Addr, pkt) // a birthday search's answer, maybe
	}
	switch msg := msg.(type) {
	case *disco.Ping:
		if msg.NodeKey != node {
			inc(m.cfg.Metrics.DiscoRx, "bad")
			return
		}
		if !m.allowAnswer(node) {
			inc(m.cfg.Metrics.DiscoRx, "rate_limited")
			return
		}
		inc(m.cfg.Metrics.DiscoRx, "ping")
		m.sendTo(node, src.Addr, &disco.Pong{TxID: msg.TxID, Src: src.Addr})
		if src.Addr.IsValid() {
			m.gotPing(node, src.Addr)
		}
	case *disco.Pong:
		inc(m.cfg.Metrics.DiscoRx, "pong")
		m.gotPong(node, msg.TxID, src.Addr)
	case *disco.CallMeMaybe:
		inc(m.cfg.Metrics.DiscoRx, "call_me_maybe")
		if src.Addr.IsValid() {
			return // only meaningful through the relay
		}
		m.gotCallMeMaybe(node, msg.Endpoints)
	case *disco.Punch:
		inc(m.cfg.Metrics.DiscoRx, "punch")
		if src.Addr.IsValid() {
			return // coordination travels through the relay only
		}
		m.gotPunch(node, msg)
	}
}

// allowAnswer takes a token from the peer's ping-answer bucket.
func (m *Manager) allowAnswer(k key.NodePublic) bool {
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.peers[k]
	if p == nil {
		return false
	}
	if add := int(now.Sub(p.refill) / pingAnswerInterval); add > 0 {
		p.tokens = min(pingAnswerBurst, p.tokens+add)
		p.refill = now
	}
	if p.tokens == 0 {
		return false
	}
	p.tokens--
	return true
}

// errNoDiscoKey: the peer has no disco key (an old client), so nothing
// can be sealed for it.
var errNoDiscoKey = errors.New("paths: peer has no disco key")

// sendTo seals msg for peer and sends it to addr over UDP, or through the
// relay when addr is invalid.
func (m *Manager) sendTo(k key.NodePublic, addr netip.AddrPort, msg disco.Message) error {
	m.mu.Lock()
	p := m.peers[k]
	var shared key.SharedKey
	ok := p != nil && !p.discoKey.IsZero()
	if ok {
		shared = p.shared
	}
	m.mu.Unlock()
	if !ok {
		return errNoDiscoKey
	}
	pkt := disco.Seal(nil, m.pub, &shared, msg)
	if addr.IsValid() {
		return m.cfg.Transport.WriteTo(pkt, addr)
	}
	return m.cfg.Transport.SendDisco(k, pkt)
}
