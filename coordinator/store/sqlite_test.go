package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
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

// TestGroupCommit registers concurrently: each registration's own outcome
// holds inside the shared transaction (a single-use key is used once, a
// duplicate name fails alone) and everything acknowledged is stored.
func TestGroupCommit(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "c.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	s.CreateAuthKey(ctx, &AuthKey{Hash: "once", Created: now})
	s.CreateAuthKey(ctx, &AuthKey{Hash: "many", Reusable: true, Created: now})
	const n = 200
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, name := "many", fmt.Sprint("n", i)
			switch {
			case i%20 == 0:
				h = "once"
			case i == 7:
				name = "n8" // duplicate of i == 8
			}
			_, errs[i] = s.RegisterNode(ctx, h, now, &Node{Name: name, NodeKey: fmt.Sprint("k", i),
				IP: netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), Created: now})
		}()
	}
	wg.Wait()
	ok, used, conflict := 0, 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrKeyUsed):
			used++
		case errors.Is(err, ErrConflict):
			conflict++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	// 10 tried the single-use key: one won. n7 and n8 share a name: one won.
	if used != 9 || conflict != 1 || ok != n-10 {
		t.Fatalf("ok %d, used %d, conflict %d", ok, used, conflict)
	}
	s.Close()
	if _, err := s.RegisterNode(ctx, "many", now, &Node{Name: "late"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	s, err = OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	snap, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Nodes) != ok {
		t.Fatalf("%d nodes stored, %d acknowledged", len(snap.Nodes), ok)
	}
}

// TestSQLiteFilesPrivate: the database and its WAL and shared-memory files
// hold region mesh secrets; they must be 0600 even under a permissive umask,
// and a file left 0644 by an older version is tightened on open.
func TestSQLiteFilesPrivate(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "coordinator.db")
	check := func(when string) {
		t.Helper()
		s, err := OpenSQLite(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.CreateAuthKey(ctx, &AuthKey{Hash: when, Created: time.Now()}); err != nil {
			t.Fatal(err)
		}
		seen := 0
		for _, f := range []string{path, path + "-wal", path + "-shm"} {
			fi, err := os.Stat(f)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			seen++
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s: %s is %v, want 0600", when, filepath.Base(f), fi.Mode().Perm())
			}
		}
		if seen < 2 {
			t.Fatalf("%s: expected the database and its WAL, found %d files", when, seen)
		}
	}
	check("new")
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		os.Chmod(f, 0o644)
	}
	check("reopened")
}

// TestSQLiteRevocationsAndJoinKeys: revocations survive a reopen with
// their sequence, a lifted one is gone, expired ones are forgotten; join
// keys keep their expiry and can be revoked.
func TestSQLiteRevocationsAndJoinKeys(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "c.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.SetRevocation(ctx, Revocation{NodeKey: "nodekey:a", Until: now.Add(time.Hour)}, 1, now))
	must(s.SetRevocation(ctx, Revocation{NodeKey: "nodekey:b", Until: now.Add(time.Hour)}, 2, now))
	must(s.SetRevocation(ctx, Revocation{NodeKey: "nodekey:old", Until: now.Add(time.Second)}, 3, now))
	must(s.SetRevocation(ctx, Revocation{NodeKey: "nodekey:b"}, 4, now.Add(2*time.Second))) // lifts b, forgets old
	exp := now.Add(24 * time.Hour).Truncate(time.Millisecond)
	k := &JoinKey{Hash: "h1", Region: "nyc", Created: now, Expires: exp}
	must(s.CreateJoinKey(ctx, k, Region{Code: "nyc", MeshSecret: "x"}))
	must(s.RevokeJoinKey(ctx, k.ID))
	if err := s.RevokeJoinKey(ctx, 99); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown join key: %v", err)
	}
	s.Close()
	s, err = OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	snap, err := s.Load(ctx)
	must(err)
	if snap.RevocationSeq != 4 || len(snap.Revocations) != 1 || snap.Revocations[0].NodeKey != "nodekey:a" {
		t.Fatalf("revocations after reopen: seq %d %+v", snap.RevocationSeq, snap.Revocations)
	}
	keys, err := s.JoinKeys(ctx)
	must(err)
	if len(keys) != 1 || !keys[0].Revoked || !keys[0].Expires.Equal(exp) || keys[0].Region != "nyc" {
		t.Fatalf("join keys: %+v", keys)
	}
}
