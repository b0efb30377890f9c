package coordinator_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/coordinator/store/pgtest"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// on returns n's client pointed at replica s (same keys, same node).
func on(s *coordtest.Server, n *coordtest.Node) *coordtest.Node {
	c := *n
	c.Client = coordclient.New(s.URL(), s.HTTP, s.Info, n.Key)
	return &c
}

func startReplicas(t *testing.T, url string, n int) []*coordtest.Server {
	var out []*coordtest.Server
	for range n {
		out = append(out, coordtest.Start(t, func(c *coordinator.Config) {
			c.DB = url
			c.SweepInterval = 100 * time.Millisecond
		}))
	}
	return out
}

// TestReplicasShareOneDatabase runs two replicas on one PostgreSQL: they
// present one identity, and every change made through one reaches the
// streams held by the other.
func TestReplicasShareOneDatabase(t *testing.T) {
	pg := pgtest.Start(t)
	rs := startReplicas(t, pg.NewDatabase(t), 2)
	a, b := rs[0], rs[1]
	ctx := context.Background()
	if a.Pin() != b.Pin() || a.Info.Key != b.Info.Key || !slices.Equal(a.Info.AdmitKeys, b.Info.AdmitKeys) {
		t.Fatalf("replicas differ: pins %s %s, keys %v %v", a.Pin(), b.Pin(), a.Info.Key, b.Info.Key)
	}

	// A key printed by one works on the other.
	key := a.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	n1 := b.Register(t, key, "one")
	n2 := a.Register(t, key, "two")
	if n1.Self.Addresses[0] == n2.Self.Addresses[0] {
		t.Fatal("two replicas gave one address twice")
	}
	w1 := watch(t, n1, netmap.MapRequest{}) // on b
	w2 := watch(t, n2, netmap.MapRequest{}) // on a
	w1.waitFor("one sees two, online", func(nm *netmap.NetworkMap) bool {
		p, ok := nm.PeerByName("two")
		return ok && p.Online
	})
	w2.waitFor("two sees one, online", func(nm *netmap.NetworkMap) bool {
		p, ok := nm.PeerByName("one")
		return ok && p.Online
	})

	// An endpoint change through a reaches the stream on b.
	ep := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.9:41641")}
	if err := on(a, n2).Client.Update(ctx, netmap.UpdateRequest{Endpoints: &ep}); err != nil {
		t.Fatal(err)
	}
	w1.waitFor("two's endpoint on one's stream", func(nm *netmap.NetworkMap) bool {
		p, _ := nm.PeerByName("two")
		return slices.Equal(p.Endpoints, ep)
	})

	// A policy set on b applies to streams on a: users are selectors.
	if err := b.CreateUser(ctx, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	alice := a.Register(t, a.AuthKey(t, coordinator.AuthKeyRequest{User: "alice@example.com"}), "alice-laptop")
	wAlice := watch(t, on(b, alice), netmap.MapRequest{})
	wAlice.waitFor("alice sees all under allow-all", func(nm *netmap.NetworkMap) bool { return len(nm.Peers) == 2 })
	pol := `{"acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["admin@:22"]}],
		"tests": [{"src": "alice@example.com", "accept": ["one:22"], "deny": ["one:80"]}]}`
	if err := b.SetPolicy(ctx, []byte(pol)); err != nil {
		t.Fatal(err)
	}
	nm := w2.waitFor("two (admin@, on a) gets a filter admitting alice on 22 only", func(nm *netmap.NetworkMap) bool {
		return len(nm.Filter.Rules) == 1 && len(nm.Peers) == 1
	})
	if r := nm.Filter.Rules[0]; r.SrcIPs[0] != alice.Self.Addresses[0] || r.DstPorts[0].First != 22 || r.DstPorts[0].Last != 22 {
		t.Fatalf("filter on a after a policy set on b: %+v", nm.Filter)
	}
	if a.Policy() != pol {
		t.Fatal("policy text not in force on a")
	}

	// Deleting a node through b takes it off a's streams.
	if err := b.DeleteNode(ctx, "alice-laptop"); err != nil {
		t.Fatal(err)
	}
	w2.waitFor("alice gone from two's stream", func(nm *netmap.NetworkMap) bool { return len(nm.Peers) == 0 })
	if err := wAlice.waitEnd(); err == nil {
		t.Fatal("deleted node's stream did not fail")
	}
	// So does deleting a user with --force through b: its node leaves a's
	// streams, and the user's key no longer registers on a.
	aliceKey := a.AuthKey(t, coordinator.AuthKeyRequest{User: "alice@example.com", Reusable: true})
	a.Register(t, aliceKey, "alice-desk")
	w2.waitFor("alice's second node on two's stream", func(nm *netmap.NetworkMap) bool { return len(nm.Peers) == 1 })
	if n, err := b.DeleteUser(ctx, "alice@example.com", true); err != nil || n != 1 {
		t.Fatalf("forced user delete on b: %d, %v", n, err)
	}
	w2.waitFor("alice's node gone from two's stream", func(nm *netmap.NetworkMap) bool { return len(nm.Peers) == 0 })
	if _, err := a.NewClient().Client.Register(ctx, aliceKey, a.NewClient().Disco.Public(), "late", "linux"); err == nil {
		t.Fatal("a deleted user's key registered a node on the other replica")
	}

	// Expiring through a closes the stream held by b.
	if err := a.ExpireNode(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	if err := w1.waitEnd(); err == nil {
		t.Fatal("expired node's stream on the other replica stayed open")
	}

	// Exactly one replica runs the jobs.
	leaders := func() float64 {
		return metric(t, a, "coordinator_jobs_leader") + metric(t, b, "coordinator_jobs_leader")
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.After(waitTimeout); leaders() != 1; {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("%v replicas run the jobs", leaders())
		}
	}
	// The leader stops (as a killed one would): the other takes over.
	leader, other := a, b
	if metric(t, b, "coordinator_jobs_leader") == 1 {
		leader, other = b, a
	}
	leader.Stop()
	for deadline := time.After(waitTimeout); metric(t, other, "coordinator_jobs_leader") != 1; {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal("jobs did not move to the surviving replica")
		}
	}
}

// metric reads an unlabelled gauge or counter from s's registry.
func metric(t *testing.T, s *coordtest.Server, name string) float64 {
	t.Helper()
	mfs, err := s.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestRevokedKeyStopsOnEveryReplica: a revocation through one replica
// refuses the very next registration on the other.
func TestRevokedKeyStopsOnEveryReplica(t *testing.T) {
	pg := pgtest.Start(t)
	rs := startReplicas(t, pg.NewDatabase(t), 2)
	a, b := rs[0], rs[1]
	ctx := context.Background()
	key := a.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	b.Register(t, key, "before")
	keys, err := b.AuthKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].Uses != 1 || keys[0].User != "admin@" {
		t.Fatalf("keys on b: %+v, %v", keys, err)
	}
	if err := a.RevokeAuthKey(ctx, keys[0].ID); err != nil {
		t.Fatal(err)
	}
	for _, s := range rs {
		_, err := s.NewClient().Client.Register(ctx, key, s.NewClient().Disco.Public(), "after", "linux")
		var ae *coordclient.APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized || ae.Message != "auth key revoked" {
			t.Fatalf("registration with a revoked key on %s: %v", s.URL(), err)
		}
	}
	if keys, _ := b.AuthKeys(ctx); keys[0].Revoked.IsZero() {
		t.Fatal("auth key list does not show the revocation")
	}
}

// TestDatabaseUnavailable stops PostgreSQL under a replica: streams stay
// up, writes fail with a clear 503, and everything works again once it is
// back.
func TestDatabaseUnavailable(t *testing.T) {
	pg := pgtest.Start(t)
	rs := startReplicas(t, pg.NewDatabase(t), 2)
	a, b := rs[0], rs[1]
	ctx := context.Background()
	key := a.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	n1 := a.Register(t, key, "one")
	n2 := b.Register(t, key, "two")
	w1 := watch(t, n1, netmap.MapRequest{})
	w1.waitFor("one sees two", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("two"); return ok })
	// b hears of one through the database (NOTIFY, then a row read): it
	// must have before the database goes, or it cannot serve one below.
	w2up := watch(t, on(b, n2), netmap.MapRequest{})
	w2up.waitFor("two sees one through b", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("one"); return ok })
	w2up.stop()

	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	_, err := a.NewClient().Client.Register(ctx, key, a.NewClient().Disco.Public(), "down", "linux")
	var ae *coordclient.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Fatalf("registration with the database down: %v", err)
	}
	if _, err := a.CreateAuthKey(ctx, coordinator.AuthKeyRequest{}); err == nil {
		t.Fatal("auth key created with the database down")
	}
	ep := []netip.AddrPort{netip.MustParseAddrPort("198.18.0.7:41641")}
	if err := on(b, n2).Client.Update(ctx, netmap.UpdateRequest{Endpoints: &ep}); !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Fatalf("update with the database down: %v", err)
	}
	// A node may still (re)open its stream: it is served from memory.
	w2 := watch(t, on(b, n2), netmap.MapRequest{})
	w2.waitFor("two streams from b with the database down", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("one"); return ok })
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	// Writes work again; a change through b reaches a's stream once the
	// listener has reconnected.
	n3 := b.Register(t, key, "three")
	_ = n3
	w1.waitFor("one sees three, registered after the outage through b", func(nm *netmap.NetworkMap) bool {
		_, ok := nm.PeerByName("three")
		return ok
	})
	if err := on(b, n2).Client.Update(ctx, netmap.UpdateRequest{Endpoints: &ep}); err != nil {
		t.Fatalf("update after the outage: %v", err)
	}
	w1.waitFor("two's endpoint after the outage", func(nm *netmap.NetworkMap) bool {
		p, _ := nm.PeerByName("two")
		return slices.Equal(p.Endpoints, ep)
	})
}

