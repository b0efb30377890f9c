package relayclient

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
)

// SharedSocket is a UDP socket the fast path shares with its owner:
// meshnode's bind, whose socket is wireguard-go's. On a shared socket the
// owner sends relayed packets itself, in batches (sendmmsg, UDP GSO),
// addressed to the relay's fast-path port with the session header
// (FastRoute), and reads the relay's FastRecv datagrams in its own receive
// batches. The relay accepts data only from the address that answered its
// challenge, so the Bind/Challenge exchange goes from the same socket.
type SharedSocket interface {
	// WriteFast sends one datagram to dst from the shared socket.
	WriteFast(d []byte, dst netip.AddrPort) error
	// ClaimFast asks the owner to pass fn every datagram from src that
	// it does not handle itself (challenges, packets it cannot place),
	// until release is called. fn must not retain d. tag is the owner's
	// own state for src (its prebuilt endpoint), handed back in
	// FastRoute.Tag. An owner with no socket open returns an error.
	ClaimFast(src netip.AddrPort, fn func(d []byte)) (tag any, release func(), err error)
}

// FastRoute is a fast path over a SharedSocket: what its owner needs to
// send FastSend datagrams itself.
type FastRoute struct {
	Addr    netip.AddrPort // the relay's fast-path address
	Session [relayproto.SessionLen]byte
	Tag     any // from SharedSocket.ClaimFast
}

// errNotShared means the SharedSocket could not take the fast path.
var errNotShared = errors.New("relayclient: shared socket unavailable")

// FastRoute returns the current connection's fast path over the shared
// socket, or nil (disconnected, no fast path, or one on a socket of its
// own). Like Send it takes no lock and reads no clock, and counts as use
// of the client (the Pool's idle check).
func (c *Client) FastRoute() *FastRoute {
	if !c.used.Load() {
		c.used.Store(true)
	}
	cur := c.conn.Load()
	if cur == nil {
		return nil
	}
	return cur.FastRoute()
}

// FastRoute returns the connection's fast path over the shared socket, or
// nil. It takes no lock.
func (c *Conn) FastRoute() *FastRoute {
	fp := c.fast.Load()
	if fp == nil {
		return nil
	}
	return fp.route
}

// sharedFast is the receive side of a fast path on a shared socket.
type sharedFast struct {
	c         *Conn
	session   [relayproto.SessionLen]byte
	challenge chan [relayproto.ChallengeLen]byte // while binding

	mu          sync.Mutex
	ready       bool
	lastConfirm time.Time
}

// enableSharedFast runs the Bind/Challenge exchange over c.cfg.Shared and
// confirms it; errNotShared if the owner cannot share its socket.
func (c *Conn) enableSharedFast(ctx context.Context, ch <-chan fastMsg, session [relayproto.SessionLen]byte, relay netip.AddrPort) error {
	relay = netip.AddrPortFrom(relay.Addr().Unmap(), relay.Port())
	sf := &sharedFast{c: c, session: session, challenge: make(chan [relayproto.ChallengeLen]byte, 1)}
	tag, release, err := c.cfg.Shared.ClaimFast(relay, sf.datagram)
	if err != nil {
		return fmt.Errorf("%w: %v", errNotShared, err)
	}
	ok := false
	defer func() {
		if !ok {
			release()
		}
	}()
	bind := append([]byte{relayproto.FastBind}, session[:]...)
	t := time.NewTicker(bindInterval)
	defer t.Stop()
	var challenge [relayproto.ChallengeLen]byte
bindLoop:
	for {
		if err := c.cfg.Shared.WriteFast(bind, relay); err != nil {
			return fmt.Errorf("relayclient: fast path bind: %w", err)
		}
		select {
		case challenge = <-sf.challenge:
			break bindLoop
		case <-t.C:
		case <-c.done:
			return ErrClosed
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := c.writeFrame(relayproto.FrameFastPathConfirm, challenge[:]); err != nil {
		return err
	}
	if _, err := c.awaitFast(ctx, ch, relayproto.FrameFastPathReady); err != nil {
		return err
	}
	sf.mu.Lock()
	sf.ready = true
	sf.lastConfirm = time.Now()
	sf.mu.Unlock()
	c.fast.Store(&fastPath{session: session, shared: c.cfg.Shared,
		route: &FastRoute{Addr: relay, Session: session, Tag: tag}})
	ok = true
	c.wg.Add(1)
	go func() { defer c.wg.Done(); <-c.done; release() }()
	return nil
}

// datagram handles what the socket's owner passes on from the relay: the
// challenge while binding, re-confirmation challenges after (the relay
// saw this client's packets from a new address: its NAT rebound), and
// packets the owner did not deliver itself.
func (sf *sharedFast) datagram(d []byte) {
	fd, err := relayproto.ParseFast(d)
	if err != nil {
		return
	}
	switch fd.Kind {
	case relayproto.FastRecv:
		if h := sf.c.cfg.Handler; h != nil {
			h(Packet{Src: fd.Key, Payload: append([]byte(nil), fd.Payload...)})
		}
	case relayproto.FastChallenge:
		if fd.Session != sf.session {
			return
		}
		sf.mu.Lock()
		ready := sf.ready
		due := ready && time.Since(sf.lastConfirm) >= reconfirmInterval
		if due {
			sf.lastConfirm = time.Now()
		}
		sf.mu.Unlock()
		if !ready {
			select {
			case sf.challenge <- fd.Challenge:
			default:
			}
			return
		}
		if due {
			sf.c.log.Debug("fast path: address changed; re-confirming")
			sf.c.writeFrame(relayproto.FrameFastPathConfirm, fd.Challenge[:])
		}
	}
}

// sendShared sends one packet over the shared socket (a packet the owner
// did not batch itself: the relay router's slow path, the bind's
// fallback). sendFast has checked the size; a failed write reports !ok so
// that QUIC or TCP carries the packet.
func (c *Conn) sendShared(fp *fastPath, dst key.NodePublic, payload []byte) (ok bool, err error) {
	bp := dgramPool.Get().(*[]byte)
	d := relayproto.AppendFastSend((*bp)[:0], fp.session, dst, payload)
	err = fp.shared.WriteFast(d, fp.route.Addr)
	*bp = d
	dgramPool.Put(bp)
	return err == nil, nil
}
