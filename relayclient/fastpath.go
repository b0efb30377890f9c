package relayclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
)

// ErrNoFastPath is returned by EnableFastPath when the relay offers none.
var ErrNoFastPath = errors.New("relayclient: relay has no fast path")

// bindInterval is how often a Bind is resent until the relay's challenge
// arrives; UDP may lose either.
const bindInterval = 100 * time.Millisecond

// fastPath is an established fast path: a connected UDP socket to the
// relay's fast-path port and the session id.
type fastPath struct {
	udp     *net.UDPConn // nil when shared
	session [relayproto.SessionLen]byte
	// shared, when set, is the socket owner's (Config.Shared), and route
	// is what the owner needs to send batches over it itself.
	shared SharedSocket
	route  *FastRoute
}

// EnableFastPath negotiates the plain-UDP fast path (relayproto/fastpath.go)
// over this connection. Afterwards Send uses UDP and the relay delivers over
// UDP; the QUIC or TCP session stays the control channel and the fallback.
// On failure the connection carries on without it.
func (c *Conn) EnableFastPath(ctx context.Context) error {
	c.mu.Lock()
	if c.mu.fastCh == nil {
		c.mu.fastCh = make(chan fastMsg, 2)
	}
	ch := c.mu.fastCh
	c.mu.Unlock()
	if err := c.writeFrame(relayproto.FrameFastPathRequest, nil); err != nil {
		return err
	}
	m, err := c.awaitFast(ctx, ch, relayproto.FrameFastPathOffer)
	if err != nil {
		return err
	}
	offer, err := relayproto.ParseFastPathOffer(m.body)
	if err != nil {
		return err
	}
	if offer.Port == 0 {
		return ErrNoFastPath
	}
	host, _, err := net.SplitHostPort(c.cfg.Relay.Addr)
	if err != nil {
		return err
	}
	ua, err := net.ResolveUDPAddr("udp", net.JoinHostPort(host, strconv.Itoa(int(offer.Port))))
	if err != nil {
		return err
	}
	if c.cfg.Shared != nil {
		err := c.enableSharedFast(ctx, ch, offer.Session, ua.AddrPort())
		if !errors.Is(err, errNotShared) {
			return err
		}
		// The owner cannot share its socket (no UDP socket open): a
		// socket of our own.
	}
	d := net.Dialer{Control: c.cfg.Control}
	nc, err := d.DialContext(ctx, "udp", ua.String())
	var udp *net.UDPConn
	if err == nil {
		udp = nc.(*net.UDPConn)
	}
	if err != nil {
		return fmt.Errorf("relayclient: fast path socket: %w", err)
	}
	udp.SetReadBuffer(7 << 20) // as quic-go asks for its own socket
	udp.SetWriteBuffer(7 << 20)
	ok := false
	defer func() {
		if !ok {
			udp.Close()
		}
	}()
	challenge, err := bindFast(ctx, udp, offer.Session)
	if err != nil {
		return err
	}
	if err := c.writeFrame(relayproto.FrameFastPathConfirm, challenge[:]); err != nil {
		return err
	}
	if _, err := c.awaitFast(ctx, ch, relayproto.FrameFastPathReady); err != nil {
		return err
	}
	fp := &fastPath{udp: udp, session: offer.Session}
	c.fast.Store(fp)
	ok = true
	c.wg.Add(2)
	go func() { defer c.wg.Done(); c.readFast(udp, offer.Session) }()
	go func() { defer c.wg.Done(); <-c.done; udp.Close() }()
	return nil
}

// bindFast sends Binds until the relay's challenge comes back.
func bindFast(ctx context.Context, udp *net.UDPConn, session [relayproto.SessionLen]byte) ([relayproto.ChallengeLen]byte, error) {
	bind := append([]byte{relayproto.FastBind}, session[:]...)
	buf := make([]byte, 64)
	for ctx.Err() == nil {
		if _, err := udp.Write(bind); err != nil {
			return [relayproto.ChallengeLen]byte{}, err
		}
		udp.SetReadDeadline(time.Now().Add(bindInterval))
		n, err := udp.Read(buf)
		if err != nil {
			continue
		}
		fd, err := relayproto.ParseFast(buf[:n])
		if err == nil && fd.Kind == relayproto.FastChallenge && fd.Session == session {
			udp.SetReadDeadline(time.Time{})
			return fd.Challenge, nil
		}
	}
	return [relayproto.ChallengeLen]byte{}, ctx.Err()
}

type fastMsg struct {
	typ  relayproto.FrameType
	body []byte
}

func (c *Conn) awaitFast(ctx context.Context, ch <-chan fastMsg, want relayproto.FrameType) (fastMsg, error) {
	for {
		select {
		case m := <-ch:
			if m.typ == want {
				return m, nil
			}
		case <-c.done:
			return fastMsg{}, ErrClosed
		case <-ctx.Done():
			return fastMsg{}, ctx.Err()
		}
	}
}

// handleFastFrame passes fast-path control frames to EnableFastPath.
func (c *Conn) handleFastFrame(typ relayproto.FrameType, body []byte) {
	c.mu.Lock()
	ch := c.mu.fastCh
	c.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- fastMsg{typ, append([]byte(nil), body...)}:
	default:
	}
}

// reconfirmInterval bounds how often the client answers a challenge that
// arrives after the fast path is up. The relay sends one when this
// client's packets come from a new address (its NAT rebound the mapping);
// confirming it over the authenticated session moves the relay's view of
// the fast path to the new address. The challenge is bound to the address
// it was sent to, so confirming one never moves the path anywhere else.
const reconfirmInterval = 200 * time.Millisecond

// readFast delivers FastRecv datagrams to the handler and answers
// re-confirmation challenges. The socket is connected to the relay, so
// only the relay's packets arrive here.
func (c *Conn) readFast(udp *net.UDPConn, session [relayproto.SessionLen]byte) {
	buf := make([]byte, 1<<16)
	var lastConfirm time.Time
	for {
		n, err := udp.Read(buf)
		if err != nil {
			return
		}
		fd, err := relayproto.ParseFast(buf[:n])
		if err != nil {
			continue
		}
		switch fd.Kind {
		case relayproto.FastRecv:
			if c.cfg.Handler != nil {
				c.cfg.Handler(Packet{Src: fd.Key, Payload: append([]byte(nil), fd.Payload...)})
			}
		case relayproto.FastChallenge:
			if fd.Session != session || time.Since(lastConfirm) < reconfirmInterval {
				continue
			}
			lastConfirm = time.Now()
			c.log.Debug("fast path: address changed; re-confirming")
			c.writeFrame(relayproto.FrameFastPathConfirm, fd.Challenge[:])
		}
	}
}

// sendFast sends over the fast path if there is one; ok is false if not.
func (c *Conn) sendFast(dst key.NodePublic, payload []byte) (ok bool, err error) {
	fp := c.fast.Load()
	if fp == nil || relayproto.FastSendOverhead+len(payload) > relayproto.MaxFastDatagram {
		return false, nil // too large for the relay's batch buffers: QUIC or TCP takes it
	}
	if fp.shared != nil {
		return c.sendShared(fp, dst, payload)
	}
	bp := dgramPool.Get().(*[]byte)
	d := relayproto.AppendFastSend((*bp)[:0], fp.session, dst, payload)
	_, err = fp.udp.Write(d)
	*bp = d
	dgramPool.Put(bp)
	return true, err
}

// FastPath reports whether the fast path is up.
func (c *Conn) FastPath() bool {
	return c.fast.Load() != nil
}
