package socks5

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/proxy"
)

// startServer runs s on a loopback listener until the test ends.
func startServer(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return ln.Addr().String()
}

func echoTarget(t *testing.T) string {
	t.Helper()
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { target.Close() })
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return target.Addr().String()
}

func directDial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// TestIdleFloodDoesNotDelayClient: 1,100 connections that never send a
// greeting used to fill the connection semaphore, and a real client then
// waited for the first of them to time out (9.9 s). Now they are shed
// oldest-first, and the client is served while the flood is still held.
// The handshake timeout is set far beyond the test's own deadline, so a
// client that got in only through a timeout fails the test.
func TestIdleFloodDoesNotDelayClient(t *testing.T) {
	const flood = 1100
	s := &Server{Dial: directDial, HandshakeTimeout: time.Hour}
	addr := startServer(t, s)
	idle := make([]net.Conn, 0, flood)
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for i := 0; i < flood; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		idle = append(idle, c)
	}
	// The newest idle connections are the ones still held.
	last := idle[flood-1]
	last.Write([]byte{5}) // half a greeting: still negotiating

	d, err := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.(proxy.ContextDialer).DialContext(ctx, "tcp", echoTarget(t))
	if err != nil {
		t.Fatalf("real client behind %d idle connections: %v", flood, err)
	}
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	c.Close()
	if p := s.Pending(); p > maxHandshakes {
		t.Fatalf("%d connections negotiating, budget %d", p, maxHandshakes)
	}
	// The oldest idle connection was shed: the server closed it.
	idle[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle[0].Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		t.Fatalf("oldest idle connection not shed: %v", err)
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne) && !ne.Timeout()
}

// TestHandshakeDeadline: a client that stops half-way is closed after the
// handshake timeout.
func TestHandshakeDeadline(t *testing.T) {
	addr := startServer(t, &Server{Dial: directDial, HandshakeTimeout: 50 * time.Millisecond})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{5, 1}) // greeting without its method list
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if n, err := c.Read(make([]byte, 16)); err == nil {
		t.Fatalf("half-greeted connection got %d bytes", n)
	}
}

func TestListenLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "localhost:0", "127.0.0.2:0"} {
		ln, err := Listen(addr, false)
		if err != nil {
			if addr == "[::1]:0" && !errors.Is(err, ErrNotLoopback) {
				continue // no IPv6 loopback on this host
			}
			t.Errorf("Listen(%q): %v", addr, err)
			continue
		}
		ln.Close()
	}
	for _, addr := range []string{":0", "0.0.0.0:0", "[::]:0", "198.18.0.1:0", "example.test:0"} {
		if ln, err := Listen(addr, false); !errors.Is(err, ErrNotLoopback) {
			if ln != nil {
				ln.Close()
			}
			t.Errorf("Listen(%q) without allowRemote: %v", addr, err)
		}
	}
	ln, err := Listen("0.0.0.0:0", true)
	if err != nil {
		t.Fatalf("Listen(0.0.0.0:0, allowRemote): %v", err)
	}
	ln.Close()
	if _, err := Listen("nonsense", true); err == nil {
		t.Error("Listen(nonsense) succeeded")
	}
}

// TestAllowRefusesBeforeDialling: a destination Allow refuses gets "not
// allowed" and nothing is dialled; a name Resolve does not know is refused
// too, since Allow cannot judge it.
func TestAllowRefusesBeforeDialling(t *testing.T) {
	target := echoTarget(t)
	allowed := netip.MustParseAddrPort(target)
	dialed := make(chan string, 8)
	s := &Server{
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialed <- addr
			return directDial(ctx, network, addr)
		},
		Resolve: func(name string) (netip.Addr, bool) {
			if name == "peer" {
				return allowed.Addr(), true
			}
			return netip.Addr{}, false
		},
		Allow: func(dst netip.AddrPort) error {
			if dst == allowed {
				return nil
			}
			return ErrNotAllowed
		},
	}
	addr := startServer(t, s)
	d, _ := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	c, err := d.Dial("tcp", net.JoinHostPort("peer", itoa(int(allowed.Port()))))
	if err != nil {
		t.Fatalf("allowed destination: %v", err)
	}
	c.Close()
	if got := <-dialed; got != target {
		t.Fatalf("dialed %s", got)
	}
	for _, dst := range []string{
		net.JoinHostPort("127.0.0.1", itoa(int(allowed.Port())+1)), // another port
		"198.18.0.9:80",   // not a peer
		"unknown.name:80", // not resolvable
	} {
		if c, err := d.Dial("tcp", dst); err == nil {
			c.Close()
			t.Errorf("CONNECT %s allowed", dst)
		}
	}
	select {
	case got := <-dialed:
		t.Fatalf("refused destination dialled: %s", got)
	default:
	}
}

// TestDiallingClientNotShed: a client whose request is complete (its dial
// in progress) is not shed by idle connections arriving after it.
func TestDiallingClientNotShed(t *testing.T) {
	release := make(chan struct{})
	dialing := make(chan struct{}, 1)
	s := &Server{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialing <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return directDial(ctx, network, addr)
	}}
	addr := startServer(t, s)
	target := echoTarget(t)
	d, _ := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	type res struct {
		c   net.Conn
		err error
	}
	got := make(chan res, 1)
	go func() { c, err := d.Dial("tcp", target); got <- res{c, err} }()
	<-dialing
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for i := 0; i < 2*maxHandshakes; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	// Until the server has taken them in (and shed the oldest of them).
	for deadline := time.Now().Add(10 * time.Second); s.Pending() < maxHandshakes; {
		if time.Now().After(deadline) {
			t.Fatalf("only %d connections negotiating", s.Pending())
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	r := <-got
	if r.err != nil {
		t.Fatalf("dialling client shed by a later flood: %v", r.err)
	}
	r.c.Close()
}
