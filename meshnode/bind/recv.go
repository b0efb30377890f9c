package bind

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
	"golang.zx2c4.com/wireguard/conn"
)

// DeliverRelay hands wireguard-go a packet a relay delivered from peer.
// Disco packets go to OnDisco instead. pkt is copied. If wireguard-go is
// behind by relayQueueLen packets, the packet is dropped and counted.
func (b *Bind) DeliverRelay(from key.NodePublic, pkt []byte) {
	if len(pkt) == 0 || len(pkt) > maxPacket {
		return
	}
	if disco.LooksLikeDisco(pkt) {
		if b.cfg.OnDisco != nil {
			b.cfg.OnDisco(Source{Peer: from}, pkt)
		}
		return
	}
	b.mu.Lock()
	ep, known := b.peers[from]
	in, open := b.relayIn, b.open
	b.mu.Unlock()
	if !known || !open {
		b.unknownDrops.Add(1)
		return
	}
	buf := bufPool.Get().(*[]byte)
	n := copy(*buf, pkt)
	select {
	case in <- relayPacket{from: ep, buf: buf, n: n}:
	default:
		bufPool.Put(buf)
		b.relayDrops.Add(1)
	}
}

// makeReceiveQueue reads packets queued by DeliverRelay (path PathRelay)
// or side-socket readers (PathDirect).
func (b *Bind) makeReceiveQueue(in chan relayPacket, closing chan struct{}, path Path) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var p relayPacket
		select {
		case p = <-in:
		case <-closing:
			return 0, net.ErrClosed
		}
		n := 0
		for {
			sizes[n] = copy(packets[n], (*p.buf)[:p.n])
			eps[n] = p.from
			b.rxBytes[path].Add(uint64(sizes[n]))
			p.from.rxBytes.Add(uint64(sizes[n]))
			bufPool.Put(p.buf)
			n++
			if n == len(packets) {
				break
			}
			select {
			case p = <-in:
				continue
			default:
			}
			break
		}
		b.rxPackets[path].Add(uint64(n))
		return n, nil
	}
}

// wrapDirect filters a StdNetBind ReceiveFunc: WireGuard packets from
// confirmed addresses pass with their peer's endpoint; disco and STUN go to
// their handlers; the rest is dropped.
func (b *Bind) wrapDirect(recv conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for {
			n, err := recv(packets, sizes, eps)
			if err != nil {
				return 0, err
			}
			kept, relayed := 0, 0
			// One read lock per batch, and the previous packet's sender
			// reused: a batch is usually one peer's packets.
			b.mu.RLock()
			var lastSrc netip.AddrPort
			var lastEP *Endpoint
			for i := 0; i < n; i++ {
				pkt := packets[i][:sizes[i]]
				se, _ := eps[i].(*conn.StdNetEndpoint)
				if se == nil {
					continue
				}
				src := netip.AddrPortFrom(se.AddrPort.Addr().Unmap(), se.AddrPort.Port())
				if isFastKind(pkt) {
					if fc := b.fastSrc[src]; fc != nil {
						fep, wg, ok := b.fastRecv(fc, pkt)
						if !ok {
							continue
						}
						// The packet starts 33 bytes in: always moved
						// to the front of its (or an earlier) buffer.
						copy(packets[kept], wg)
						sizes[kept] = len(wg)
						eps[kept] = fep
						b.rxBytes[PathRelay].Add(uint64(len(wg)))
						fep.rxBytes.Add(uint64(len(wg)))
						kept++
						relayed++
						continue
					}
				}
				switch classify(pkt) {
				case kindDisco:
					if b.cfg.OnDisco != nil {
						b.mu.RUnlock()
						b.cfg.OnDisco(Source{Addr: src}, pkt)
						b.mu.RLock()
					}
					continue
				case kindSTUN:
					if b.cfg.OnSTUN != nil {
						b.mu.RUnlock()
						b.cfg.OnSTUN(src, pkt)
						b.mu.RLock()
					}
					continue
				}
				ep := lastEP
				if src != lastSrc || ep == nil {
					ep = b.byAddr[src]
					lastSrc, lastEP = src, ep
				}
				if ep == nil {
					b.unknownDrops.Add(1)
					continue
				}
				if kept != i {
					// Compact by copying, not by swapping slices:
					// wireguard-go reads its own buffer arrays back, not
					// the slice headers it passed in. Only a batch that
					// also held disco, STUN or dropped packets pays this.
					copy(packets[kept], pkt)
				}
				sizes[kept] = len(pkt)
				eps[kept] = ep
				b.rxBytes[PathDirect].Add(uint64(len(pkt)))
				ep.rxBytes.Add(uint64(len(pkt)))
				kept++
			}
			b.mu.RUnlock()
			if kept > 0 {
				if relayed > 0 {
					b.rxPackets[PathRelay].Add(uint64(relayed))
					b.fastRx.Add(uint64(relayed))
				}
				if kept > relayed {
					b.rxPackets[PathDirect].Add(uint64(kept - relayed))
				}
				return kept, nil
			}
			// Nothing for wireguard-go in this batch; read again rather
			// than return 0, which wireguard-go treats as a spin.
		}
	}
}

type packetKind int

const (
	kindWireGuard packetKind = iota
	kindDisco
	kindSTUN
)

// stunMagicCookie is RFC 5389's fixed value at bytes 4-8 of every message.
const stunMagicCookie = 0x2112A442

func classify(p []byte) packetKind {
	switch {
	case disco.LooksLikeDisco(p):
		return kindDisco
	case len(p) >= 20 && p[0]&0xc0 == 0 && binary.BigEndian.Uint32(p[4:8]) == stunMagicCookie:
		return kindSTUN
	}
	return kindWireGuard
}
