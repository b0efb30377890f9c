package meshnode

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/bind"
	"github.com/wiremesh/wiremesh/netmap"
)

// timeNow is the clock; tests may replace it per Node in the future.
var timeNow = time.Now

// Disco bounds. A peer may have at most maxPendingPings outstanding pings
// from us (the CLI bounds its count too), and inbound pings are answered at
// most pingAnswerBurst at a time per peer, refilled every
// pingAnswerInterval: enough for a path probe round, too little to make
// the node a reflector.
const (
	maxPendingPings    = 1024
	pingAnswerBurst    = 20
	pingAnswerInterval = 50 * time.Millisecond
)

// discoState holds this run's disco key and the per-peer shared keys.
type discoState struct {
	n    *Node
	priv key.DiscoPrivate
	pub  key.DiscoPublic

	mu      sync.Mutex
	peers   map[key.DiscoPublic]*discoPeer
	pending map[disco.TxID]chan pongResult
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
}

func newDiscoState(n *Node) *discoState {
	priv := key.NewDisco()
	return &discoState{n: n, priv: priv, pub: priv.Public(),
		peers: map[key.DiscoPublic]*discoPeer{}, pending: map[disco.TxID]chan pongResult{}}
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
	case *disco.Pong:
		d.n.metrics.discoRx.WithLabelValues("pong").Inc()
		d.mu.Lock()
		ch := d.pending[m.TxID]
		d.mu.Unlock()
		if ch != nil {
			select {
			case ch <- pongResult{from: p.node, src: src, at: time.Now()}:
			default:
			}
		}
	case *disco.CallMeMaybe:
		d.n.metrics.discoRx.WithLabelValues("call_me_maybe").Inc()
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

// ping sends one disco ping to peer through the relay and waits for the
// pong. It returns the round trip.
func (d *discoState) ping(ctx context.Context, peer key.NodePublic) (time.Duration, error) {
	d.mu.Lock()
	var p *discoPeer
	for _, dp := range d.peers {
		if dp.node == peer {
			p = dp
			break
		}
	}
	if p == nil {
		d.mu.Unlock()
		return 0, errNoDiscoKey
	}
	if len(d.pending) >= maxPendingPings {
		d.mu.Unlock()
		return 0, errors.New("too many pings in flight")
	}
	tx := disco.NewTxID()
	ch := make(chan pongResult, 1)
	d.pending[tx] = ch
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.pending, tx)
		d.mu.Unlock()
	}()
	start := time.Now()
	if err := d.send(p, bind.Source{Peer: peer}, &disco.Ping{TxID: tx, NodeKey: d.n.priv.Public()}); err != nil {
		return 0, err
	}
	for {
		select {
		case r := <-ch:
			if r.from != peer {
				continue
			}
			return r.at.Sub(start), nil
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}