// TestConcurrentRegistrationsOnTwoReplicas registers through both
// replicas at once: replicas pick addresses without asking each other, so
// they collide, and every registration must still succeed with an address
// of its own.
func TestConcurrentRegistrationsOnTwoReplicas(t *testing.T) {
	pg := pgtest.Start(t)
	rs := startReplicas(t, pg.NewDatabase(t), 2)
	key := rs[0].AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	const n = 300
	ips := make([]netip.Prefix, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 48)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			s := rs[i%2]
			c := s.NewClient()
			resp, err := c.Client.Register(context.Background(), key, c.Disco.Public(), fmt.Sprintf("n%d", i), "linux")
			if err != nil {
				errs[i] = err
				return
			}
			ips[i] = resp.Node.Addresses[0]
		}()
	}
	wg.Wait()
	seen := map[netip.Prefix]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("registration %d: %v", i, errs[i])
		}
		if seen[ips[i]] {
			t.Fatalf("address %v given twice", ips[i])
		}
		seen[ips[i]] = true
	}
}

// TestReplicasDNS: DNS settings set through one replica reach the streams
// held by the other, and a replica started later loads them.
func TestReplicasDNS(t *testing.T) {
	pg := pgtest.Start(t)
	url := pg.NewDatabase(t)
	rs := startReplicas(t, url, 2)
	a, b := rs[0], rs[1]
	ctx := context.Background()
	n := b.Register(t, a.AuthKey(t, coordinator.AuthKeyRequest{}), "one")
	w := watch(t, n, netmap.MapRequest{}) // on b
	w.waitFor("the default settings", func(nm *netmap.NetworkMap) bool { return nm.DNS.Domain == coordinator.DefaultDNSDomain })
	start := time.Now()
	if err := a.SetDNSText(ctx, []byte(`{"domain": "corp.mesh", "split": {"corp.test": ["198.18.0.54"]}}`)); err != nil {
		t.Fatal(err)
	}
	w.waitFor("settings set on a, on b's stream", func(nm *netmap.NetworkMap) bool {
		return nm.DNS.Domain == "corp.mesh" && len(nm.DNS.Split["corp.test"]) == 1
	})
	t.Logf("dns set on one replica to a stream on the other: %v", time.Since(start))
	if f := w.lastDNSFrame(); f == nil || f.Full {
		t.Errorf("settings arrived in %+v, want a delta frame", f)
	}
	if d := b.DNS(); d.Domain != "corp.mesh" {
		t.Fatalf("settings in force on b: %+v", d)
	}
	c := startReplicas(t, url, 1)[0]
	if d := c.DNS(); d.Domain != "corp.mesh" {
		t.Fatalf("settings on a replica started later: %+v", d)
	}
}

