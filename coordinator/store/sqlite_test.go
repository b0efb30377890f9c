package store

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"testing"
	"time"
)

func TestSQLiteRegisterAndReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "c.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	single := &AuthKey{Hash: "h1", Created: now}
	reuse := &AuthKey{Hash: "h2", Reusable: true, Ephemeral: true, Tags: []string{"tag:a"}, Created: now}
	expired := &AuthKey{Hash: "h3", Reusable: true, Expires: now.Add(-time.Second), Created: now}
	for _, k := range []*AuthKey{single, reuse, expired} {
		if err := s.CreateAuthKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(name, ip string) *Node {
		return &Node{Name: name, NodeKey: "nodekey:" + name, DiscoKey: "d", IP: netip.MustParseAddr(ip), Created: now, KeyExpiry: now.Add(time.Hour)}
	}
	a := mk("a", "100.64.0.1")
	if _, err := s.RegisterNode(ctx, "h1", now, a); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RegisterNode(ctx, "h1", now, mk("b", "100.64.0.2")); !errors.Is(err, ErrKeyUsed) {
		t.Fatalf("second use of single-use key: %v", err)
	}
	if _, err := s.RegisterNode(ctx, "h3", now, mk("b", "100.64.0.2")); !errors.Is(err, ErrKeyExpired) {
		t.Fatalf("expired key: %v", err)
	}
	if _, err := s.RegisterNode(ctx, "nope", now, mk("b", "100.64.0.2")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := s.RegisterNode(ctx, "h2", now, mk("a", "100.64.0.3")); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate name: %v", err)
	}
	b := mk("b", "100.64.0.2")
	if _, err := s.RegisterNode(ctx, "h2", now, b); err != nil {
		t.Fatal(err)
	}
	if !b.Ephemeral || len(b.Tags) != 1 {
		t.Fatalf("key properties not applied: %+v", b)
	}
	b.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:41641")}
	b.HomeRelay = "nyc"
	if err := s.UpdateNode(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPolicy(ctx, `{"acls":[]}`, now); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, _ := s.SchemaVersion(ctx); v != len(migrations) {
		t.Fatalf("schema version %d after reopen, want %d", v, len(migrations))
	}
	snap, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Nodes) != 2 || snap.Nodes[0].IP.String() != "100.64.0.1" || snap.Nodes[1].HomeRelay != "nyc" ||
		len(snap.Nodes[1].Endpoints) != 1 || snap.Policy == "" || snap.IPCursor.String() != "100.64.0.2" {
		t.Fatalf("state after reopen: %+v", snap)
	}
	if err := s.DeleteNode(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNode(ctx, a.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}
