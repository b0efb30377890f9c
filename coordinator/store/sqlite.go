package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// SQLite is the Store on an embedded SQLite database in WAL mode, owned by
// one coordinator.
//
// Durability: synchronous=FULL makes every commit fsync the WAL, so an
// acknowledged change survives kill -9 and power loss alike.
type SQLite struct{ *sqlStore }

// sqliteMigrations are applied in order, each once, in its own transaction.
// Never edit one that has shipped: add another.
var sqliteMigrations = []string{
	// 1 (2026-11-25): initial schema.
	`CREATE TABLE nodes (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		name TEXT NOT NULL UNIQUE,
		node_key TEXT NOT NULL UNIQUE,
		disco_key TEXT NOT NULL,
		hostname TEXT NOT NULL,
		os TEXT NOT NULL,
		ip TEXT NOT NULL UNIQUE,
		tags TEXT NOT NULL,
		ephemeral INTEGER NOT NULL,
		created INTEGER NOT NULL,
		key_expiry INTEGER NOT NULL,
		last_seen INTEGER NOT NULL,
		endpoints TEXT NOT NULL,
		home_relay TEXT NOT NULL,
		netcheck TEXT,
		authkey_id INTEGER NOT NULL
	);
	CREATE TABLE authkeys (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		hash TEXT NOT NULL UNIQUE,
		reusable INTEGER NOT NULL,
		ephemeral INTEGER NOT NULL,
		tags TEXT NOT NULL,
		expires INTEGER NOT NULL,
		created INTEGER NOT NULL,
		uses INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE regions (
		code TEXT PRIMARY KEY,
		name TEXT NOT NULL,
		lat REAL NOT NULL DEFAULT 0,
		lon REAL NOT NULL DEFAULT 0,
		mesh_secret TEXT NOT NULL
	);
	CREATE TABLE joinkeys (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		hash TEXT NOT NULL UNIQUE,
		region TEXT NOT NULL REFERENCES regions(code),
		created INTEGER NOT NULL
	);
	CREATE TABLE relays (
		key TEXT PRIMARY KEY,
		name TEXT NOT NULL UNIQUE,
		region TEXT NOT NULL REFERENCES regions(code),
		addr TEXT NOT NULL,
		pin TEXT NOT NULL,
		joined INTEGER NOT NULL,
		last_heartbeat INTEGER NOT NULL
	);
	CREATE TABLE policy (
		id INTEGER PRIMARY KEY CHECK (id = 1),
		text TEXT NOT NULL,
		updated INTEGER NOT NULL
	);
	CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);`,
	// 2 (2026-12-02): revoked node keys, and join key expiry and revocation.
	`CREATE TABLE revocations (
		node_key TEXT PRIMARY KEY,
		until INTEGER NOT NULL
	);
	ALTER TABLE joinkeys ADD COLUMN expires INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE joinkeys ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0;`,
	// 3 (2026-12-02): users own nodes and keys; keys can be revoked; relay
	// states are stored; secrets (used by shared engines only).
	`CREATE TABLE users (name TEXT PRIMARY KEY, created INTEGER NOT NULL);
	INSERT INTO users (name, created) VALUES ('admin@', 0);
	ALTER TABLE nodes ADD COLUMN user_name TEXT NOT NULL DEFAULT 'admin@';
	UPDATE nodes SET user_name = '' WHERE tags NOT IN ('null', '[]');
	CREATE INDEX nodes_user ON nodes (user_name);
	ALTER TABLE authkeys ADD COLUMN user_name TEXT NOT NULL DEFAULT 'admin@';
	UPDATE authkeys SET user_name = '' WHERE tags NOT IN ('null', '[]');
	ALTER TABLE authkeys ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE relays ADD COLUMN state TEXT NOT NULL DEFAULT '';
	CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);`,
	// 4 (2026-12-02): the web console's sign-in links and sessions, the
	// interactive logins of nodes, and the audit log.
	`CREATE TABLE webtokens (
		hash TEXT PRIMARY KEY, kind TEXT NOT NULL, user_name TEXT NOT NULL, admin INTEGER NOT NULL,
		csrf TEXT NOT NULL, created INTEGER NOT NULL, expires INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0);
	CREATE TABLE logins (
		code_hash TEXT PRIMARY KEY, node_key TEXT NOT NULL, hostname TEXT NOT NULL, os TEXT NOT NULL,
		created INTEGER NOT NULL, expires INTEGER NOT NULL, approved_by TEXT NOT NULL DEFAULT '',
		approved INTEGER NOT NULL DEFAULT 0, sealed TEXT NOT NULL DEFAULT '');
	CREATE TABLE audit (
		id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, actor TEXT NOT NULL,
		action TEXT NOT NULL, target TEXT NOT NULL);`,
	// 5 (2026-12-02): the DNS settings (`coordinator dns set`), as JSON.
	`CREATE TABLE dns (
		id INTEGER PRIMARY KEY CHECK (id = 1),
		settings TEXT NOT NULL,
		updated INTEGER NOT NULL
	);`,
	// 6 (2026-12-02): subnet routes and exit nodes, advertised and approved.
	`ALTER TABLE nodes ADD COLUMN advertised_routes TEXT NOT NULL DEFAULT '[]';
	ALTER TABLE nodes ADD COLUMN approved_routes TEXT NOT NULL DEFAULT '[]';`,
}

var sqliteDialect = &dialect{
	name:       "sqlite",
	migrations: sqliteMigrations,
	greatest:   "MAX",
	isUnique: func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
	},
	// "UNIQUE constraint failed: nodes.ip"
	conflictColumn: func(err error) string {
		msg := err.Error()
		if i := strings.LastIndex(msg, "UNIQUE constraint failed: "); i >= 0 {
			col := msg[i+len("UNIQUE constraint failed: "):]
			if j := strings.IndexByte(col, '.'); j >= 0 {
				col = col[j+1:]
			}
			if j := strings.IndexAny(col, " ,)"); j >= 0 {
				col = col[:j]
			}
			return col
		}
		return ""
	},
	// The file is local: there is no connection to lose.
	unavailable: func(error) bool { return false },
	retryable:   func(error) bool { return false },
}

// OpenSQLite opens (creating if needed) the database at path and applies
// every pending migration.
func OpenSQLite(ctx context.Context, path string) (*SQLite, error) {
	// The database holds region mesh secrets and auth key hashes: only the
	// coordinator's user may read it. SQLite creates -wal and -shm with the
	// database file's mode, so the file is made 0600 before SQLite opens
	// it; files left by an older version are tightened too.
	if err := privateFile(path); err != nil {
		return nil, err
	}
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "busy_timeout(10000)", "foreign_keys(1)"} {
		q.Add("_pragma", p)
	}
	// '%', '?' and '#' are escapes, query and fragment in SQLite's URI
	// syntax: unescaped, a path holding one ("seed#2", a fuzz test's
	// temporary directory) would open another file.
	uriPath := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	db, err := sql.Open("sqlite", "file:"+uriPath+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// One connection: SQLite has one writer anyway, and the coordinator
	// reads mostly at start.
	db.SetMaxOpenConns(1)
	s, err := newSQLStore(ctx, sqliteDialect, db, "")
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := os.Chmod(path+suffix, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.Close()
			return nil, fmt.Errorf("database %s: %w", path+suffix, err)
		}
	}
	return &SQLite{s}, nil
}

// privateFile creates path with mode 0600 if it is missing, and sets an
// existing one to 0600.
func privateFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("database %s: %w", path, err)
	}
	f.Close()
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("database %s: %w", path, err)
	}
	return nil
}
