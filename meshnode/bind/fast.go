package bind

import (
	"errors"
	"net/netip"
	"sync"

	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayproto"
	"golang.zx2c4.com/wireguard/conn"
)

// Relay fast path on the shared socket.
//
// A relay connection whose fast path runs over this bind's UDP socket
// (relayclient.Config.Shared = the Bind) publishes a FastRoute: the
// relay's fast-path address and the session. Send then frames a
// wireguard-go batch as FastSend datagrams in one contiguous arena and
// hands it to StdNetBind.Send as one batch, so sendmmsg and UDP GSO apply
// to relayed packets as to direct ones. The relay's FastRecv datagrams
// arrive on the same socket and are demultiplexed in the receive batch:
// from a claimed relay address, first byte FastRecv, the packet goes to
// wireguard-go in the same batch as its sender's Endpoint.

// FastLink is a RelayLink that may have a fast path over this bind's
// socket (relayclient.Client).
type FastLink interface {
	RelayLink
	// FastRoute returns the shared-socket fast path, or nil. It must take
	// no lock.
	FastRoute() *relayclient.FastRoute
}

// fastClaim is a relay fast-path address claimed by a relay connection.
type fastClaim struct {
	fn func(d []byte)
	ep *conn.StdNetEndpoint
}

// maxFastClaims bounds the claimed relay addresses: one per relay
// connection, and a node keeps a handful.
const maxFastClaims = 1024

// ErrNoSocket is returned by ClaimFast and WriteFast while the UDP socket
// is closed or the direct path is off.
var ErrNoSocket = errors.New("bind: no UDP socket")

// ClaimFast implements relayclient.SharedSocket: datagrams from src (a
// relay's fast-path address) that are not FastRecv packets for a known
// peer go to fn. The tag is the prebuilt endpoint Send uses.
func (b *Bind) ClaimFast(src netip.AddrPort, fn func(d []byte)) (tag any, release func(), err error) {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open || b.std == nil {
		return nil, nil, ErrNoSocket
	}
	if _, ok := b.fastSrc[src]; !ok && len(b.fastSrc) >= maxFastClaims {
		return nil, nil, errors.New("bind: too many relay fast paths")
	}
	c := &fastClaim{fn: fn, ep: &conn.StdNetEndpoint{AddrPort: src}}
	b.fastSrc[src] = c
	return c.ep, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.fastSrc[src] == c {
			delete(b.fastSrc, src)
		}
	}, nil
}

// WriteFast implements relayclient.SharedSocket.
func (b *Bind) WriteFast(d []byte, dst netip.AddrPort) error {
	if b.udp.Load() == nil {
		return ErrNoSocket
	}
	return b.WriteTo(d, dst)
}

// fastArena holds one batch of FastSend datagrams back to back. The
// datagrams are contiguous so that StdNetBind's GSO coalescing, which
// appends each datagram to the first one's buffer, copies each onto
// itself: a batch costs one copy (the framing) and one sendmmsg.
type fastArena struct {
	mem  []byte
	bufs [][]byte
}

// fastArenaSize fits a full wireguard-go batch of the largest fast-path
// datagrams (128 × 2 KiB = 256 KiB).
const fastArenaSize = conn.IdealBatchSize * relayproto.MaxFastDatagram

var arenaPool = sync.Pool{New: func() any {
	return &fastArena{mem: make([]byte, fastArenaSize), bufs: make([][]byte, 0, conn.IdealBatchSize)}
}}

// sendFastBatch sends bufs to peer over the fast path fr as one batch.
// Packets too large for the relay's fast-path buffers go one by one
// through the link (QUIC or TCP), and so does the whole batch when the
// socket refuses it (ENOBUFS, network gone): the link's own fast-path
// write fails over to QUIC or TCP.
func (b *Bind) sendFastBatch(u *udpSocket, ep *Endpoint, r *route, fr *relayclient.FastRoute, dst *conn.StdNetEndpoint, bufs [][]byte) error {
	a := arenaPool.Get().(*fastArena)
	defer arenaPool.Put(a)
	a.bufs = a.bufs[:0]
	k := ep.key.Raw()
	off := 0
	var firstErr error
	for _, p := range bufs {
		n := relayproto.FastSendOverhead + len(p)
		if n > relayproto.MaxFastDatagram || off+n > len(a.mem) || len(a.bufs) == cap(a.bufs) {
			if err := b.sendRelay(ep, r, p); err != nil && firstErr == nil {
				firstErr = err
			}
			continue
		}
		d := a.mem[off : off+n]
		d[0] = relayproto.FastSend
		copy(d[1:], fr.Session[:])
		copy(d[1+relayproto.SessionLen:], k[:])
		copy(d[relayproto.FastSendOverhead:], p)
		a.bufs = append(a.bufs, d)
		off += n
	}
	if len(a.bufs) == 0 {
		return firstErr
	}
	if err := u.Send(a.bufs, dst); err != nil {
		b.fastErrs.Add(1)
		for _, d := range a.bufs {
			if err := b.sendRelay(ep, r, d[relayproto.FastSendOverhead:]); err != nil && firstErr == nil {
				firstErr = err
			}
		}
		return firstErr
	}
	b.fastTx.Add(uint64(len(a.bufs)))
	return firstErr
}

// fastRecv handles a datagram from a claimed relay address inside a
// receive batch (b.mu read-locked). It returns the peer and the packet
// (aliasing pkt) when it is a WireGuard packet for wireguard-go; ok false
// means it was handled here (disco, passed to the claim, or dropped).
func (b *Bind) fastRecv(fc *fastClaim, pkt []byte) (ep *Endpoint, wg []byte, ok bool) {
	if pkt[0] == relayproto.FastRecv && len(pkt) > relayproto.FastRecvOverhead {
		k := key.PublicFromRaw[key.Node]([relayproto.KeyLen]byte(pkt[1:relayproto.FastRecvOverhead]))
		payload := pkt[relayproto.FastRecvOverhead:]
		if disco.LooksLikeDisco(payload) {
			if b.cfg.OnDisco != nil {
				b.mu.RUnlock()
				b.cfg.OnDisco(Source{Peer: k}, payload)
				b.mu.RLock()
			}
			return nil, nil, false
		}
		if ep := b.peers[k]; ep != nil {
			return ep, payload, true
		}
	}
	// A challenge, or a packet from a peer the bind does not know: the
	// relay connection decides.
	b.mu.RUnlock()
	fc.fn(pkt)
	b.mu.RLock()
	return nil, nil, false
}

// isFastKind reports whether p's first byte is a relay-to-client fast-path
// kind. WireGuard messages start with 1 to 4, so this costs the direct
// path one compare.
func isFastKind(p []byte) bool {
	return len(p) > 0 && (p[0] == relayproto.FastRecv || p[0] == relayproto.FastChallenge)
}
