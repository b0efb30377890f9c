package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// SQLite is the Store on an embedded SQLite database in WAL mode.
//
// Durability: synchronous=FULL makes every commit fsync the WAL, so an
// acknowledged change survives kill -9 and power loss alike.
//
// Registrations are group-committed: concurrent RegisterNode calls are
// gathered by one committer goroutine into a single transaction (one
// fsync), each inside its own savepoint so that one refused registration
// does not undo the others. Each call still returns only after the commit.
type SQLite struct {
	db     *sql.DB
	regCh  chan *regJob
	stop   chan struct{}
	done   chan struct{}
	closed sync.Once
}

// maxRegBatch bounds one group commit: enough to amortise an fsync over a
// registration burst, small enough that a batch's transaction stays short.
const maxRegBatch = 128

type regJob struct {
	keyHash string
	now     time.Time
	n       *Node
	key     AuthKey
	err     error
	done    chan struct{}
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
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// One connection: SQLite has one writer anyway, and the coordinator
	// reads only at start.
	db.SetMaxOpenConns(1)
	s := &SQLite{db: db, regCh: make(chan *regJob, maxRegBatch), stop: make(chan struct{}), done: make(chan struct{})}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := os.Chmod(path+suffix, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			db.Close()
			return nil, fmt.Errorf("database %s: %w", path+suffix, err)
		}
	}
	go s.runCommitter()
	return s, nil
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

// ErrClosed is returned by calls after Close.
var ErrClosed = errors.New("store closed")

// Close stops the committer and closes the database.
func (s *SQLite) Close() error {
	s.closed.Do(func() {
		close(s.stop)
		<-s.done
	})
	return s.db.Close()
}

// runCommitter group-commits registrations until Close.
func (s *SQLite) runCommitter() {
	defer close(s.done)
	for {
		var batch []*regJob
		select {
		case <-s.stop:
			s.failPending()
			return
		case j := <-s.regCh:
			batch = append(batch, j)
		}
	gather:
		for len(batch) < maxRegBatch {
			select {
			case j := <-s.regCh:
				batch = append(batch, j)
			default:
				break gather
			}
		}
		s.commitBatch(batch)
	}
}

func (s *SQLite) failPending() {
	for {
		select {
		case j := <-s.regCh:
			j.err = ErrClosed
			close(j.done)
		default:
			return
		}
	}
}

