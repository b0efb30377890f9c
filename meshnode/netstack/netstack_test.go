package netstack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"
)

// wire pumps packets from a's Read into b's Write until a closes.
func wire(a, b *Stack) {
	bufs := make([][]byte, 32)
	for i := range bufs {
		bufs[i] = make([]byte, 2000)
	}
	sizes := make([]int, 32)
	for {
		n, err := a.Read(bufs, sizes, 0)
		if err != nil {
			return
		}
		out := make([][]byte, n)
		for i := 0; i < n; i++ {
			out[i] = bufs[i][:sizes[i]]
		}
		b.Write(out, 0)
	}
}

func TestForwardAndDial(t *testing.T) {
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
	ports := make(chan uint16, 4)
	b.ForwardTCP(func(port uint16) bool { return port != 10 }, func(c net.Conn, port uint16) bool {
		ports <- port
		if port == 9 {
			return false // refused after the handshake: closed
		}
		go func() { io.Copy(c, c); c.Close() }()
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := a.DialContext(ctx, "tcp", "100.64.0.2:8080")
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 200000)
	for i := range msg {
		msg[i] = byte(i)
	}
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if got[i] != msg[i] {
			t.Fatalf("byte %d differs", i)
		}
	}
	c.Close()
	if p := <-ports; p != 8080 {
		t.Fatalf("forwarded port %d", p)
	}
	// A refused port resets the connection: reading fails.
	c2, err := a.DialContext(ctx, "tcp", "100.64.0.2:9")
	if err == nil {
		c2.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c2.Read(make([]byte, 1)); err == nil {
			t.Fatal("refused connection readable")
		}
		c2.Close()
	}
	// A port allow refuses is reset at the SYN: the dial itself fails.
	if c4, err := a.DialContext(ctx, "tcp", "100.64.0.2:10"); err == nil {
		c4.Close()
		t.Fatal("dial to a refused port succeeded")
	}
	if _, err := a.DialContext(ctx, "tcp", "peer-b:80"); err == nil {
		t.Fatal("dial to a name succeeded")
	}
	// A listener on the stack takes precedence over the forwarder.
	ln, err := b.ListenTCP(7000)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("listener"))
			c.Close()
		}
	}()
	c3, err := a.DialContext(ctx, "tcp", "100.64.0.2:7000")
	if err != nil {
		t.Fatal(err)
	}
	buf, _ := io.ReadAll(c3)
	if string(buf) != "listener" {
		t.Fatalf("got %q", buf)
	}
}
