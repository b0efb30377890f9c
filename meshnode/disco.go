package meshnode

import (
	"errors"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/bind"
	"github.com/wiremesh/wiremesh/netmap"
)

// Disco bounds. Inbound pings are answered at most pingAnswerBurst at a
// time per peer, refilled every pingAnswerInterval: enough for a path probe
// round, too little to make the node a reflector. Outstanding pings of our
// own are bounded in paths (maxPathPings).
const (
	pingAnswerBurst    = 20
	pingAnswerInterval = 50 * time.Millisecond
)

// discoState holds this run's disco key and the per-peer shared keys.
type discoState struct {
	n    *Node
	priv key.DiscoPrivate
	pub  key.DiscoPublic

	mu     sync.Mutex
	peers  map[key.DiscoPublic]*discoPeer
	byNode map[key.NodePublic]*discoPeer
}

type discoPeer struct {
	node   key.NodePublic
	shared key.SharedKey
	// token bucket for answering pings
	tokens int
	refill time.Time
}

type pongResult struct {
	from key.NodePublic
	src  bind.Source
	at   time.Time
	rtt  time.Duration
}

func newDiscoState(n *Node) *discoState {
	priv := key.NewDisco()
	return &discoState{n: n, priv: priv, pub: priv.Public(),
		peers: map[key.DiscoPublic]*discoPeer{}, byNode: map[key.NodePublic]*discoPeer{}}
}

// setPeers updates the shared keys to match the configured peers.
func (d *discoState) setPeers(peers map[key.NodePublic]netmap.Node) {
	d.mu.Lock()
	defer d.mu.Unlock()
	next := make(map[key.DiscoPublic]*discoPeer, len(peers))
	for _, p := range peers {
		if p.DiscoKey.IsZero() {
			continue
		}
		if old, ok := d.peers[p.DiscoKey]; ok && old.node == p.NodeKey {
			next[p.DiscoKey] = old
			continue
		}
		next[p.DiscoKey] = &discoPeer{node: p.NodeKey, shared: key.Precompute(d.priv, p.DiscoKey), tokens: pingAnswerBurst}
	}
	d.peers = next
	d.byNode = make(map[key.NodePublic]*discoPeer, len(next))
	for _, dp := range next {
		d.byNode[dp.node] = dp
	}
}

// handle processes a disco packet from either path. Anything that does not
// come from a known peer's disco key and open with its shared key is
// dropped.
func (d *discoState) handle(src bind.Source, pkt []byte) {
	sender, err := disco.Sender(pkt)
	if err != nil {
		d.n.metrics.discoRx.WithLabelValues("bad").Inc()
		return
	}
	d.mu.Lock()
	p := d.peers[sender]
	d.mu.Unlock()
	if p == nil {
		d.n.metrics.discoRx.WithLabelValues("unknown_sender").Inc()
		return
	}
	if !src.Peer.IsZero() && src.Peer != p.node {
		// A relay says the packet came from another node key than the
		// disco key belongs to: forged or confused; drop.
		d.n.metrics.discoRx.WithLabelValues("bad").Inc()
		return
	}
	m, err := disco.Open(pkt, &p.shared)
	if err != nil {
		d.n.metrics.discoRx.WithLabelValues("bad").Inc()
		return
	}
	switch m := m.(type) {
	case *disco.Ping:
		if m.NodeKey != p.node {
			d.n.metrics.discoRx.WithLabelValues("bad").Inc()
			return
		}
		if !d.allowAnswer(p) {
			d.n.metrics.discoRx.WithLabelValues("rate_limited").Inc()
			return
		}
		d.n.metrics.discoRx.WithLabelValues("ping").Inc()
		d.send(p, src, &disco.Pong{TxID: m.TxID, Src: src.Addr})
		if src.Addr.IsValid() {
			d.n.paths.gotPing(p.node, src.Addr)
		}
	case *disco.Pong:
		d.n.metrics.discoRx.WithLabelValues("pong").Inc()
		d.n.paths.gotPong(p.node, m.TxID, src, time.Now())
	case *disco.CallMeMaybe:
		d.n.metrics.discoRx.WithLabelValues("call_me_maybe").Inc()
		if src.Addr.IsValid() {
			return // only meaningful through the relay
		}
		d.n.paths.gotCallMeMaybe(p.node, m.Endpoints)
	}
}

func (d *discoState) allowAnswer(p *discoPeer) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
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

// send seals m for p and sends it back the way src came: through the relay
// or to the UDP address.
func (d *discoState) send(p *discoPeer, via bind.Source, m disco.Message) error {
	pkt := disco.Seal(nil, d.pub, &p.shared, m)
	if via.Addr.IsValid() {
		return d.n.bind.WriteTo(pkt, via.Addr)
	}
	return d.n.relays.SendDisco(p.node, pkt)
}

var errNoDiscoKey = errors.New("peer has no disco key")

// sendTo seals m for peer and sends it over via (UDP address, or relay).
func (d *discoState) sendTo(peer key.NodePublic, via bind.Source, m disco.Message) error {
	d.mu.Lock()
	p := d.byNode[peer]
	d.mu.Unlock()
	if p == nil {
		return errNoDiscoKey
	}
	return d.send(p, via, m)
}