func (s *SQLite) commitBatch(batch []*regJob) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var cursor string
		for _, j := range batch {
			if _, err := tx.ExecContext(ctx, `SAVEPOINT reg`); err != nil {
				return err
			}
			insert := j.n.ID == 0
			j.key, j.err = registerInTx(ctx, tx, j.keyHash, j.now, j.n)
			if j.err != nil {
				if _, err := tx.ExecContext(ctx, `ROLLBACK TO reg`); err != nil {
					return err
				}
			} else if insert {
				cursor = j.n.IP.String()
			}
			if _, err := tx.ExecContext(ctx, `RELEASE reg`); err != nil {
				return err
			}
		}
		if cursor == "" {
			return nil
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO meta (k, v) VALUES ('ip_cursor', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`, cursor)
		return err
	})
	for _, j := range batch {
		if err != nil && j.err == nil {
			j.err = fmt.Errorf("register node: %w", err)
		}
		close(j.done)
	}
}

// migrations are applied in order, each once, in its own transaction. Never
// edit one that has shipped: add another.
var migrations = []string{
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
}

func (s *SQLite) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)`); err != nil {
		return err
	}
	var have int
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return err
	}
	if have > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this binary knows (%d)", have, len(migrations))
	}
	for v := have + 1; v <= len(migrations); v++ {
		err := s.tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
				return fmt.Errorf("migration %d: %w", v, err)
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied) VALUES (?, ?)`, v, time.Now().Unix())
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// SchemaVersion returns the applied migration count.
func (s *SQLite) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

func (s *SQLite) tx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v)
}

func jsonText(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func isUnique(err error) bool {
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}

// Load implements Store.
func (s *SQLite) Load(ctx context.Context) (*Snapshot, error) {
	snap := &Snapshot{}
	rows, err := s.db.QueryContext(ctx, `SELECT id, name, node_key, disco_key, hostname, os, ip, tags, ephemeral,
		created, key_expiry, last_seen, endpoints, home_relay, netcheck, authkey_id FROM nodes ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("load nodes: %w", err)
	}
	for rows.Next() {
		var n Node
		var ip, tags, eps string
		var created, exp, seen int64
		var nc sql.NullString
		if err := rows.Scan(&n.ID, &n.Name, &n.NodeKey, &n.DiscoKey, &n.Hostname, &n.OS, &ip, &tags, &n.Ephemeral,
			&created, &exp, &seen, &eps, &n.HomeRelay, &nc, &n.AuthKeyID); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load nodes: %w", err)
		}
		if n.IP, err = netip.ParseAddr(ip); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load node %s: ip %q: %w", n.Name, ip, err)
		}
		json.Unmarshal([]byte(tags), &n.Tags)
		json.Unmarshal([]byte(eps), &n.Endpoints)
		if nc.Valid {
			n.Netcheck = []byte(nc.String)
		}
		n.Created, n.KeyExpiry, n.LastSeen = fromMS(created), fromMS(exp), fromMS(seen)
		snap.Nodes = append(snap.Nodes, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load nodes: %w", err)
	}

	rows, err = s.db.QueryContext(ctx, `SELECT code, name, lat, lon, mesh_secret FROM regions ORDER BY code`)
	if err != nil {
		return nil, fmt.Errorf("load regions: %w", err)
	}
	for rows.Next() {
		var r Region
		if err := rows.Scan(&r.Code, &r.Name, &r.Lat, &r.Lon, &r.MeshSecret); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load regions: %w", err)
		}
		snap.Regions = append(snap.Regions, r)
	}
	rows.Close()

	rows, err = s.db.QueryContext(ctx, `SELECT key, name, region, addr, pin, joined, last_heartbeat FROM relays ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("load relays: %w", err)
	}
	for rows.Next() {
		var r Relay
		var joined, hb int64
		if err := rows.Scan(&r.Key, &r.Name, &r.Region, &r.Addr, &r.Pin, &joined, &hb); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load relays: %w", err)
		}
		r.Joined, r.LastHeartbeat = fromMS(joined), fromMS(hb)
		snap.Relays = append(snap.Relays, r)
	}
	rows.Close()

	err = s.db.QueryRowContext(ctx, `SELECT text FROM policy WHERE id = 1`).Scan(&snap.Policy)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	rows, err = s.db.QueryContext(ctx, `SELECT node_key, until FROM revocations WHERE until >= ? ORDER BY node_key`, ms(time.Now()))
	if err != nil {
		return nil, fmt.Errorf("load revocations: %w", err)
	}
	for rows.Next() {
		var r Revocation
		var until int64
		if err := rows.Scan(&r.NodeKey, &until); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load revocations: %w", err)
		}
		r.Until = fromMS(until)
		snap.Revocations = append(snap.Revocations, r)
	}
	rows.Close()
	var seq string
	err = s.db.QueryRowContext(ctx, `SELECT v FROM meta WHERE k = 'revocation_seq'`).Scan(&seq)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("load meta: %w", err)
	}
	if seq != "" {
		if snap.RevocationSeq, err = strconv.ParseUint(seq, 10, 64); err != nil {
			return nil, fmt.Errorf("load meta: revocation_seq %q: %w", seq, err)
		}
	}
	var cur string
	err = s.db.QueryRowContext(ctx, `SELECT v FROM meta WHERE k = 'ip_cursor'`).Scan(&cur)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("load meta: %w", err)
	}
	if cur != "" {
		snap.IPCursor, _ = netip.ParseAddr(cur)
	}
	return snap, nil
}

// CreateAuthKey implements Store.
func (s *SQLite) CreateAuthKey(ctx context.Context, k *AuthKey) error {
	res, err := s.db.ExecContext(ctx, `INSERT INTO authkeys (hash, reusable, ephemeral, tags, expires, created) VALUES (?, ?, ?, ?, ?, ?)`,
		k.Hash, k.Reusable, k.Ephemeral, jsonText(k.Tags), ms(k.Expires), ms(k.Created))
	if err != nil {
		if isUnique(err) {
			return ErrConflict
		}
		return fmt.Errorf("create auth key: %w", err)
	}
	k.ID, _ = res.LastInsertId()
	return nil
}

// AuthKeyByHash implements Store.
func (s *SQLite) AuthKeyByHash(ctx context.Context, hash string) (AuthKey, error) {
	var k AuthKey
	var tags string
	var exp, created int64
	err := s.db.QueryRowContext(ctx, `SELECT id, hash, reusable, ephemeral, tags, expires, created, uses FROM authkeys WHERE hash = ?`, hash).
		Scan(&k.ID, &k.Hash, &k.Reusable, &k.Ephemeral, &tags, &exp, &created, &k.Uses)
	if errors.Is(err, sql.ErrNoRows) {
		return k, ErrNotFound
	}
	if err != nil {
		return k, fmt.Errorf("look up auth key: %w", err)
	}
	json.Unmarshal([]byte(tags), &k.Tags)
	k.Expires, k.Created = fromMS(exp), fromMS(created)
	return k, nil
}

// RegisterNode implements Store. It waits for the group commit that
// carries it.
func (s *SQLite) RegisterNode(ctx context.Context, keyHash string, now time.Time, n *Node) (AuthKey, error) {
	j := &regJob{keyHash: keyHash, now: now, n: n, done: make(chan struct{})}
	select {
	case <-s.stop:
		return AuthKey{}, ErrClosed
	default:
	}
	select {
	case s.regCh <- j:
	case <-s.stop:
		return AuthKey{}, ErrClosed
	case <-ctx.Done():
		return AuthKey{}, ctx.Err()
	}
	// Once queued the job is committed or refused; wait for the outcome
	// even if ctx ends, so the caller never misreads a committed node. If
	// the committer has exited without taking it (Close raced), it never
	// will.
	select {
	case <-j.done:
	case <-s.done:
		select {
		case <-j.done:
		default:
			return AuthKey{}, ErrClosed
		}
	}
	return j.key, j.err
}

// registerInTx is one registration inside a group commit's savepoint.
func registerInTx(ctx context.Context, tx *sql.Tx, keyHash string, now time.Time, n *Node) (AuthKey, error) {
	var k AuthKey
	var tags string
	var exp, created int64
	err := tx.QueryRowContext(ctx, `SELECT id, hash, reusable, ephemeral, tags, expires, created, uses FROM authkeys WHERE hash = ?`, keyHash).
		Scan(&k.ID, &k.Hash, &k.Reusable, &k.Ephemeral, &tags, &exp, &created, &k.Uses)
	if errors.Is(err, sql.ErrNoRows) {
		return k, ErrNotFound
	}
	if err != nil {
		return k, fmt.Errorf("register node: %w", err)
	}
	json.Unmarshal([]byte(tags), &k.Tags)
	k.Expires, k.Created = fromMS(exp), fromMS(created)
	if !k.Expires.IsZero() && !now.Before(k.Expires) {
		return k, ErrKeyExpired
	}
	if !k.Reusable && k.Uses > 0 {
		return k, ErrKeyUsed
	}
	if _, err := tx.ExecContext(ctx, `UPDATE authkeys SET uses = uses + 1 WHERE id = ?`, k.ID); err != nil {
		return k, fmt.Errorf("register node: %w", err)
	}
	n.Tags, n.Ephemeral, n.AuthKeyID = k.Tags, k.Ephemeral, k.ID
	if n.ID != 0 {
		_, err = tx.ExecContext(ctx, `UPDATE nodes SET disco_key = ?, hostname = ?, os = ?, tags = ?, ephemeral = ?, key_expiry = ?, authkey_id = ? WHERE id = ?`,
			n.DiscoKey, n.Hostname, n.OS, jsonText(n.Tags), n.Ephemeral, ms(n.KeyExpiry), n.AuthKeyID, n.ID)
		if err != nil {
			return k, fmt.Errorf("register node: %w", err)
		}
		return k, nil
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO nodes (name, node_key, disco_key, hostname, os, ip, tags, ephemeral, created,
		key_expiry, last_seen, endpoints, home_relay, netcheck, authkey_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)`,
		n.Name, n.NodeKey, n.DiscoKey, n.Hostname, n.OS, n.IP.String(), jsonText(n.Tags), n.Ephemeral, ms(n.Created),
		ms(n.KeyExpiry), ms(n.LastSeen), jsonText(n.Endpoints), n.HomeRelay, n.AuthKeyID)
	if err != nil {
		if isUnique(err) {
			return k, ErrConflict
		}
		return k, fmt.Errorf("register node: %w", err)
	}
	n.ID, _ = res.LastInsertId()
	return k, nil
}

