package store

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestSQLiteMigratesV1 opens a database written by the first schema: its
// nodes and keys gain owners (admin@, or none for tagged ones).
func TestSQLiteMigratesV1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "c.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)`,
		sqliteMigrations[0],
		`INSERT INTO schema_migrations VALUES (1, 0)`,
		`INSERT INTO nodes (name, node_key, disco_key, hostname, os, ip, tags, ephemeral, created, key_expiry, last_seen, endpoints, home_relay, authkey_id)
			VALUES ('a', 'nodekey:a', '', '', '', '100.64.0.1', 'null', 0, 0, 0, 0, '[]', '', 1),
			       ('t', 'nodekey:t', '', '', '', '100.64.0.2', '["tag:x"]', 0, 0, 0, 0, '[]', '', 2)`,
		`INSERT INTO authkeys (hash, reusable, ephemeral, tags, expires, created) VALUES ('h', 0, 0, 'null', 0, 0)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, _ := s.SchemaVersion(ctx); v != len(sqliteMigrations) {
		t.Fatalf("schema %d, want %d", v, len(sqliteMigrations))
	}
	snap, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Nodes) != 2 || snap.Nodes[0].User != AdminUser || snap.Nodes[1].User != "" {
		t.Fatalf("migrated nodes: %+v", snap.Nodes)
	}
	keys, _ := s.AuthKeys(ctx)
	if len(keys) != 1 || keys[0].User != AdminUser || !keys[0].Revoked.IsZero() {
		t.Fatalf("migrated keys: %+v", keys)
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

// TestSQLiteOddPath: a path with URI syntax in it opens that very file.
func TestSQLiteOddPath(t *testing.T) {
	top := t.TempDir()
	dir := filepath.Join(top, "seed#2?x=1%41")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "c.db")
	s, err := OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("database not at %s: %v", path, err)
	}
	if _, err := os.Stat(filepath.Join(top, "seed")); err == nil {
		t.Fatal("opened a file at the path cut at '#'")
	}
	if v, err := s.SchemaVersion(context.Background()); err != nil || v != len(sqliteMigrations) {
		t.Fatalf("schema %d, %v", v, err)
	}
}
