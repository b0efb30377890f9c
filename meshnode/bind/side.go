package bind

import (
	"errors"
	"net"
	"net/netip"

	"github.com/wiremesh/wiremesh/key"
)

// Side sockets. Behind a NAT that maps a new public port per destination
// (a hard NAT), a birthday search (meshnode/punch) finds the peer on one
// of many extra sockets, and the NAT mapping the peer reaches belongs to
// that socket: the main socket's packets to the peer would leave from
// another port, which the peer's NAT does not let in. So the winning
// socket stays open and becomes the peer's direct path: WireGuard and
// disco packets to the peer's address leave from it, and what arrives on
// it is read here and handled as the main socket's packets are.
//
// A peer has at most one side socket; there are at most maxSides in all
// (one per hard–easy peer with a found path).
const maxSides = 1024

type sideConn struct {
	ep     *Endpoint
	conn   *net.UDPConn
	remote netip.AddrPort
	done   chan struct{} // closed when the reader has returned
}

// ErrTooManySides is returned by AddSide past maxSides.
var ErrTooManySides = errors.New("bind: too many side sockets")

// AddSide makes c the socket for peer k's direct path to remote: sends to
// remote (WireGuard, once the path machine makes remote the peer's path,
// and WriteTo's disco) leave from c, and packets arriving on c are the
// peer's. The bind owns c from now on: RemoveSide, a later AddSide for the
// peer, or Close close it. On error c is closed.
func (b *Bind) AddSide(k key.NodePublic, c *net.UDPConn, remote netip.AddrPort) error {
	ep := b.Peer(k)
	s := &sideConn{ep: ep, conn: c, remote: remote, done: make(chan struct{})}
	b.mu.Lock()
	if !b.open {
		b.mu.Unlock()
		c.Close()
		return errors.New("bind: closed")
	}
	old := b.sides[k]
	if old == nil && len(b.sides) >= maxSides {
		b.mu.Unlock()
		c.Close()
		return ErrTooManySides
	}
	if old != nil && b.sideAddr[old.remote] == old {
		delete(b.sideAddr, old.remote)
	}
	b.sides[k] = s
	b.sideAddr[remote] = s
	b.acceptLocked(ep, remote, true)
	b.mu.Unlock()
	ep.publish(func(r *route) { r.side = s })
	if old != nil {
		old.stop()
	}
	go b.readSide(s)
	return nil
}

// RemoveSide closes peer k's side socket, if it has one; its packets go
// from the main socket again.
func (b *Bind) RemoveSide(k key.NodePublic) {
	b.mu.Lock()
	s := b.sides[k]
	if s != nil {
		b.dropSideLocked(k, s)
	}
	b.mu.Unlock()
	if s != nil {
		s.ep.publish(func(r *route) {
			if r.side == s {
				r.side = nil
			}
		})
		s.stop()
	}
}

// HasSide reports whether peer k has a side socket.
func (b *Bind) HasSide(k key.NodePublic) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.sides[k] != nil
}

func (b *Bind) dropSideLocked(k key.NodePublic, s *sideConn) {
	delete(b.sides, k)
	if b.sideAddr[s.remote] == s {
		delete(b.sideAddr, s.remote)
	}
}

// closeSides closes every side socket (Close). Called without b.mu.
func (b *Bind) closeSides(sides []*sideConn) {
	for _, s := range sides {
		s.ep.publish(func(r *route) {
			if r.side == s {
				r.side = nil
			}
		})
		s.stop()
	}
}

// stop closes the socket and waits for its reader.
func (s *sideConn) stop() {
	s.conn.Close()
	<-s.done
}

// sideFor returns the side socket that sends to dst, if any.
func (b *Bind) sideFor(dst netip.AddrPort) *sideConn {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.sideAddr[dst]
}

// send sends a batch from a side socket, one datagram at a time (a
// side socket carries one peer's traffic; it has no batching).
func (s *sideConn) send(bufs [][]byte) error {
	for _, p := range bufs {
		if _, err := s.conn.WriteToUDPAddrPort(p, s.remote); err != nil {
			return err
		}
	}
	return nil
}

// readSide reads s until it is closed: disco and STUN go to their
// handlers, WireGuard packets from the peer's accepted addresses to
// wireguard-go through the side queue, the rest is dropped.
func (b *Bind) readSide(s *sideConn) {
	defer close(s.done)
	buf := make([]byte, maxPacket)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // an ICMP error reported on the socket; keep reading
		}
		src := netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		pkt := buf[:n]
		switch classify(pkt) {
		case kindDisco:
			if b.cfg.OnDisco != nil {
				b.cfg.OnDisco(Source{Addr: src}, pkt)
			}
			continue
		case kindSTUN:
			continue // the side socket asks no STUN server anything
		}
		b.mu.RLock()
		ep := b.byAddr[src]
		in, open := b.sideIn, b.open
		b.mu.RUnlock()
		if ep != s.ep || !open {
			b.unknownDrops.Add(1)
			continue
		}
		pb := bufPool.Get().(*[]byte)
		m := copy(*pb, pkt)
		select {
		case in <- relayPacket{from: ep, buf: pb, n: m}:
		default:
			bufPool.Put(pb)
			b.relayDrops.Add(1)
		}
	}
}

// takeSidesLocked empties the side tables and returns what they held.
func (b *Bind) takeSidesLocked() []*sideConn {
	out := make([]*sideConn, 0, len(b.sides))
	for k, s := range b.sides {
		b.dropSideLocked(k, s)
		out = append(out, s)
	}
	return out
}
