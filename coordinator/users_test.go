package coordinator_test

import (
	"context"
	"errors"
	"testing"

	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/coordinator/policy"
	"github.com/wiremesh/wiremesh/netmap"
)

// TestUserSelectorsGrantAndDeny: users in groups, src and dst decide who
// sees whom and what each node's filter admits, exactly as written.
func TestUserSelectorsGrantAndDeny(t *testing.T) {
	s := coordtest.Start(t)
	ctx := context.Background()
	for _, u := range []string{"alice@example.com", "bob@example.com", "carol@example.com"} {
		if err := s.CreateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	reg := func(user, host string) *coordtest.Node {
		return s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{User: user}), host)
	}
	alice, bob, carol := reg("alice@example.com", "alice-laptop"), reg("bob@example.com", "bob-desk"), reg("carol@example.com", "carol-phone")
	srv := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Tags: []string{"tag:srv"}}), "srv")
	if srv.Self.Name != "srv" {
		t.Fatal(srv.Self.Name)
	}
	pol := `{
		"groups": {"group:eng": ["alice@example.com", "bob@example.com"]},
		"tagOwners": {"tag:srv": []},
		"acls": [
			{"action": "accept", "src": ["group:eng"], "dst": ["tag:srv:22"]},
			{"action": "accept", "src": ["carol@example.com"], "dst": ["alice@example.com:8080"]},
		],
		"tests": [
			{"src": "alice@example.com", "accept": ["srv:22"], "deny": ["srv:80", "bob-desk:8080"]},
			{"src": "carol@example.com", "accept": ["alice-laptop:8080"], "deny": ["srv:22"]},
		],
	}`
	if err := s.SetPolicy(ctx, []byte(pol)); err != nil {
		t.Fatal(err)
	}
	wAlice, wBob, wCarol, wSrv := watch(t, alice, netmap.MapRequest{}), watch(t, bob, netmap.MapRequest{}), watch(t, carol, netmap.MapRequest{}), watch(t, srv, netmap.MapRequest{})
	names := func(nm *netmap.NetworkMap) map[string]bool {
		m := map[string]bool{}
		for _, p := range nm.Peers {
			m[p.Name] = true
		}
		return m
	}
	wAlice.waitFor("alice sees srv and carol only", func(nm *netmap.NetworkMap) bool {
		n := names(nm)
		return len(n) == 2 && n["srv"] && n["carol-phone"]
	})
	wBob.waitFor("bob sees srv only", func(nm *netmap.NetworkMap) bool { n := names(nm); return len(n) == 1 && n["srv"] })
	wCarol.waitFor("carol sees alice only", func(nm *netmap.NetworkMap) bool { n := names(nm); return len(n) == 1 && n["alice-laptop"] })
	nm := wSrv.waitFor("srv admits alice and bob on 22", func(nm *netmap.NetworkMap) bool {
		return len(nm.Filter.Rules) == 1 && len(nm.Filter.Rules[0].SrcIPs) == 2
	})
	if r := nm.Filter.Rules[0]; r.DstPorts[0].First != 22 || r.DstPorts[0].Last != 22 {
		t.Fatalf("srv's filter: %+v", nm.Filter)
	}
	for _, ip := range nm.Filter.Rules[0].SrcIPs {
		if ip != alice.Self.Addresses[0] && ip != bob.Self.Addresses[0] {
			t.Fatalf("srv admits %v, not one of alice's or bob's", ip)
		}
	}
	nm = wAlice.waitFor("alice admits carol on 8080", func(nm *netmap.NetworkMap) bool { return len(nm.Filter.Rules) == 1 })
	if r := nm.Filter.Rules[0]; len(r.SrcIPs) != 1 || r.SrcIPs[0] != carol.Self.Addresses[0] || r.DstPorts[0].First != 8080 {
		t.Fatalf("alice's filter: %+v", nm.Filter)
	}
	wBob.waitFor("bob admits nobody", func(nm *netmap.NetworkMap) bool { return nm.Filter.Rules != nil && len(nm.Filter.Rules) == 0 })

	// A policy test naming a user is checked against the user's nodes.
	bad := `{"acls": [{"action": "accept", "src": ["bob@example.com"], "dst": ["*:22"]}], "tests": [{"src": "alice@example.com", "accept": ["bob-desk:22"]}]}`
	if err := s.SetPolicy(ctx, []byte(bad)); !errors.Is(err, policy.ErrTestFailed) {
		t.Fatalf("a failing user test: %v", err)
	}

	// Deleting alice with --force takes her node off every stream.
	if _, err := s.DeleteUser(ctx, "alice@example.com", false); err == nil {
		t.Fatal("deleted a user who owns a node")
	}
	if n, err := s.DeleteUser(ctx, "alice@example.com", true); err != nil || n != 1 {
		t.Fatalf("forced delete: %d, %v", n, err)
	}
	wCarol.waitFor("alice gone from carol's map", func(nm *netmap.NetworkMap) bool { return len(nm.Peers) == 0 })
	wSrv.waitFor("alice gone from srv's filter", func(nm *netmap.NetworkMap) bool {
		return len(nm.Filter.Rules) == 1 && len(nm.Filter.Rules[0].SrcIPs) == 1 && nm.Filter.Rules[0].SrcIPs[0] == bob.Self.Addresses[0]
	})
	if err := wAlice.waitEnd(); err == nil {
		t.Fatal("a deleted user's node kept its stream")
	}
}
