package relayclient_test

import (
	"context"
	"github.com/wiremesh/wiremesh/internal/poll"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayd"
	"github.com/wiremesh/wiremesh/relayd/relaytest"
)

// testWait bounds every wait; it is a failure deadline, not a timing.
const testWait = 10 * time.Second

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.UntilWithin(t, testWait, what, cond)
}

func TestClientReconnectsAfterRelayRestart(t *testing.T) {
	signer := key.NewSigning()
	cfg := relayd.Config{Region: relaytest.Region, Listen: "127.0.0.1:0", StateDir: t.TempDir(),
		Trusted: []key.SigningPublic{signer.Public()}}
	r := relaytest.StartWith(t, cfg, signer)
	c := relayclient.NewClient(r.ClientConfig(key.NewNode(), true))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(ctx, testWait)
	defer wcancel()
	first, err := c.WaitConnected(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if rtt, err := c.Ping(wctx); err != nil || rtt <= 0 {
		t.Fatalf("ping: %v %v", rtt, err)
	}
	r.Stop()
	waitUntil(t, "connection loss noticed", func() bool { return c.Conn() != first })
	if err := c.Send(key.NewNode().Public(), []byte("x")); err == nil && c.Conn() == nil {
		t.Fatal("send while disconnected did not fail")
	}
	cfg.Listen = r.Server.Addr().String()
	r2 := relaytest.StartWith(t, cfg, signer)
	second, err := c.WaitConnected(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if second == first {
		t.Fatal("WaitConnected returned the dead connection")
	}
	waitUntil(t, "relay sees the client", func() bool { return r2.Server.Clients() == 1 })
	cancel()
	<-done
	waitUntil(t, "client gone from relay", func() bool { return r2.Server.Clients() == 0 })
}

func TestPoolClosesIdleNonHome(t *testing.T) {
	home := relaytest.Start(t, nil)
	other := relaytest.StartWith(t, relayd.Config{Region: relaytest.Region, Listen: "127.0.0.1:0",
		StateDir: t.TempDir(), Trusted: home.Config.Trusted}, home.Signer)
	nk := key.NewNode()
	tmpl := home.ClientConfig(nk, true)
	p := &relayclient.Pool{Template: tmpl, IdleClose: 200 * time.Millisecond}
	if _, err := p.Get(home.Info()); err == nil {
		t.Fatal("Get before Run succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	waitUntil(t, "pool running", func() bool { _, err := p.SetHome(home.Info()); return err == nil })
	oc, err := p.Get(other.Info())
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, testWait)
	defer wcancel()
	if _, err := oc.WaitConnected(wctx); err != nil {
		t.Fatal(err)
	}
	if got := p.Open(); len(got) != 2 {
		t.Fatalf("open relays %v, want 2", got)
	}
	// Nothing uses the non-home relay: it closes; home stays.
	waitUntil(t, "idle non-home closed", func() bool {
		return slices.Equal(p.Open(), []string{home.Info().Addr}) && other.Server.Clients() == 0
	})
	if home.Server.Clients() != 1 {
		t.Fatalf("home relay has %d clients, want 1", home.Server.Clients())
	}
	cancel()
	<-done
	waitUntil(t, "home closed on pool stop", func() bool { return home.Server.Clients() == 0 })
}

func TestPoolSendThroughPeerHome(t *testing.T) {
	home := relaytest.Start(t, nil)
	peerHome := relaytest.StartWith(t, relayd.Config{Region: relaytest.Region, Listen: "127.0.0.1:0",
		StateDir: t.TempDir(), Trusted: home.Config.Trusted}, home.Signer)
	// The peer lives on peerHome.
	peer := key.NewNode()
	var got atomic.Int32
	pc := peerHome.ClientConfig(peer, true)
	pc.Handler = func(relayclient.Packet) { got.Add(1) }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pconn, err := relayclient.Dial(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	defer pconn.Close()
	p := &relayclient.Pool{Template: home.ClientConfig(key.NewNode(), true)}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	waitUntil(t, "sent through the peer's home relay", func() bool {
		p.Send(peerHome.Info(), peer.Public(), []byte("hello"))
		return got.Load() > 0
	})
	cancel()
	<-done
}

func TestNoGoroutineLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		r := relaytest.Start(t, nil)
		ctx, cancel := context.WithTimeout(context.Background(), testWait)
		defer cancel()
		for range 3 {
			c, err := relayclient.Dial(ctx, r.ClientConfig(key.NewNode(), true))
			if err != nil {
				t.Fatal(err)
			}
			c.Ping(ctx)
			c.Close()
		}
		r.Stop()
	}()
	waitUntil(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= base+2 })
}

// TestFastPathReconfirmsAfterRebind: when the client's fast-path address
// changes (a NAT rebinding), the relay challenges the new address and the
// client confirms it over its session, so traffic flows again both ways.
func TestFastPathReconfirmsAfterRebind(t *testing.T) {
	r := relaytest.Start(t, func(c *relayd.Config) { c.ListenFast = "127.0.0.1:0" })
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	type got struct{ n atomic.Int64 }
	var ga, gb got
	open := func(g *got) (key.NodePrivate, *relayclient.Conn) {
		nk := key.NewNode()
		cfg := r.ClientConfig(nk, true)
		cfg.Handler = func(relayclient.Packet) { g.n.Add(1) }
		c, err := relayclient.Dial(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := c.EnableFastPath(ctx); err != nil {
			t.Fatal(err)
		}
		return nk, c
	}
	ka, a := open(&ga)
	kb, b := open(&gb)
	if err := relayclient.RebindFastForTest(a); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a's packets reach b after the rebind", func() bool {
		a.Send(kb.Public(), []byte("x"))
		return gb.n.Load() > 0
	})
	waitUntil(t, "b's packets reach a's new address", func() bool {
		b.Send(ka.Public(), []byte("y"))
		return ga.n.Load() > 0
	})
}
