package meshnode

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/relayclient"
)

// Packets for a relay that is still connecting wait in a small queue and
// are flushed when it connects, so a node's first packet to a peer (a
// WireGuard handshake) is not lost to dial time, which would cost
// WireGuard's 5 s handshake retry. Beyond pendingLen the oldest go.
const (
	pendingLen  = 32
	pendingWait = 10 * time.Second
)

// relays sends through the relay fleet: to a peer's home relay when known
// (connecting on demand), else through our own home relay.
type relays struct {
	n    *Node
	pool *relayclient.Pool

	mu      sync.Mutex
	pending map[string]*pendingQueue // by relay address
}

type pendingPacket struct {
	dst   key.NodePublic
	pkt   []byte
	disco bool
}

type pendingQueue struct {
	pkts []pendingPacket
}

// SendTo implements bind.RelaySender.
func (r *relays) SendTo(peer key.NodePublic, pkt []byte) error {
	return r.send(peer, pkt, false)
}

// SendDisco sends a disco packet to peer through the relay fleet.
func (r *relays) SendDisco(peer key.NodePublic, pkt []byte) error {
	return r.send(peer, pkt, true)
}

func (r *relays) send(peer key.NodePublic, pkt []byte, isDisco bool) error {
	rel, ok := r.n.relayFor(peer)
	if !ok {
		return errNoRelay
	}
	c, err := r.pool.Get(rel)
	if err != nil {
		return err
	}
	if conn := c.Conn(); conn != nil {
		if isDisco {
			err = conn.SendDisco(peer, pkt)
		} else {
			err = c.Send(peer, pkt)
		}
		if err == nil || !errors.Is(err, relayclient.ErrNotConnected) && !errors.Is(err, relayclient.ErrClosed) {
			return err
		}
	}
	r.enqueue(rel, c, pendingPacket{dst: peer, pkt: append([]byte(nil), pkt...), disco: isDisco})
	return nil
}

var errNoRelay = errors.New("no relay known for peer")

func (r *relays) enqueue(rel relayclient.Relay, c *relayclient.Client, p pendingPacket) {
	r.mu.Lock()
	defer r.mu.Unlock()
	q, waiting := r.pending[rel.Addr]
	if !waiting {
		q = &pendingQueue{}
		r.pending[rel.Addr] = q
		r.n.goAsync(func(ctx context.Context) { r.flushWhenConnected(ctx, rel.Addr, c) })
	}
	if len(q.pkts) == pendingLen {
		q.pkts = q.pkts[1:]
		r.n.metrics.relayPendingDrops.Inc()
	}
	q.pkts = append(q.pkts, p)
}

func (r *relays) flushWhenConnected(ctx context.Context, addr string, c *relayclient.Client) {
	wctx, cancel := context.WithTimeout(ctx, pendingWait)
	defer cancel()
	conn, err := c.WaitConnected(wctx)
	r.mu.Lock()
	q := r.pending[addr]
	delete(r.pending, addr)
	r.mu.Unlock()
	if err != nil || q == nil {
		return
	}
	for _, p := range q.pkts {
		if p.disco {
			conn.SendDisco(p.dst, p.pkt)
		} else {
			conn.Send(p.dst, p.pkt)
		}
	}
}

// relayOf picks the relay to use in a region: the first healthy one, else
// the first listed.
func relayOf(rm netmap.RelayMap, region string) (relayclient.Relay, bool) {
	for _, reg := range rm.Regions {
		if reg.Code != region || len(reg.Relays) == 0 {
			continue
		}
		pick := reg.Relays[0]
		for _, rl := range reg.Relays {
			if rl.Healthy {
				pick = rl
				break
			}
		}
		return relayclient.Relay{Addr: pick.Addr, Pin: pick.Pin, Key: pick.Key, Region: reg.Code}, true
	}
	return relayclient.Relay{}, false
}
