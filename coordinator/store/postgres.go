package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// Postgres is the Store on a PostgreSQL database that any number of
// coordinator replicas share. It implements Shared.
//
// Durability: a commit returns once PostgreSQL has flushed its WAL
// (synchronous_commit on, the server default), so an acknowledged change
// survives kill -9 of the coordinator and of the database alike.
//
// Replicas: every write announces itself with pg_notify on notifyChannel
// inside its own transaction, so other replicas hear of a change exactly
// when it commits (and never of one rolled back). Listen holds one
// connection of its own; TryLead holds another, on which the jobs advisory
// lock lives, so the lock dies with the replica.
type Postgres struct {
	*sqlStore
	cfg *pgx.ConnConfig
	log *slog.Logger

	leadMu   sync.Mutex // guards leadConn and leading
	leadConn *pgx.Conn  // holds the jobs lock when leading
	leading  bool
}

// Advisory lock keys: arbitrary 64-bit constants, fixed forever, that name
// the two locks in the database's lock table.
const (
	migrateLockKey int64 = 0x776d5f6d69677261 // "wm_migra"
	jobsLockKey    int64 = 0x776d5f6a6f627300 // "wm_jobs"
)

// notifyChannel is the LISTEN/NOTIFY channel replicas share.
const notifyChannel = "wiremesh_changes"

// Connection limits, with reasons.
const (
	// pgMaxConns bounds one replica's pool (plus the listen and lead
	// connections). PostgreSQL's default max_connections is 100: ten
	// replicas fit.
	pgMaxConns = 8
	// pgConnectTimeout bounds one connection attempt when the URL does not
	// say (connect_timeout=N): a database that is down fails requests in
	// seconds rather than hanging them.
	pgConnectTimeout = 5 * time.Second
	// pgKeepAlive is the TCP keep-alive of every connection: idle this
	// long, then probes this often, pgKeepAliveProbes of them. A database
	// host that vanishes (no reset) is noticed in about 20 s, which matters
	// most to the listening connection, which otherwise only reads.
	pgKeepAlive       = 5 * time.Second
	pgKeepAliveProbes = 3
	// leadTimeout bounds one jobs-lock check, so a hung database does not
	// hang the sweeper.
	leadTimeout = 5 * time.Second
	// listenMaxBackoff bounds the pause between reconnections of the
	// listening connection.
	listenMaxBackoff = 5 * time.Second
)