// TestRevocationReachesRelaysOfEveryReplica: a node deleted through one
// replica is in the revocation list a relay polls on the other.
func TestRevocationReachesRelaysOfEveryReplica(t *testing.T) {
	pg := pgtest.Start(t)
	rs := startReplicas(t, pg.NewDatabase(t), 2)
	a, b := rs[0], rs[1]
	ctx := context.Background()
	jk, err := b.CreateJoinKey(ctx, "nyc", "")
	if err != nil {
		t.Fatal(err)
	}
	rc, _, err := coordclient.JoinRelay(ctx, b.URL(), jk, key.NewRelay(),
		netmap.RelayJoinRequest{Region: "nyc", PublicAddr: "198.18.2.1:443", Pin: "sha256/" + strings.Repeat("A", 43)})
	if err != nil {
		t.Fatal(err)
	}
	n := a.Register(t, a.AuthKey(t, coordinator.AuthKeyRequest{}), "doomed")
	if err := a.DeleteNode(ctx, "doomed"); err != nil {
		t.Fatal(err)
	}
	// b's list was empty (sequence 0): the long poll returns once b hears.
	revs, err := rc.Revocations(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range revs.Revoked {
		if r.Key == n.Key.Public() {
			return
		}
	}
	t.Fatalf("relay on b was not told of the node deleted through a: %+v", revs)
}
