//go:build lab

package e2e

import (
	"context"
	"encoding/binary"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// TestLabMigration moves a node to another network (new router, new
// address) in the middle of a TCP stream over a direct path: the stream
// must survive, traffic must resume through the relay at once, and a new
// direct path must form. It logs the longest gap the receiver saw.
func TestLabMigration(t *testing.T) {
	w := newWorld(t, "nyc")
	r1, err := w.l.AddRouter("r1", lab.RouterConfig{NAT: lab.Easy})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := w.l.AddRouter("r2", lab.RouterConfig{NAT: lab.Easy})
	if err != nil {
		t.Fatal(err)
	}
	ha, err := w.l.AddHost("a", r1)
	if err != nil {
		t.Fatal(err)
	}
	a := w.startNode("a", ha)
	b := w.startNode("b", easy.host(t, w, "b"))
	for _, n := range []*node{a, b} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	w.waitEndpoints("a", "b")
	bIP := b.ip()
	a.ping(bIP, 3)
	a.waitStatus("direct path", func(st localapi.Status) bool { p, _ := peerOf(st, "b"); return p.Path == "direct" })

	// A TCP stream a→b: a 8-byte sequence number every 5 ms.
	ln, err := b.host.Listen(netip.AddrPortFrom(bIP, 6000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type gapResult struct {
		maxGap time.Duration
		n      uint64
		err    error
	}
	res := make(chan gapResult, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			res <- gapResult{err: err}
			return
		}
		defer c.Close()
		var r gapResult
		last := time.Now()
		buf := make([]byte, 8)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				if err != io.EOF {
					r.err = err
				}
				res <- r
				return
			}
			if seq := binary.BigEndian.Uint64(buf); seq != r.n {
				r.err = io.ErrUnexpectedEOF
			}
			r.n++
			now := time.Now()
			r.maxGap = max(r.maxGap, now.Sub(last))
			last = now
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := a.host.Dial(ctx, "tcp4", netip.AddrPortFrom(bIP, 6000).String())
	if err != nil {
		t.Fatal(err)
	}
	send := func(d time.Duration, seq *uint64) {
		end := time.Now().Add(d)
		buf := make([]byte, 8)
		for time.Now().Before(end) {
			binary.BigEndian.PutUint64(buf, *seq)
			if _, err := c.Write(buf); err != nil {
				t.Fatalf("stream write: %v", err)
			}
			*seq++
			time.Sleep(5 * time.Millisecond)
		}
	}
	var seq uint64
	send(time.Second, &seq)
	oldWAN := r1.WAN
	if err := ha.MoveTo(r2); err != nil {
		t.Fatal(err)
	}
	moved := time.Now()
	send(4*time.Second, &seq)
	st := a.waitStatus("direct path again", func(st localapi.Status) bool {
		p, _ := peerOf(st, "b")
		return p.Path == "direct"
	})
	send(time.Second, &seq)
	c.Close()
	r := <-res
	if r.err != nil {
		t.Fatalf("stream broken after migration: %v (got %d of %d)", r.err, r.n, seq)
	}
	if r.n != seq {
		t.Fatalf("received %d of %d messages", r.n, seq)
	}
	bst, _ := b.status()
	pa, _ := peerOf(bst, "a")
	t.Logf("moved from %v to %v; longest gap %v; direct again within %v; b sees a at %s",
		oldWAN, r2.WAN, r.maxGap.Round(time.Millisecond), time.Since(moved).Round(time.Millisecond), pa.Endpoint)
	if p, _ := peerOf(st, "b"); p.Path != "direct" {
		t.Fatalf("a's path to b %s", p.Path)
	}
	if pa.Path == "direct" && netip.MustParseAddrPort(pa.Endpoint).Addr() == oldWAN {
		t.Fatalf("b still sends to a's old address %s", pa.Endpoint)
	}
}
