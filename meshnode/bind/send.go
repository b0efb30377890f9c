package bind

import (
	"errors"
	"net/netip"

	"github.com/wiremesh/wiremesh/key"
	"golang.zx2c4.com/wireguard/conn"
)

// Send implements conn.Bind. It reads the peer's route with one atomic
// load and takes no lock and reads no clock: the path machine and the
// relay router publish routes, Send only follows them.
func (b *Bind) Send(bufs [][]byte, cep conn.Endpoint) error {
	ep, ok := cep.(*Endpoint)
	if !ok {
		return ErrNotPeer
	}
	var n uint64
	for _, p := range bufs {
		n += uint64(len(p))
	}
	r := ep.route.Load()
	if r.directEP != nil {
		// The peer's side socket (a birthday search's winner) when the
		// direct path runs over it, else the main socket.
		var err error
		sent := false
		if s := r.side; s != nil && s.remote == r.direct {
			err, sent = s.send(bufs), true
		} else if u := b.udp.Load(); u != nil {
			err, sent = u.Send(bufs, r.directEP), true
		}
		switch {
		case !sent:
		case err != nil:
			// The direct path failed (network gone, address
			// changed): this batch goes through the relay, and the
			// path state machine will notice the missing pongs.
			b.directErrs.Add(1)
		case r.both:
			// Unconfirmed direct path: the relay carries a copy.
			b.txBytes[PathDirect].Add(n)
			b.txPackets[PathDirect].Add(uint64(len(bufs)))
		default:
			b.txBytes[PathDirect].Add(n)
			b.txPackets[PathDirect].Add(uint64(len(bufs)))
			ep.txBytes.Add(n)
			return nil
		}
	}
	if b.cfg.Relay == nil && r.relay == nil {
		return errors.New("bind: no relay configured")
	}
	if b.cfg.OnRelaySend != nil && ep.relayBatches.Add(1)&relayNotifyMask == 1 {
		b.cfg.OnRelaySend(ep.key)
	}
	b.txBytes[PathRelay].Add(n)
	b.txPackets[PathRelay].Add(uint64(len(bufs)))
	ep.txBytes.Add(n)
	if r.fast != nil {
		// The relay's fast path on our own socket: the whole batch in
		// one sendmmsg (with GSO). On a failed write the batch goes
		// packet by packet through the link (QUIC or TCP).
		if fr := r.fast.FastRoute(); fr != nil {
			if dst, ok := fr.Tag.(*conn.StdNetEndpoint); ok {
				if u := b.udp.Load(); u != nil {
					return b.sendFastBatch(u, ep, r, fr, dst, bufs)
				}
			}
		}
	}
	var firstErr error
	for _, p := range bufs {
		if err := b.sendRelay(ep, r, p); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// sendRelay sends one packet over the peer's published relay link, or,
// when there is none or it fails (not connected yet, gone), through the
// RelaySender, which picks a relay, queues while it connects and
// publishes the link for the next packets.
func (b *Bind) sendRelay(ep *Endpoint, r *route, p []byte) error {
	if r.relay != nil {
		if err := r.relay.Send(ep.key, p); err == nil || b.cfg.Relay == nil {
			return err
		}
	}
	return b.cfg.Relay.SendTo(ep.key, p)
}

// WriteTo sends a raw packet (disco, STUN) from the UDP socket, or from
// the side socket that holds dst's path (AddSide).
func (b *Bind) WriteTo(pkt []byte, dst netip.AddrPort) error {
	if s := b.sideFor(dst); s != nil {
		_, err := s.conn.WriteToUDPAddrPort(pkt, dst)
		return err
	}
	u := b.udp.Load()
	if u == nil {
		return errors.New("bind: direct path is off")
	}
	return u.Send([][]byte{pkt}, &conn.StdNetEndpoint{AddrPort: dst})
}

// SetDirect makes addr the peer's direct path (or, with an invalid addr,
// clears it so that packets go through the relay). A failed direct send
// falls back to the relay.
func (b *Bind) SetDirect(k key.NodePublic, addr netip.AddrPort) {
	b.setDirect(k, addr, false)
}

// SetTentative makes addr the peer's direct path while it is unconfirmed:
// packets go both to addr and through the relay, so none is lost if the
// path turns out not to work. SetDirect with the same address confirms it.
func (b *Bind) SetTentative(k key.NodePublic, addr netip.AddrPort) {
	b.setDirect(k, addr, true)
}

func (b *Bind) setDirect(k key.NodePublic, addr netip.AddrPort, both bool) {
	ep := b.Peer(k)
	if !addr.IsValid() {
		ep.publish(func(r *route) { r.direct, r.directEP, r.both = netip.AddrPort{}, nil, false })
		return
	}
	b.mu.Lock()
	b.acceptLocked(ep, addr, true)
	b.mu.Unlock()
	ep.publish(func(r *route) {
		r.direct, r.directEP, r.both = addr, &conn.StdNetEndpoint{AddrPort: addr}, both
	})
}

// SetRelay publishes the relay connection packets to peer k go over; nil
// sends them through the RelaySender until a link is published again.
func (b *Bind) SetRelay(k key.NodePublic, link RelayLink) {
	fl, _ := link.(FastLink)
	b.Peer(k).publish(func(r *route) { r.relay, r.fast = link, fl })
}