// pgMigrations are applied in order, each once, under migrateLockKey so
// that replicas starting together do not race. Never edit one that has
// shipped: add another.
var pgMigrations = []string{
	// 1 (2026-12-02): initial schema, matching SQLite's migrations 1-3.
	`CREATE TABLE users (name TEXT PRIMARY KEY, created BIGINT NOT NULL);
	INSERT INTO users (name, created) VALUES ('admin@', 0);
	CREATE TABLE nodes (
		id BIGSERIAL PRIMARY KEY,
		name TEXT NOT NULL UNIQUE,
		node_key TEXT NOT NULL UNIQUE,
		disco_key TEXT NOT NULL,
		hostname TEXT NOT NULL,
		os TEXT NOT NULL,
		ip TEXT NOT NULL UNIQUE,
		tags TEXT NOT NULL,
		ephemeral BOOLEAN NOT NULL,
		created BIGINT NOT NULL,
		key_expiry BIGINT NOT NULL,
		last_seen BIGINT NOT NULL,
		endpoints TEXT NOT NULL,
		home_relay TEXT NOT NULL,
		netcheck TEXT,
		authkey_id BIGINT NOT NULL,
		user_name TEXT NOT NULL DEFAULT 'admin@'
	);
	CREATE INDEX nodes_user ON nodes (user_name);
	CREATE TABLE authkeys (
		id BIGSERIAL PRIMARY KEY,
		hash TEXT NOT NULL UNIQUE,
		reusable BOOLEAN NOT NULL,
		ephemeral BOOLEAN NOT NULL,
		tags TEXT NOT NULL,
		expires BIGINT NOT NULL,
		created BIGINT NOT NULL,
		uses INTEGER NOT NULL DEFAULT 0,
		user_name TEXT NOT NULL DEFAULT 'admin@',
		revoked BIGINT NOT NULL DEFAULT 0
	);
	CREATE TABLE regions (
		code TEXT PRIMARY KEY,
		name TEXT NOT NULL,
		lat DOUBLE PRECISION NOT NULL DEFAULT 0,
		lon DOUBLE PRECISION NOT NULL DEFAULT 0,
		mesh_secret TEXT NOT NULL
	);
	CREATE TABLE joinkeys (
		id BIGSERIAL PRIMARY KEY,
		hash TEXT NOT NULL UNIQUE,
		region TEXT NOT NULL REFERENCES regions(code),
		created BIGINT NOT NULL,
		expires BIGINT NOT NULL DEFAULT 0,
		revoked BOOLEAN NOT NULL DEFAULT FALSE
	);
	CREATE TABLE revocations (
		node_key TEXT PRIMARY KEY,
		until BIGINT NOT NULL
	);
	CREATE TABLE relays (
		key TEXT PRIMARY KEY,
		name TEXT NOT NULL UNIQUE,
		region TEXT NOT NULL REFERENCES regions(code),
		addr TEXT NOT NULL,
		pin TEXT NOT NULL,
		joined BIGINT NOT NULL,
		last_heartbeat BIGINT NOT NULL,
		state TEXT NOT NULL DEFAULT ''
	);
	CREATE TABLE policy (
		id INTEGER PRIMARY KEY CHECK (id = 1),
		text TEXT NOT NULL,
		updated BIGINT NOT NULL
	);
	CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
	CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);`,
	// 2 (2026-12-02): the web console's sign-in links and sessions, the
	// interactive logins of nodes, and the audit log (SQLite's 4).
	`CREATE TABLE webtokens (
		hash TEXT PRIMARY KEY, kind TEXT NOT NULL, user_name TEXT NOT NULL, admin BOOLEAN NOT NULL,
		csrf TEXT NOT NULL, created BIGINT NOT NULL, expires BIGINT NOT NULL, used BIGINT NOT NULL DEFAULT 0);
	CREATE TABLE logins (
		code_hash TEXT PRIMARY KEY, node_key TEXT NOT NULL, hostname TEXT NOT NULL, os TEXT NOT NULL,
		created BIGINT NOT NULL, expires BIGINT NOT NULL, approved_by TEXT NOT NULL DEFAULT '',
		approved BIGINT NOT NULL DEFAULT 0, sealed TEXT NOT NULL DEFAULT '');
	CREATE TABLE audit (
		id BIGSERIAL PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL,
		action TEXT NOT NULL, target TEXT NOT NULL);`,
	// 3 (2026-12-02): the DNS settings (`coordinator dns set`), as JSON;
	// SQLite's migration 5.
	`CREATE TABLE dns (
		id INTEGER PRIMARY KEY CHECK (id = 1),
		settings TEXT NOT NULL,
		updated BIGINT NOT NULL
	);`,
	// 4 (2026-12-02): subnet routes and exit nodes, advertised and approved
	// (SQLite's migration 6).
	`ALTER TABLE nodes ADD COLUMN advertised_routes TEXT NOT NULL DEFAULT '[]';
	ALTER TABLE nodes ADD COLUMN approved_routes TEXT NOT NULL DEFAULT '[]';`,
}

var pgDialect = &dialect{
	name:       "postgres",
	migrations: pgMigrations,
	dollar:     true,
	greatest:   "GREATEST",
	forUpdate:  " FOR UPDATE",
	lockMigrations: func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, migrateLockKey)
		return err
	},
	isUnique: func(err error) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && pe.Code == "23505"
	},
	// Constraints are named TABLE_COLUMN_key by CREATE TABLE.
	conflictColumn: func(err error) string {
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			return ""
		}
		c := strings.TrimSuffix(pe.ConstraintName, "_key")
		if i := strings.IndexByte(c, '_'); i >= 0 {
			return c[i+1:]
		}
		return c
	},
	unavailable: pgUnavailable,
	retryable: func(err error) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
	},
	notify: func(ctx context.Context, tx *sql.Tx, c Change) error {
		b, _ := json.Marshal(c)
		_, err := tx.ExecContext(ctx, `SELECT pg_notify($1, $2)`, notifyChannel, string(b))
		return err
	},
}

