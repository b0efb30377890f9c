// Package socks5 is a minimal SOCKS5 server (RFC 1928): no authentication
// and the CONNECT command only, which is what a userspace mesh node needs to
// let local programs reach peers. Outbound connections are made by a dial
// function the caller supplies (the netstack's, for meshnode --userspace).
//
// The handshake is read with fixed bounds: a client can make the server
// hold at most one small buffer per connection, the whole negotiation has a
// deadline, and connections still negotiating have a budget of their own in
// which the oldest is shed first (see the limits below). Listen refuses
// non-loopback addresses unless asked, and Server.Allow lets the caller
// refuse destinations before anything is dialled.
package socks5

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Protocol constants (RFC 1928).
const (
	version5       = 5
	methodNoAuth   = 0
	methodNoAccept = 0xff
	cmdConnect     = 1
	atypIPv4       = 1
	atypDomain     = 3
	atypIPv6       = 4

	repSucceeded      = 0
	repGeneralFailure = 1
	repNotAllowed     = 2
	repNetUnreach     = 3
	repHostUnreach    = 4
	repRefused        = 5
	repCmdUnsupported = 7
	repAddrUnsupp     = 8
)

// Limits. A SOCKS5 client on loopback is a local program, but any local
// program (or, with --socks5-allow-remote, any host) can open connections
// and say nothing. Connections that have not finished their handshake are
// therefore kept apart from the others: at most maxHandshakes of them,
// each for at most HandshakeTimeout, and when the budget is full the oldest
// is closed to make room, so a flood of idle connections delays a real
// client by nothing (it used to wait for the flood's 10 s timeout). A
// connection whose request is complete moves to the proxied budget
// (maxConns, dialling included); one past it is refused with a
// general-failure reply instead of waiting.
const (
	// DefaultHandshakeTimeout bounds the negotiation, from accept to a
	// complete request: a local client sends it in one round trip.
	DefaultHandshakeTimeout = 5 * time.Second
	// dialTimeout bounds the outbound dial: through the mesh it may wait
	// for a relay connection and a WireGuard handshake (normally well
	// under a second; 5 s on a loaded machine is not unusual).
	dialTimeout = 10 * time.Second
	// maxHandshakes bounds connections still negotiating (one 4 KiB-ish
	// goroutine and a socket each).
	maxHandshakes = 128
	// maxConns bounds proxied connections.
	maxConns = 1024
)

// Errors a Request can fail with.
var (
	ErrVersion     = errors.New("socks5: not a SOCKS5 client")
	ErrNoMethod    = errors.New("socks5: client offers no acceptable method")
	ErrCommand     = errors.New("socks5: only CONNECT is supported")
	ErrAddressType = errors.New("socks5: unsupported address type")
	// ErrNotAllowed is returned by Server.Allow for a destination this
	// node may not reach; the client gets "connection not allowed".
	ErrNotAllowed = errors.New("socks5: destination not allowed")
	// ErrNotLoopback is returned by Listen for a non-loopback address
	// without allowRemote.
	ErrNotLoopback = errors.New("socks5: listen address is not loopback")
)

// Listen listens on addr (host:port). The proxy has no authentication, so
// unless allowRemote is set the host must be a loopback address or
// "localhost": an empty host or 0.0.0.0 would offer the mesh to the LAN.
func Listen(addr string, allowRemote bool) (net.Listener, error) {
	if err := CheckListenAddr(addr, allowRemote); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("socks5: listen %s: %w", addr, err)
	}
	return ln, nil
}

// CheckListenAddr is Listen's check, for callers that want to refuse a bad
// address at start-up: addr must be host:port, and without allowRemote the
// host a loopback address or "localhost".
func CheckListenAddr(addr string, allowRemote bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("socks5: listen address %q: %w", addr, err)
	}
	if !allowRemote {
		ip, perr := netip.ParseAddr(host)
		if host != "localhost" && (perr != nil || !ip.IsLoopback()) {
			return fmt.Errorf("%w: %q (use a 127.0.0.0/8 or ::1 address, or allow remote clients explicitly)", ErrNotLoopback, addr)
		}
	}
	return nil
}

// Request is a parsed CONNECT request.
type Request struct {
	// Host is an IP address or a domain name; Port the destination port.
	Host string
	Port uint16
}

