package socks5

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"

	"golang.org/x/net/proxy"
)

func TestConnectThroughProxy(t *testing.T) {
	// A target server on loopback, reached through the proxy by a client
	// nobody here wrote (golang.org/x/net/proxy).
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	var dialed []string
	s := &Server{
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialed = append(dialed, addr)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		Resolve: func(name string) (netip.Addr, bool) {
			if name == "peer-b" {
				return netip.MustParseAddr("127.0.0.1"), true
			}
			return netip.Addr{}, false
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	d, err := proxy.SOCKS5("tcp", ln.Addr().String(), nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	port := target.Addr().(*net.TCPAddr).Port
	for _, host := range []string{"127.0.0.1", "peer-b"} {
		c, err := d.Dial("tcp", net.JoinHostPort(host, itoa(port)))
		if err != nil {
			t.Fatalf("dial %s via proxy: %v", host, err)
		}
		msg := bytes.Repeat([]byte("x"), 100000)
		go c.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo via proxy: %v", err)
		}
		c.Close()
	}
	if dialed[1] != "127.0.0.1:"+itoa(port) {
		t.Fatalf("name not resolved: dialed %v", dialed)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestReadRequestRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"socks4", []byte{4, 1, 0, 80, 127, 0, 0, 1, 0}, ErrVersion},
		{"auth only", []byte{5, 1, 2}, ErrNoMethod},
		{"bind command", []byte{5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80}, ErrCommand},
		{"bad atyp", []byte{5, 1, 0, 5, 1, 0, 9}, ErrAddressType},
		{"empty name", []byte{5, 1, 0, 5, 1, 0, 3, 0, 0, 80}, ErrAddressType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rw := &rwBuf{r: bytes.NewReader(tc.in)}
			if _, err := ReadRequest(rw); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	// Truncated input is an error, not a hang or a panic.
	full := []byte{5, 1, 0, 5, 1, 0, 3, 6, 'p', 'e', 'e', 'r', '-', 'b', 0, 80}
	for i := 0; i < len(full); i++ {
		if _, err := ReadRequest(&rwBuf{r: bytes.NewReader(full[:i])}); err == nil {
			t.Fatalf("truncated at %d accepted", i)
		}
	}
	r, err := ReadRequest(&rwBuf{r: bytes.NewReader(full)})
	if err != nil || r.Host != "peer-b" || r.Port != 80 {
		t.Fatalf("full request: %+v %v", r, err)
	}
}

type rwBuf struct {
	r io.Reader
	w bytes.Buffer
}

func (b *rwBuf) Read(p []byte) (int, error)  { return b.r.Read(p) }
func (b *rwBuf) Write(p []byte) (int, error) { return b.w.Write(p) }

func FuzzReadRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 100, 64, 0, 2, 0, 80})
	f.Add([]byte{5, 1, 0, 5, 1, 0, 3, 6, 'p', 'e', 'e', 'r', '-', 'b', 0, 80})
	f.Add([]byte{5, 1, 0, 5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ReadRequest(&rwBuf{r: bytes.NewReader(b)})
		if err == nil && r.Host == "" {
			t.Fatal("accepted empty host")
		}
	})
}