// UpdateNode implements Store.
func (s *SQLite) UpdateNode(ctx context.Context, n *Node) error {
	var nc any
	if n.Netcheck != nil {
		nc = string(n.Netcheck)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE nodes SET disco_key = ?, key_expiry = ?, last_seen = ?, endpoints = ?, home_relay = ?, netcheck = ? WHERE id = ?`,
		n.DiscoKey, ms(n.KeyExpiry), ms(n.LastSeen), jsonText(n.Endpoints), n.HomeRelay, nc, n.ID)
	if err != nil {
		return fmt.Errorf("update node %s: %w", n.Name, err)
	}
	if c, _ := res.RowsAffected(); c == 0 {
		return ErrNotFound
	}
	return nil
}

// DeleteNode implements Store.
func (s *SQLite) DeleteNode(ctx context.Context, id int64) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM nodes WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete node %d: %w", id, err)
	}
	if c, _ := res.RowsAffected(); c == 0 {
		return ErrNotFound
	}
	return nil
}

// CreateJoinKey implements Store.
func (s *SQLite) CreateJoinKey(ctx context.Context, k *JoinKey, r Region) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO regions (code, name, lat, lon, mesh_secret) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT(code) DO UPDATE SET name = CASE WHEN excluded.name != '' THEN excluded.name ELSE regions.name END`,
			r.Code, r.Name, r.Lat, r.Lon, r.MeshSecret)
		if err != nil {
			return fmt.Errorf("create region %s: %w", r.Code, err)
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO joinkeys (hash, region, created, expires) VALUES (?, ?, ?, ?)`, k.Hash, k.Region, ms(k.Created), ms(k.Expires))
		if err != nil {
			return fmt.Errorf("create join key: %w", err)
		}
		k.ID, _ = res.LastInsertId()
		return nil
	})
}

// JoinKeyByHash implements Store.
func (s *SQLite) JoinKeyByHash(ctx context.Context, hash string) (JoinKey, error) {
	k, err := scanJoinKey(s.db.QueryRowContext(ctx, `SELECT `+joinKeyCols+` FROM joinkeys WHERE hash = ?`, hash))
	if errors.Is(err, sql.ErrNoRows) {
		return k, ErrNotFound
	}
	if err != nil {
		return k, fmt.Errorf("look up join key: %w", err)
	}
	return k, nil
}

const joinKeyCols = `id, hash, region, created, expires, revoked`

func scanJoinKey(row interface{ Scan(...any) error }) (JoinKey, error) {
	var k JoinKey
	var created, expires int64
	err := row.Scan(&k.ID, &k.Hash, &k.Region, &created, &expires, &k.Revoked)
	k.Created, k.Expires = fromMS(created), fromMS(expires)
	return k, err
}

// JoinKeys implements Store.
func (s *SQLite) JoinKeys(ctx context.Context) ([]JoinKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+joinKeyCols+` FROM joinkeys ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list join keys: %w", err)
	}
	defer rows.Close()
	var out []JoinKey
	for rows.Next() {
		k, err := scanJoinKey(rows)
		if err != nil {
			return nil, fmt.Errorf("list join keys: %w", err)
		}
		out = append(out, k)
	}
	return out, rows.Err()
}