// pgUnavailable reports whether err is a failure to reach the database
// rather than the database refusing a statement.
func pgUnavailable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		// Class 08: connection exception; 57P0x: the server is shutting
		// down, crashed, or not yet accepting connections.
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57P0")
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded) ||
		pgconn.Timeout(err) || strings.Contains(err.Error(), "conn closed")
}

// IsPostgresURL reports whether url names a PostgreSQL database.
func IsPostgresURL(url string) bool {
	return strings.HasPrefix(url, "postgres://") || strings.HasPrefix(url, "postgresql://")
}

// OpenPostgres connects to the database at url (postgres://...), applies
// every pending migration and returns the store. log receives the
// listener's reconnections.
func OpenPostgres(ctx context.Context, url string, log *slog.Logger) (*Postgres, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("--db: %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = pgConnectTimeout
	}
	dialer := &net.Dialer{KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: pgKeepAlive, Interval: pgKeepAlive, Count: pgKeepAliveProbes}}
	cfg.DialFunc = dialer.DialContext
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(pgMaxConns)
	db.SetMaxIdleConns(pgMaxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	var id [6]byte
	rand.Read(id[:])
	s, err := newSQLStore(ctx, pgDialect, db, hex.EncodeToString(id[:]))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres %s@%s:%d/%s: %w", cfg.User, cfg.Host, cfg.Port, cfg.Database, err)
	}
	return &Postgres{sqlStore: s, cfg: cfg, log: log}, nil
}

// ReplicaID implements Shared.
func (p *Postgres) ReplicaID() string { return p.origin }

// Publish implements Shared.
func (p *Postgres) Publish(ctx context.Context, c Change) error {
	c.Origin = p.origin
	b, _ := json.Marshal(c)
	_, err := p.db.ExecContext(ctx, `SELECT pg_notify($1, $2)`, notifyChannel, string(b))
	return p.wrap("publish", err)
}

// Listen implements Shared.
func (p *Postgres) Listen(ctx context.Context, fn func(Change)) error {
	backoff := 100 * time.Millisecond
	for {
		err := p.listenOnce(ctx, fn, func() { backoff = 100 * time.Millisecond })
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fn(Change{Kind: ChangeLost})
		p.log.Warn("database change listener lost; reconnecting", "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(backoff*2, listenMaxBackoff)
	}
}

func (p *Postgres) listenOnce(ctx context.Context, fn func(Change), connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, p.cfg.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return err
	}
	connected()
	fn(Change{Kind: ChangeResync})
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		var c Change
		if json.Unmarshal([]byte(n.Payload), &c) != nil || c.Origin == p.origin {
			continue
		}
		fn(c)
	}
}

// TryLead implements Shared. One connection of its own is kept open,
// leading or not: the lock lives on it, and a replica that waits tries
// again on it rather than connecting every time.
func (p *Postgres) TryLead(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, leadTimeout)
	defer cancel()
	p.leadMu.Lock()
	defer p.leadMu.Unlock()
	if p.leadConn == nil {
		conn, err := pgx.ConnectConfig(ctx, p.cfg.Copy())
		if err != nil {
			return false, p.wrap("jobs lock", err)
		}
		p.leadConn, p.leading = conn, false
	}
	var err error
	if p.leading {
		// Still leading while the connection holding the lock is alive.
		err = p.leadConn.Ping(ctx)
	} else {
		err = p.leadConn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, jobsLockKey).Scan(&p.leading)
	}
	if err != nil {
		p.leadConn.Close(context.Background())
		p.leadConn, p.leading = nil, false
		return false, p.wrap("jobs lock", err)
	}
	return p.leading, nil
}

// Close releases the jobs lock and closes the store.
func (p *Postgres) Close() error {
	p.leadMu.Lock()
	if p.leadConn != nil {
		p.leadConn.Close(context.Background())
		p.leadConn, p.leading = nil, false
	}
	p.leadMu.Unlock()
	return p.sqlStore.Close()
}

var _ Shared = (*Postgres)(nil)