// Addr returns "host:port".
func (r Request) Addr() string { return net.JoinHostPort(r.Host, strconv.Itoa(int(r.Port))) }

// Server serves SOCKS5.
type Server struct {
	// Dial makes the outbound connection. Required.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Resolve, if set, maps a domain name to an address (MagicDNS); names
	// it cannot resolve are refused when Allow is set (Allow judges
	// addresses), else passed to Dial unchanged.
	Resolve func(name string) (netip.Addr, bool)
	// Allow, if set, judges every destination before it is dialled: a
	// non-nil error (ErrNotAllowed) refuses the CONNECT with "connection
	// not allowed by ruleset". meshnode allows only its peers' addresses.
	Allow func(dst netip.AddrPort) error
	// HandshakeTimeout overrides DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	Log              *slog.Logger

	mu      sync.Mutex
	pending list.List // *pendingConn, oldest first
	proxied int
}

type pendingConn struct {
	c      net.Conn
	cancel context.CancelFunc // ends the handshake's dial on eviction
	elem   *list.Element      // nil once the handshake is over
}

// Serve accepts connections on ln until ctx is done or ln fails, and
// returns after every connection it started has finished.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var conns sync.Map
	defer func() {
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("socks5: accept: %w", err)
		}
		cctx, cancel := context.WithCancel(ctx)
		pc := s.admit(c, cancel)
		conns.Store(c, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cancel()
			defer conns.Delete(c)
			defer c.Close()
			if err := s.serveConn(cctx, pc); err != nil {
				log.Debug("socks5 connection failed", "remote", c.RemoteAddr(), "err", err)
			}
		}()
	}
}

// admit records c as negotiating, closing the oldest negotiating
// connection when the budget is full.
func (s *Server) admit(c net.Conn, cancel context.CancelFunc) *pendingConn {
	pc := &pendingConn{c: c, cancel: cancel}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending.Len() >= maxHandshakes {
		old := s.pending.Remove(s.pending.Front()).(*pendingConn)
		old.elem = nil
		old.cancel()  // a dial in progress ends now
		old.c.Close() // its goroutine sees a read error and returns
	}
	pc.elem = s.pending.PushBack(pc)
	return pc
}

// handshakeDone moves pc out of the negotiating set; it reports false when
// pc was evicted meanwhile.
func (s *Server) handshakeDone(pc *pendingConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if pc.elem == nil {
		return false
	}
	s.pending.Remove(pc.elem)
	pc.elem = nil
	return true
}

// Pending returns the number of connections still negotiating.
func (s *Server) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending.Len()
}

func (s *Server) serveConn(ctx context.Context, pc *pendingConn) error {
	c := pc.c
	defer s.handshakeDone(pc)
	timeout := s.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	c.SetDeadline(time.Now().Add(timeout))
	req, err := ReadRequest(c)
	if err != nil {
		return err
	}
	// A complete request leaves the negotiating set (and can no longer be
	// shed by newer idle connections) for the proxied budget.
	if !s.handshakeDone(pc) {
		return errors.New("socks5: shed during the negotiation")
	}
	s.mu.Lock()
	full := s.proxied >= maxConns
	if !full {
		s.proxied++
	}
	s.mu.Unlock()
	if full {
		writeReply(c, repGeneralFailure, nil)
		return fmt.Errorf("socks5: %d connections already proxied", maxConns)
	}
	defer func() { s.mu.Lock(); s.proxied--; s.mu.Unlock() }()
	host := req.Host
	if s.Resolve != nil {
		if a, ok := s.Resolve(host); ok {
			host = a.String()
		}
	}
	if s.Allow != nil {
		ip, perr := netip.ParseAddr(host)
		if perr != nil {
			writeReply(c, repHostUnreach, nil)
			return fmt.Errorf("socks5: %s: unknown name", req.Addr())
		}
		if err := s.Allow(netip.AddrPortFrom(ip.Unmap(), req.Port)); err != nil {
			writeReply(c, repNotAllowed, nil)
			return fmt.Errorf("socks5: %s: %w", req.Addr(), err)
		}
	}
	// The dial has its own, longer limit: the first packet to a peer may
	// wait for a relay connection and a WireGuard handshake.
	c.SetDeadline(time.Time{})
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	out, err := s.Dial(dctx, "tcp", net.JoinHostPort(host, strconv.Itoa(int(req.Port))))
	cancel()
	c.SetWriteDeadline(time.Now().Add(timeout))
	if err != nil {
		writeReply(c, repHostUnreach, nil)
		return fmt.Errorf("socks5: dial %s: %w", req.Addr(), err)
	}
	defer out.Close()
	var bound netip.AddrPort
	if ta, ok := out.LocalAddr().(*net.TCPAddr); ok {
		bound = ta.AddrPort()
	}
	if err := writeReply(c, repSucceeded, &bound); err != nil {
		return err
	}
	c.SetDeadline(time.Time{})
	// Shutdown must end both directions, whichever side is idle.
	stop := context.AfterFunc(ctx, func() { c.Close(); out.Close() })
	defer stop()
	return splice(c, out)
}