// RevokeJoinKey implements Store.
func (s *SQLite) RevokeJoinKey(ctx context.Context, id int64) error {
	res, err := s.db.ExecContext(ctx, `UPDATE joinkeys SET revoked = 1 WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("revoke join key %d: %w", id, err)
	}
	if c, _ := res.RowsAffected(); c == 0 {
		return ErrNotFound
	}
	return nil
}

// PutRelay implements Store.
func (s *SQLite) PutRelay(ctx context.Context, r Relay) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO relays (key, name, region, addr, pin, joined, last_heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT(key) DO UPDATE SET name = excluded.name, region = excluded.region, addr = excluded.addr, pin = excluded.pin, last_heartbeat = excluded.last_heartbeat`,
		r.Key, r.Name, r.Region, r.Addr, r.Pin, ms(r.Joined), ms(r.LastHeartbeat))
	if err != nil {
		if isUnique(err) {
			return ErrConflict
		}
		return fmt.Errorf("put relay %s: %w", r.Name, err)
	}
	return nil
}

// SetRevocation implements Store.
func (s *SQLite) SetRevocation(ctx context.Context, r Revocation, seq uint64, now time.Time) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if r.Until.IsZero() {
			_, err = tx.ExecContext(ctx, `DELETE FROM revocations WHERE node_key = ?`, r.NodeKey)
		} else {
			_, err = tx.ExecContext(ctx, `INSERT INTO revocations (node_key, until) VALUES (?, ?)
				ON CONFLICT(node_key) DO UPDATE SET until = MAX(until, excluded.until)`, r.NodeKey, ms(r.Until))
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM revocations WHERE until < ?`, ms(now)); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO meta (k, v) VALUES ('revocation_seq', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`,
			strconv.FormatUint(seq, 10))
		return err
	})
	if err != nil {
		return fmt.Errorf("store revocation of %s: %w", r.NodeKey, err)
	}
	return nil
}

// SetPolicy implements Store.
func (s *SQLite) SetPolicy(ctx context.Context, text string, now time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO policy (id, text, updated) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET text = excluded.text, updated = excluded.updated`,
		text, ms(now))
	if err != nil {
		return fmt.Errorf("set policy: %w", err)
	}
	return nil
}

var _ Store = (*SQLite)(nil)
