package netstack

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestParsePorts(t *testing.T) {
	s, err := ParsePorts([]string{"22", "80,8000-8100", " 443 "})
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[uint16]bool{22: true, 80: true, 8000: true, 8050: true, 8100: true, 443: true,
		21: false, 81: false, 7999: false, 8101: false, 0: false} {
		if s.Contains(p) != want {
			t.Errorf("Contains(%d) = %v", p, !want)
		}
	}
	if got := s.String(); got != "22,80,8000-8100,443" {
		t.Errorf("String() = %q", got)
	}
	if e, _ := ParsePorts(nil); !e.Empty() || e.Contains(80) {
		t.Error("empty set contains ports")
	}
	for _, bad := range []string{"0", "65536", "x", "90-80", "1-", "-5", "80-90-100"} {
		if _, err := ParsePorts([]string{bad}); !errors.Is(err, ErrBadPorts) {
			t.Errorf("ParsePorts(%q): %v", bad, err)
		}
	}
}

// TestForwarderOnlyListedPorts is the userspace ACL-bypass regression at
// the package level: a peer reaches a localhost service only on a listed
// port, and never on one of the node's own listeners even when listed.
func TestForwarderOnlyListedPorts(t *testing.T) {
	a, err := New(netip.MustParseAddr("100.64.0.1"), 1248)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := New(netip.MustParseAddr("100.64.0.2"), 1248)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	go wire(a, b)
	go wire(b, a)

	// Three localhost services on b's host.
	serve := func(reply string) uint16 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(reply))
				c.Close()
			}
		}()
		return uint16(ln.Addr().(*net.TCPAddr).Port)
	}
	listed, unlisted, own := serve("listed"), serve("unlisted"), serve("own")
	ports, err := ParsePorts([]string{itoa(listed) + "," + itoa(own)})
	if err != nil {
		t.Fatal(err)
	}
	f := &Forwarder{Host: "127.0.0.1", Ports: ports, Never: []uint16{own}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	b.ForwardTCP(f.Allowed, func(c net.Conn, port uint16) bool {
		wg.Add(1)
		go func() { defer wg.Done(); f.Handle(ctx, c, port) }()
		return true
	})

	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	get := func(port uint16) (string, error) {
		c, err := a.DialContext(dctx, "tcp", "100.64.0.2:"+itoa(port))
		if err != nil {
			return "", err
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	if got, err := get(listed); err != nil || got != "listed" {
		t.Fatalf("listed port: %q %v", got, err)
	}
	for name, p := range map[string]uint16{"unlisted": unlisted, "own listener": own} {
		if got, err := get(p); err == nil {
			t.Errorf("%s port %d reachable from the mesh: %q", name, p, got)
		}
	}
	// Handle refuses on its own too (a caller that skipped Allowed).
	c1, c2 := net.Pipe()
	go f.Handle(ctx, c1, own)
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c2.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("Handle of a never-forwarded port: %d %v", n, err)
	}
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

// FuzzParsePorts: whatever an operator types, ParsePorts returns a set or
// ErrBadPorts, and a set's String parses back to the same ports.
func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"22", "22,80,8000-8100", "0", "65535", "65536", "1-", "-", ",,", " 80 , 443 ", "9-1", "1-65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := ParsePorts([]string{spec})
		if err != nil {
			if !errors.Is(err, ErrBadPorts) {
				t.Fatalf("error %v is not ErrBadPorts", err)
			}
			return
		}
		back, err := ParsePorts([]string{s.String()})
		if err != nil {
			t.Fatalf("String() %q does not parse: %v", s.String(), err)
		}
		for _, p := range []uint16{1, 22, 80, 443, 8080, 65535} {
			if s.Contains(p) != back.Contains(p) {
				t.Fatalf("port %d differs after a round trip of %q", p, spec)
			}
		}
	})
}
