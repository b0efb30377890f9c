package coordclient_test

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/coordinator/store/pgtest"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

func TestParseURLs(t *testing.T) {
	got, err := coordclient.ParseURLs(" https://a:1/, https://b:2 ,,")
	if err != nil || !slices.Equal(got, []string{"https://a:1", "https://b:2"}) {
		t.Fatalf("ParseURLs: %v, %v", got, err)
	}
	for _, bad := range []string{"", ",", "ftp://x", "https://a,http://b", "a:1"} {
		if _, err := coordclient.ParseURLs(bad); err == nil {
			t.Errorf("ParseURLs(%q) accepted", bad)
		}
	}
}

// deadURL is an https URL on a loopback port nobody listens on.
func deadURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "https://" + addr
}

// TestSkipsReplicaThatDoesNotAnswer: with the first replica of the list
// down, dialing, registering, updating and streaming all go to the next.
func TestSkipsReplicaThatDoesNotAnswer(t *testing.T) {
	s := coordtest.Start(t)
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	list := deadURL(t) + "," + s.URL()
	c, err := coordclient.DialWithAuthKey(ctx, list, ak, key.NewNode())
	if err != nil {
		t.Fatal(err)
	}
	if c.Replica() != s.URL() {
		t.Fatalf("client on %s, want the live %s", c.Replica(), s.URL())
	}
	if _, err := c.Register(ctx, ak, key.NewDisco().Public(), "me", "linux"); err != nil {
		t.Fatal(err)
	}
	// A client made with New starts on the dead one and moves on.
	c2 := coordclient.New(list, s.HTTP, s.Info, key.NewNode())
	if _, err := c2.Register(ctx, ak, key.NewDisco().Public(), "me2", "linux"); err != nil {
		t.Fatal(err)
	}
	ep := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.5:1")}
	if err := c2.Update(ctx, netmap.UpdateRequest{Endpoints: &ep}); err != nil {
		t.Fatal(err)
	}
	err = c.Watch(ctx, netmap.MapRequest{}, func(nm *netmap.NetworkMap, m *netmap.MapResponse) error {
		if _, ok := nm.PeerByName("me2"); ok {
			cancel()
		}
		return nil
	})
	if err != context.Canceled {
		t.Fatalf("Watch: %v", err)
	}
	// Every replica down: the error comes back.
	c3 := coordclient.New(deadURL(t)+","+deadURL(t), s.HTTP, s.Info, key.NewNode())
	if err := c3.Update(context.Background(), netmap.UpdateRequest{}); err == nil {
		t.Fatal("update with every replica down succeeded")
	}
}

// TestWatchMovesWhenReplicaDies: a stream on a replica that stops is
// reopened on the other, and changes made there keep arriving.
func TestWatchMovesWhenReplicaDies(t *testing.T) {
	pg := pgtest.Start(t)
	url := pg.NewDatabase(t)
	var rs []*coordtest.Server
	for range 2 {
		rs = append(rs, coordtest.Start(t, func(c *coordinator.Config) { c.DB = url }))
	}
	a, b := rs[0], rs[1]
	ak := a.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := coordclient.DialWithAuthKey(ctx, a.URL()+","+b.URL(), ak, key.NewNode())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Register(ctx, ak, key.NewDisco().Public(), "me", "linux"); err != nil {
		t.Fatal(err)
	}
	type ev struct {
		replica string
		peers   []string
	}
	evs := make(chan ev, 64)
	done := make(chan error, 1)
	go func() {
		done <- c.Watch(ctx, netmap.MapRequest{}, func(nm *netmap.NetworkMap, m *netmap.MapResponse) error {
			var names []string
			for _, p := range nm.Peers {
				names = append(names, p.Name)
			}
			evs <- ev{c.Replica(), names}
			return nil
		})
	}()
	wait := func(what string, cond func(ev) bool) {
		t.Helper()
		timeout := time.After(15 * time.Second)
		for {
			select {
			case e := <-evs:
				if cond(e) {
					return
				}
			case err := <-done:
				t.Fatalf("waiting for %s: Watch ended: %v", what, err)
			case <-timeout:
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	wait("a map from a", func(e ev) bool { return e.replica == a.URL() })
	a.Stop()
	wait("a map from b", func(e ev) bool { return e.replica == b.URL() })
	b.Register(t, ak, "later")
	wait("a node registered on b after the move", func(e ev) bool { return slices.Contains(e.peers, "later") })
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("Watch: %v", err)
	}
}

// FuzzParseURLs: any text gives a list of at most maxReplicas URLs of one
// scheme, or an error; never a panic or an empty list.
func FuzzParseURLs(f *testing.F) {
	for _, s := range []string{"https://a:1", "https://a:1,https://b:2", " http://127.0.0.1:8080/ ,", "https://a,http://b", ",,", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		urls, err := coordclient.ParseURLs(s)
		if err != nil {
			return
		}
		if len(urls) == 0 || len(urls) > 32 {
			t.Fatalf("%q: %d URLs", s, len(urls))
		}
		for _, u := range urls {
			if !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") || strings.HasSuffix(u, "/") || strings.Contains(u, ",") {
				t.Fatalf("%q gave %q", s, u)
			}
		}
	})
}

// TestRelayClientMovesBetweenReplicas: a relay joins through a list whose
// first replica is down, and its heartbeats move to the other replica when
// the one in use stops.
func TestRelayClientMovesBetweenReplicas(t *testing.T) {
	pg := pgtest.Start(t)
	url := pg.NewDatabase(t)
	a := coordtest.Start(t, func(c *coordinator.Config) { c.DB = url })
	b := coordtest.Start(t, func(c *coordinator.Config) { c.DB = url })
	ctx := context.Background()
	jk, err := a.CreateJoinKey(ctx, "nyc", "")
	if err != nil {
		t.Fatal(err)
	}
	pin := "sha256/" + strings.Repeat("A", 43)
	rc, _, err := coordclient.JoinRelay(ctx, deadURL(t)+","+a.URL()+","+b.URL(), jk, key.NewRelay(),
		netmap.RelayJoinRequest{Region: "nyc", PublicAddr: "198.18.2.1:443", Pin: pin})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Heartbeat(ctx, netmap.RelayHeartbeat{}); err != nil {
		t.Fatal(err)
	}
	a.Stop()
	if _, err := rc.Heartbeat(ctx, netmap.RelayHeartbeat{Clients: 1}); err != nil {
		t.Fatalf("heartbeat after the replica in use stopped: %v", err)
	}
	for _, r := range b.Relays() {
		if r.Region == "nyc" && r.Clients == 1 {
			return
		}
	}
	t.Fatalf("b did not get the heartbeat: %+v", b.Relays())
}