// splice copies both ways until both directions finish, half-closing where
// the connections allow it.
func splice(a, b net.Conn) error {
	errc := make(chan error, 2)
	cp := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		errc <- err
	}
	go cp(a, b)
	go cp(b, a)
	err1, err2 := <-errc, <-errc
	return errors.Join(err1, err2)
}

// ReadRequest reads the method negotiation and the request from a client,
// answers the negotiation, and returns the request. On a protocol error it
// writes the matching failure reply where the protocol has one.
func ReadRequest(rw io.ReadWriter) (Request, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(rw, hdr[:]); err != nil {
		return Request{}, fmt.Errorf("socks5: read greeting: %w", err)
	}
	if hdr[0] != version5 {
		return Request{}, ErrVersion
	}
	methods := make([]byte, hdr[1]) // at most 255 bytes
	if _, err := io.ReadFull(rw, methods); err != nil {
		return Request{}, fmt.Errorf("socks5: read methods: %w", err)
	}
	ok := false
	for _, m := range methods {
		if m == methodNoAuth {
			ok = true
		}
	}
	if !ok {
		rw.Write([]byte{version5, methodNoAccept})
		return Request{}, ErrNoMethod
	}
	if _, err := rw.Write([]byte{version5, methodNoAuth}); err != nil {
		return Request{}, err
	}
	var req [4]byte
	if _, err := io.ReadFull(rw, req[:]); err != nil {
		return Request{}, fmt.Errorf("socks5: read request: %w", err)
	}
	if req[0] != version5 {
		return Request{}, ErrVersion
	}
	if req[1] != cmdConnect {
		writeReply(rw, repCmdUnsupported, nil)
		return Request{}, ErrCommand
	}
	var r Request
	switch req[3] {
	case atypIPv4:
		var a [4]byte
		if _, err := io.ReadFull(rw, a[:]); err != nil {
			return r, err
		}
		r.Host = netip.AddrFrom4(a).String()
	case atypIPv6:
		var a [16]byte
		if _, err := io.ReadFull(rw, a[:]); err != nil {
			return r, err
		}
		r.Host = netip.AddrFrom16(a).String()
	case atypDomain:
		var n [1]byte
		if _, err := io.ReadFull(rw, n[:]); err != nil {
			return r, err
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(rw, name); err != nil {
			return r, err
		}
		if len(name) == 0 {
			writeReply(rw, repAddrUnsupp, nil)
			return r, ErrAddressType
		}
		r.Host = string(name)
	default:
		writeReply(rw, repAddrUnsupp, nil)
		return r, ErrAddressType
	}
	var p [2]byte
	if _, err := io.ReadFull(rw, p[:]); err != nil {
		return r, err
	}
	r.Port = binary.BigEndian.Uint16(p[:])
	return r, nil
}

func writeReply(w io.Writer, rep byte, bound *netip.AddrPort) error {
	b := []byte{version5, rep, 0}
	if bound != nil && bound.Addr().Is6() && !bound.Addr().Is4In6() {
		a := bound.Addr().As16()
		b = append(append(b, atypIPv6), a[:]...)
	} else {
		var a [4]byte
		if bound != nil && bound.IsValid() {
			a = bound.Addr().Unmap().As4()
		}
		b = append(append(b, atypIPv4), a[:]...)
	}
	var port uint16
	if bound != nil {
		port = bound.Port()
	}
	b = binary.BigEndian.AppendUint16(b, port)
	_, err := w.Write(b)
	return err
}
