// Package socks5 is a minimal SOCKS5 server (RFC 1928): no authentication
// and the CONNECT command only, which is what a userspace mesh node needs to
// let local programs reach peers. Outbound connections are made by a dial
// function the caller supplies (the netstack's, for meshnode --userspace).
//
// The handshake is read with fixed bounds: a client can make the server
// hold at most one small buffer per connection, and every stage has a
// deadline.
package socks5

import (
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

// handshakeTimeout bounds the whole SOCKS negotiation of one connection.
const handshakeTimeout = 10 * time.Second

// maxConns bounds concurrent proxied connections; more wait in Accept.
const maxConns = 1024

// Errors a Request can fail with.
var (
	ErrVersion     = errors.New("socks5: not a SOCKS5 client")
	ErrNoMethod    = errors.New("socks5: client offers no acceptable method")
	ErrCommand     = errors.New("socks5: only CONNECT is supported")
	ErrAddressType = errors.New("socks5: unsupported address type")
)

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
	// it cannot resolve are passed to Dial unchanged.
	Resolve func(name string) (netip.Addr, bool)
	Log     *slog.Logger
}

// Serve accepts connections on ln until ctx is done or ln fails, and
// returns after every connection it started has finished.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxConns)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var conns sync.Map
	defer func() {
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	}()
	for {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		c, err := ln.Accept()
		if err != nil {
			<-sem
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("socks5: accept: %w", err)
		}
		conns.Store(c, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			defer conns.Delete(c)
			defer c.Close()
			if err := s.serveConn(ctx, c); err != nil {
				log.Debug("socks5 connection failed", "remote", c.RemoteAddr(), "err", err)
			}
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) error {
	c.SetDeadline(time.Now().Add(handshakeTimeout))
	req, err := ReadRequest(c)
	if err != nil {
		return err
	}
	host := req.Host
	if s.Resolve != nil {
		if a, ok := s.Resolve(host); ok {
			host = a.String()
		}
	}
	dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	out, err := s.Dial(dctx, "tcp", net.JoinHostPort(host, strconv.Itoa(int(req.Port))))
	cancel()
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
