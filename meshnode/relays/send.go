package relays

import (
	"context"
	"errors"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayclient"
)

// SendTo implements bind.RelaySender: the slow path, for a peer with no
// published link or whose link failed. It picks the relay, publishes the
// link to the bind for the packets after this one, and sends or queues.
func (r *Router) SendTo(peer key.NodePublic, pkt []byte) error {
	return r.send(peer, pkt, false)
}

// SendDisco sends a disco packet to peer through the relay fleet.
func (r *Router) SendDisco(peer key.NodePublic, pkt []byte) error {
	return r.send(peer, pkt, true)
}

func (r *Router) send(peer key.NodePublic, pkt []byte, isDisco bool) error {
	r.mu.Lock()
	rel, ok := r.relayForLocked(peer)
	if !ok {
		r.mu.Unlock()
		return ErrNoRelay
	}
	c, err := r.cfg.Pool.Get(rel)
	if err != nil {
		r.mu.Unlock()
		return err
	}
	if _, known := r.peers[peer]; known && !isDisco {
		// Published under the lock, so a concurrent change (which
		// unlinks under it too) cannot be overwritten by a stale pick.
		r.linked[peer] = true
		r.cfg.Bind.SetRelay(peer, c)
	}
	r.mu.Unlock()
	if conn := c.Conn(); conn != nil {
		if isDisco {
			err = conn.SendDisco(peer, pkt)
		} else {
			err = conn.Send(peer, pkt)
		}
		if err == nil || !errors.Is(err, relayclient.ErrNotConnected) && !errors.Is(err, relayclient.ErrClosed) {
			return err
		}
	}
	r.enqueue(rel, c, pendingPacket{dst: peer, pkt: append([]byte(nil), pkt...), disco: isDisco})
	return nil
}

func (r *Router) enqueue(rel relayclient.Relay, c *relayclient.Client, p pendingPacket) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx == nil {
		return // not running (stopping): nothing would flush it
	}
	q, waiting := r.pending[rel.Addr]
	if !waiting {
		q = &pendingQueue{}
		r.pending[rel.Addr] = q
		ctx := r.ctx
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.flushWhenConnected(ctx, rel.Addr, c)
		}()
	}
	if len(q.pkts) == pendingLen {
		q.pkts = q.pkts[1:]
		if r.cfg.PendingDrops != nil {
			r.cfg.PendingDrops.Inc()
		}
	}
	q.pkts = append(q.pkts, p)
}

func (r *Router) flushWhenConnected(ctx context.Context, addr string, c *relayclient.Client) {
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
