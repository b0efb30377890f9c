package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// sqlStore is the Store on database/sql, shared by both engines; a dialect
// holds what differs (placeholders, locking, errors, notifications, schema).
//
// Registrations are group-committed: concurrent RegisterNode calls are
// gathered by one committer goroutine into a single transaction (one
// fsync or WAL flush), each inside its own savepoint so that one refused
// registration does not undo the others. Each call still returns only after
// the commit.
type sqlStore struct {
	d      *dialect
	db     *sql.DB
	origin string
	qcache sync.Map // query text -> rebound text

	regCh  chan *regJob
	stop   chan struct{}
	done   chan struct{}
	closed sync.Once
}

// dialect is what one engine does differently.
type dialect struct {
	name       string
	migrations []string
	// dollar rewrites ? placeholders to $1, $2, ... (PostgreSQL).
	dollar bool
	// forUpdate is appended to the auth-key read inside a registration, so
	// concurrent registrations on other replicas wait for it.
	forUpdate string
	// greatest is the SQL function of the larger of two values.
	greatest string
	// conflictColumn names the column of a unique violation.
	conflictColumn func(error) string
	// lockMigrations serialises migrations across processes (inside tx).
	lockMigrations func(ctx context.Context, tx *sql.Tx) error
	isUnique       func(error) bool
	// unavailable reports an error reaching the database.
	unavailable func(error) bool
	// retryable reports a transaction aborted by the database to break a
	// deadlock or a serialisation conflict: running it again may succeed.
	retryable func(error) bool
	// notify announces c inside tx (nil: the engine has one writer).
	notify func(ctx context.Context, tx *sql.Tx, c Change) error
}

// maxRegBatch bounds one group commit: enough to amortise an fsync over a
// registration burst, small enough that a batch's transaction stays short.
const maxRegBatch = 128

// maxNotifyIDs bounds the IDs in one notification: PostgreSQL's NOTIFY
// payload limit is 8000 bytes, and an ID costs at most 21 of them.
const maxNotifyIDs = 300

// batchAttempts is how often a group commit is tried when the database
// aborts it to break a deadlock (registrations on two replicas with keys
// and addresses in opposite order).
const batchAttempts = 3

type regJob struct {
	keyHash string
	now     time.Time
	n       *Node
	key     AuthKey
	err     error
	done    chan struct{}
}

func newSQLStore(ctx context.Context, d *dialect, db *sql.DB, origin string) (*sqlStore, error) {
	s := &sqlStore{d: d, db: db, origin: origin, regCh: make(chan *regJob, maxRegBatch), stop: make(chan struct{}), done: make(chan struct{})}
	if err := s.migrate(ctx); err != nil {
		return nil, s.wrap("migrate", err)
	}
	go s.runCommitter()
	return s, nil
}

// q returns query with the dialect's placeholders.
func (s *sqlStore) q(query string) string {
	if !s.d.dollar {
		return query
	}
	if v, ok := s.qcache.Load(query); ok {
		return v.(string)
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	s.qcache.Store(query, b.String())
	return b.String()
}

// wrap adds op to err and marks failures to reach the database.
func (s *sqlStore) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if s.d.unavailable(err) {
		return fmt.Errorf("%s: %w: %v", op, ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Close stops the committer and closes the database.
func (s *sqlStore) Close() error {
	s.closed.Do(func() {
		close(s.stop)
		<-s.done
	})
	return s.db.Close()
}

// runCommitter group-commits registrations until Close.
func (s *sqlStore) runCommitter() {
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

func (s *sqlStore) failPending() {
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

func (s *sqlStore) commitBatch(batch []*regJob) {
	// One order of auth-key row locks for every batch, so that batches on
	// two replicas cannot deadlock on each other's keys.
	slices.SortStableFunc(batch, func(a, b *regJob) int { return strings.Compare(a.keyHash, b.keyHash) })
	inserts := make([]bool, len(batch))
	for i, j := range batch {
		inserts[i] = j.n.ID == 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	for attempt := 0; attempt < batchAttempts; attempt++ {
		for i, j := range batch {
			if inserts[i] {
				j.n.ID = 0
			}
			j.err = nil
		}
		err = s.tx(ctx, func(tx *sql.Tx) error {
			var cursor string
			var ids []int64
			for i, j := range batch {
				if _, err := tx.ExecContext(ctx, `SAVEPOINT reg`); err != nil {
					return err
				}
				j.key, j.err = s.registerInTx(ctx, tx, j.keyHash, j.now, j.n)
				if j.err != nil {
					if _, err := tx.ExecContext(ctx, `ROLLBACK TO SAVEPOINT reg`); err != nil {
						return err
					}
				} else {
					ids = append(ids, j.n.ID)
					if inserts[i] {
						cursor = j.n.IP.String()
					}
				}
				if _, err := tx.ExecContext(ctx, `RELEASE SAVEPOINT reg`); err != nil {
					return err
				}
			}
			if cursor != "" {
				if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO meta (k, v) VALUES ('ip_cursor', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`), cursor); err != nil {
					return err
				}
			}
			return s.notifyIDs(ctx, tx, ChangeNodes, ids)
		})
		if err == nil || !s.d.retryable(err) {
			break
		}
	}
	for i, j := range batch {
		if err != nil {
			if inserts[i] {
				j.n.ID = 0
			}
			if j.err == nil || s.d.retryable(err) {
				j.err = s.wrap("register node", err)
			}
		}
		close(j.done)
	}
}

// notifyIDs announces ids, in chunks that fit a notification.
func (s *sqlStore) notifyIDs(ctx context.Context, tx *sql.Tx, kind ChangeKind, ids []int64) error {
	if s.d.notify == nil || len(ids) == 0 {
		return nil
	}
	for len(ids) > 0 {
		n := min(len(ids), maxNotifyIDs)
		if err := s.d.notify(ctx, tx, Change{Kind: kind, Origin: s.origin, IDs: ids[:n]}); err != nil {
			return err
		}
		ids = ids[n:]
	}
	return nil
}

func (s *sqlStore) notifyOne(ctx context.Context, tx *sql.Tx, c Change) error {
	if s.d.notify == nil {
		return nil
	}
	c.Origin = s.origin
	return s.d.notify(ctx, tx, c)
}

func (s *sqlStore) migrate(ctx context.Context) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if s.d.lockMigrations != nil {
			if err := s.d.lockMigrations(ctx, tx); err != nil {
				return fmt.Errorf("migration lock: %w", err)
			}
		}
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied BIGINT NOT NULL)`); err != nil {
			return err
		}
		var have int
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
			return err
		}
		if have > len(s.d.migrations) {
			return fmt.Errorf("database schema version %d is newer than this binary knows (%d)", have, len(s.d.migrations))
		}
		for v := have + 1; v <= len(s.d.migrations); v++ {
			if _, err := tx.ExecContext(ctx, s.d.migrations[v-1]); err != nil {
				return fmt.Errorf("migration %d: %w", v, err)
			}
			if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO schema_migrations (version, applied) VALUES (?, ?)`), v, time.Now().Unix()); err != nil {
				return err
			}
		}
		return nil
	})
}

// SchemaVersion implements Store.
func (s *sqlStore) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, s.wrap("schema version", err)
}

func (s *sqlStore) tx(ctx context.Context, f func(*sql.Tx) error) error {
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

const nodeColumns = `id, name, node_key, disco_key, hostname, os, ip, tags, ephemeral,
	created, key_expiry, last_seen, endpoints, home_relay, netcheck, authkey_id, user_name,
	advertised_routes, approved_routes`

type scanner interface{ Scan(dest ...any) error }

func scanNode(r scanner) (Node, error) {
	var n Node
	var ip, tags, eps, adv, appr string
	var created, exp, seen int64
	var nc sql.NullString
	if err := r.Scan(&n.ID, &n.Name, &n.NodeKey, &n.DiscoKey, &n.Hostname, &n.OS, &ip, &tags, &n.Ephemeral,
		&created, &exp, &seen, &eps, &n.HomeRelay, &nc, &n.AuthKeyID, &n.User, &adv, &appr); err != nil {
		return n, err
	}
	var err error
	if n.IP, err = netip.ParseAddr(ip); err != nil {
		return n, fmt.Errorf("node %s: ip %q: %w", n.Name, ip, err)
	}
	json.Unmarshal([]byte(tags), &n.Tags)
	json.Unmarshal([]byte(eps), &n.Endpoints)
	json.Unmarshal([]byte(adv), &n.AdvertisedRoutes)
	json.Unmarshal([]byte(appr), &n.ApprovedRoutes)
	if nc.Valid {
		n.Netcheck = []byte(nc.String)
	}
	n.Created, n.KeyExpiry, n.LastSeen = fromMS(created), fromMS(exp), fromMS(seen)
	return n, nil
}

const relayColumns = `key, name, region, addr, pin, joined, last_heartbeat, state`

func scanRelay(r scanner) (Relay, error) {
	var rl Relay
	var joined, hb int64
	err := r.Scan(&rl.Key, &rl.Name, &rl.Region, &rl.Addr, &rl.Pin, &joined, &hb, &rl.State)
	rl.Joined, rl.LastHeartbeat = fromMS(joined), fromMS(hb)
	return rl, err
}

// Load implements Store.
func (s *sqlStore) Load(ctx context.Context) (*Snapshot, error) {
	snap := &Snapshot{}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT `+nodeColumns+` FROM nodes ORDER BY id`)
		if err != nil {
			return fmt.Errorf("nodes: %w", err)
		}
		for rows.Next() {
			n, err := scanNode(rows)
			if err != nil {
				rows.Close()
				return fmt.Errorf("nodes: %w", err)
			}
			snap.Nodes = append(snap.Nodes, n)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("nodes: %w", err)
		}
		rows, err = tx.QueryContext(ctx, `SELECT code, name, lat, lon, mesh_secret FROM regions ORDER BY code`)
		if err != nil {
			return fmt.Errorf("regions: %w", err)
		}
		for rows.Next() {
			var r Region
			if err := rows.Scan(&r.Code, &r.Name, &r.Lat, &r.Lon, &r.MeshSecret); err != nil {
				rows.Close()
				return fmt.Errorf("regions: %w", err)
			}
			snap.Regions = append(snap.Regions, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("regions: %w", err)
		}
		rows, err = tx.QueryContext(ctx, `SELECT `+relayColumns+` FROM relays ORDER BY name`)
		if err != nil {
			return fmt.Errorf("relays: %w", err)
		}
		for rows.Next() {
			r, err := scanRelay(rows)
			if err != nil {
				rows.Close()
				return fmt.Errorf("relays: %w", err)
			}
			snap.Relays = append(snap.Relays, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("relays: %w", err)
		}
		err = tx.QueryRowContext(ctx, `SELECT text FROM policy WHERE id = 1`).Scan(&snap.Policy)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("policy: %w", err)
		}
		err = tx.QueryRowContext(ctx, `SELECT settings FROM dns WHERE id = 1`).Scan(&snap.DNS)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("dns: %w", err)
		}
		var cur string
		err = tx.QueryRowContext(ctx, `SELECT v FROM meta WHERE k = 'ip_cursor'`).Scan(&cur)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("meta: %w", err)
		}
		if cur != "" {
			snap.IPCursor, _ = netip.ParseAddr(cur)
		}
		rows, err = tx.QueryContext(ctx, s.q(`SELECT node_key, until FROM revocations WHERE until >= ? ORDER BY node_key`), ms(time.Now()))
		if err != nil {
			return fmt.Errorf("revocations: %w", err)
		}
		for rows.Next() {
			var r Revocation
			var until int64
			if err := rows.Scan(&r.NodeKey, &until); err != nil {
				rows.Close()
				return fmt.Errorf("revocations: %w", err)
			}
			r.Until = fromMS(until)
			snap.Revocations = append(snap.Revocations, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("revocations: %w", err)
		}
		var seq string
		err = tx.QueryRowContext(ctx, `SELECT v FROM meta WHERE k = 'revocation_seq'`).Scan(&seq)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("meta: %w", err)
		}
		if seq != "" {
			if snap.RevocationSeq, err = strconv.ParseUint(seq, 10, 64); err != nil {
				return fmt.Errorf("meta: revocation_seq %q: %w", seq, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, s.wrap("load", err)
	}
	return snap, nil
}

// Node implements Store.
func (s *sqlStore) Node(ctx context.Context, id int64) (Node, error) {
	n, err := scanNode(s.db.QueryRowContext(ctx, s.q(`SELECT `+nodeColumns+` FROM nodes WHERE id = ?`), id))
	if errors.Is(err, sql.ErrNoRows) {
		return n, ErrNotFound
	}
	return n, s.wrap("read node", err)
}

// NodeByKey implements Store.
func (s *sqlStore) NodeByKey(ctx context.Context, nodeKey string) (Node, error) {
	n, err := scanNode(s.db.QueryRowContext(ctx, s.q(`SELECT `+nodeColumns+` FROM nodes WHERE node_key = ?`), nodeKey))
	if errors.Is(err, sql.ErrNoRows) {
		return n, ErrNotFound
	}
	return n, s.wrap("read node", err)
}

// Relay implements Store.
func (s *sqlStore) Relay(ctx context.Context, key string) (Relay, error) {
	r, err := scanRelay(s.db.QueryRowContext(ctx, s.q(`SELECT `+relayColumns+` FROM relays WHERE key = ?`), key))
	if errors.Is(err, sql.ErrNoRows) {
		return r, ErrNotFound
	}
	return r, s.wrap("read relay", err)
}

// Region implements Store.
func (s *sqlStore) Region(ctx context.Context, code string) (Region, error) {
	var r Region
	err := s.db.QueryRowContext(ctx, s.q(`SELECT code, name, lat, lon, mesh_secret FROM regions WHERE code = ?`), code).
		Scan(&r.Code, &r.Name, &r.Lat, &r.Lon, &r.MeshSecret)
	if errors.Is(err, sql.ErrNoRows) {
		return r, ErrNotFound
	}
	return r, s.wrap("read region", err)
}

// Policy implements Store.
func (s *sqlStore) Policy(ctx context.Context) (string, error) {
	var text string
	err := s.db.QueryRowContext(ctx, `SELECT text FROM policy WHERE id = 1`).Scan(&text)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return text, s.wrap("read policy", err)
}

// DNS implements Store.
func (s *sqlStore) DNS(ctx context.Context) (string, error) {
	var settings string
	err := s.db.QueryRowContext(ctx, `SELECT settings FROM dns WHERE id = 1`).Scan(&settings)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return settings, s.wrap("read dns settings", err)
}

// CreateUser implements Store.
func (s *sqlStore) CreateUser(ctx context.Context, u User) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO users (name, created) VALUES (?, ?)`), u.Name, ms(u.Created))
	if s.d.isUnique(err) {
		return fmt.Errorf("user %s: %w", u.Name, ErrConflict)
	}
	return s.wrap("create user", err)
}

// Users implements Store.
func (s *sqlStore) Users(ctx context.Context) ([]User, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, created FROM users ORDER BY name`)
	if err != nil {
		return nil, s.wrap("list users", err)
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		var u User
		var created int64
		if err := rows.Scan(&u.Name, &created); err != nil {
			return nil, s.wrap("list users", err)
		}
		u.Created = fromMS(created)
		out = append(out, u)
	}
	return out, s.wrap("list users", rows.Err())
}

// DeleteUser implements Store.
func (s *sqlStore) DeleteUser(ctx context.Context, name string, force bool, now time.Time) ([]int64, error) {
	var ids []int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		ids = nil
		res, err := tx.ExecContext(ctx, s.q(`DELETE FROM users WHERE name = ?`), name)
		if err != nil {
			return err
		}
		if c, _ := res.RowsAffected(); c == 0 {
			return fmt.Errorf("user %q: %w", name, ErrNotFound)
		}
		rows, err := tx.QueryContext(ctx, s.q(`SELECT id FROM nodes WHERE user_name = ? ORDER BY id`), name)
		if err != nil {
			return err
		}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(ids) > 0 && !force {
			return fmt.Errorf("user %s owns %d node(s): %w", name, len(ids), ErrUserHasNode)
		}
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM nodes WHERE user_name = ?`), name); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE authkeys SET revoked = ? WHERE user_name = ? AND revoked = 0`), ms(now), name); err != nil {
			return err
		}
		// The user's console links and sessions end with the user.
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM webtokens WHERE user_name = ?`), name); err != nil {
			return err
		}
		return s.notifyIDs(ctx, tx, ChangeNodeDeleted, ids)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrUserHasNode) {
			return nil, err
		}
		return nil, s.wrap("delete user", err)
	}
	return ids, nil
}

// CreateAuthKey implements Store.
func (s *sqlStore) CreateAuthKey(ctx context.Context, k *AuthKey) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		if k.User != "" {
			var one int
			err := tx.QueryRowContext(ctx, s.q(`SELECT 1 FROM users WHERE name = ?`), k.User).Scan(&one)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("user %q: %w", k.User, ErrNotFound)
			}
			if err != nil {
				return err
			}
		}
		return tx.QueryRowContext(ctx, s.q(`INSERT INTO authkeys (hash, reusable, ephemeral, tags, expires, created, user_name, revoked)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`),
			k.Hash, k.Reusable, k.Ephemeral, jsonText(k.Tags), ms(k.Expires), ms(k.Created), k.User, ms(k.Revoked)).Scan(&k.ID)
	})
	switch {
	case s.d.isUnique(err):
		return ErrConflict
	case errors.Is(err, ErrNotFound):
		return err
	}
	return s.wrap("create auth key", err)
}

const authKeyColumns = `id, hash, reusable, ephemeral, tags, expires, created, uses, user_name, revoked`

func scanAuthKey(r scanner) (AuthKey, error) {
	var k AuthKey
	var tags string
	var exp, created, revoked int64
	err := r.Scan(&k.ID, &k.Hash, &k.Reusable, &k.Ephemeral, &tags, &exp, &created, &k.Uses, &k.User, &revoked)
	json.Unmarshal([]byte(tags), &k.Tags)
	k.Expires, k.Created, k.Revoked = fromMS(exp), fromMS(created), fromMS(revoked)
	return k, err
}

// AuthKeyByHash implements Store.
func (s *sqlStore) AuthKeyByHash(ctx context.Context, hash string) (AuthKey, error) {
	k, err := scanAuthKey(s.db.QueryRowContext(ctx, s.q(`SELECT `+authKeyColumns+` FROM authkeys WHERE hash = ?`), hash))
	if errors.Is(err, sql.ErrNoRows) {
		return k, ErrNotFound
	}
	return k, s.wrap("look up auth key", err)
}

// AuthKeys implements Store.
func (s *sqlStore) AuthKeys(ctx context.Context) ([]AuthKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+authKeyColumns+` FROM authkeys ORDER BY id`)
	if err != nil {
		return nil, s.wrap("list auth keys", err)
	}
	defer rows.Close()
	var out []AuthKey
	for rows.Next() {
		k, err := scanAuthKey(rows)
		if err != nil {
			return nil, s.wrap("list auth keys", err)
		}
		out = append(out, k)
	}
	return out, s.wrap("list auth keys", rows.Err())
}

// RevokeAuthKey implements Store.
func (s *sqlStore) RevokeAuthKey(ctx context.Context, id int64, now time.Time) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE authkeys SET revoked = CASE WHEN revoked = 0 THEN ? ELSE revoked END WHERE id = ?`), ms(now), id)
	if err != nil {
		return s.wrap("revoke auth key", err)
	}
	if c, _ := res.RowsAffected(); c == 0 {
		return fmt.Errorf("auth key %d: %w", id, ErrNotFound)
	}
	return nil
}

// RegisterNode implements Store. It waits for the group commit that
// carries it.
func (s *sqlStore) RegisterNode(ctx context.Context, keyHash string, now time.Time, n *Node) (AuthKey, error) {
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
func (s *sqlStore) registerInTx(ctx context.Context, tx *sql.Tx, keyHash string, now time.Time, n *Node) (AuthKey, error) {
	k, err := scanAuthKey(tx.QueryRowContext(ctx, s.q(`SELECT `+authKeyColumns+` FROM authkeys WHERE hash = ?`+s.d.forUpdate), keyHash))
	if errors.Is(err, sql.ErrNoRows) {
		return k, ErrNotFound
	}
	if err != nil {
		return k, s.wrap("register node", err)
	}
	switch {
	case !k.Revoked.IsZero():
		return k, ErrKeyRevoked
	case !k.Expires.IsZero() && !now.Before(k.Expires):
		return k, ErrKeyExpired
	case !k.Reusable && k.Uses > 0:
		return k, ErrKeyUsed
	}
	if _, err := tx.ExecContext(ctx, s.q(`UPDATE authkeys SET uses = uses + 1 WHERE id = ?`), k.ID); err != nil {
		return k, s.wrap("register node", err)
	}
	n.Tags, n.Ephemeral, n.AuthKeyID, n.User = k.Tags, k.Ephemeral, k.ID, k.User
	if n.ID != 0 {
		_, err = tx.ExecContext(ctx, s.q(`UPDATE nodes SET disco_key = ?, hostname = ?, os = ?, tags = ?, ephemeral = ?, key_expiry = ?, authkey_id = ?, user_name = ? WHERE id = ?`),
			n.DiscoKey, n.Hostname, n.OS, jsonText(n.Tags), n.Ephemeral, ms(n.KeyExpiry), n.AuthKeyID, n.User, n.ID)
		if err != nil {
			return k, s.wrap("register node", err)
		}
		return k, nil
	}
	err = tx.QueryRowContext(ctx, s.q(`INSERT INTO nodes (name, node_key, disco_key, hostname, os, ip, tags, ephemeral, created,
		key_expiry, last_seen, endpoints, home_relay, netcheck, authkey_id, user_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?) RETURNING id`),
		n.Name, n.NodeKey, n.DiscoKey, n.Hostname, n.OS, n.IP.String(), jsonText(n.Tags), n.Ephemeral, ms(n.Created),
		ms(n.KeyExpiry), ms(n.LastSeen), jsonText(n.Endpoints), n.HomeRelay, n.AuthKeyID, n.User).Scan(&n.ID)
	if err != nil {
		n.ID = 0
		if s.d.isUnique(err) {
			return k, &ConflictError{Column: s.d.conflictColumn(err)}
		}
		return k, s.wrap("register node", err)
	}
	return k, nil
}

// UpdateNode implements Store.
func (s *sqlStore) UpdateNode(ctx context.Context, n *Node) error {
	var nc any
	if n.Netcheck != nil {
		nc = string(n.Netcheck)
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`UPDATE nodes SET disco_key = ?, key_expiry = ?, last_seen = ?, endpoints = ?, home_relay = ?, netcheck = ? WHERE id = ?`),
			n.DiscoKey, ms(n.KeyExpiry), ms(n.LastSeen), jsonText(n.Endpoints), n.HomeRelay, nc, n.ID)
		if err != nil {
			return err
		}
		if c, _ := res.RowsAffected(); c == 0 {
			return ErrNotFound
		}
		return s.notifyIDs(ctx, tx, ChangeNodes, []int64{n.ID})
	})
	if errors.Is(err, ErrNotFound) {
		return err
	}
	return s.wrap("update node "+n.Name, err)
}

// SetAdvertisedRoutes implements Store.
func (s *sqlStore) SetAdvertisedRoutes(ctx context.Context, id int64, routes []netip.Prefix) error {
	if routes == nil {
		routes = []netip.Prefix{}
	}
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`UPDATE nodes SET advertised_routes = ? WHERE id = ?`), jsonText(routes), id)
		if err != nil {
			return err
		}
		if c, _ := res.RowsAffected(); c == 0 {
			return ErrNotFound
		}
		return s.notifyIDs(ctx, tx, ChangeNodes, []int64{id})
	})
	if errors.Is(err, ErrNotFound) {
		return err
	}
	return s.wrap("set advertised routes", err)
}

// ApproveRoute implements Store.
func (s *sqlStore) ApproveRoute(ctx context.Context, id int64, route netip.Prefix, approve bool) (bool, error) {
	changed := false
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var text string
		err := tx.QueryRowContext(ctx, s.q(`SELECT approved_routes FROM nodes WHERE id = ?`+s.d.forUpdate), id).Scan(&text)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		var approved []netip.Prefix
		json.Unmarshal([]byte(text), &approved)
		has := slices.Contains(approved, route)
		switch {
		case approve && !has:
			approved = append(approved, route)
			SortPrefixes(approved)
		case !approve && has:
			approved = slices.DeleteFunc(approved, func(p netip.Prefix) bool { return p == route })
		default:
			return nil
		}
		if approved == nil {
			approved = []netip.Prefix{}
		}
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE nodes SET approved_routes = ? WHERE id = ?`), jsonText(approved), id); err != nil {
			return err
		}
		changed = true
		return s.notifyIDs(ctx, tx, ChangeNodes, []int64{id})
	})
	if errors.Is(err, ErrNotFound) {
		return false, err
	}
	return changed, s.wrap("approve route", err)
}

// SortPrefixes sorts by address, then prefix length: the order approved
// routes are stored in.
func SortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
}

// DeleteNode implements Store.
func (s *sqlStore) DeleteNode(ctx context.Context, id int64) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`DELETE FROM nodes WHERE id = ?`), id)
		if err != nil {
			return err
		}
		if c, _ := res.RowsAffected(); c == 0 {
			return ErrNotFound
		}
		return s.notifyIDs(ctx, tx, ChangeNodeDeleted, []int64{id})
	})
	if errors.Is(err, ErrNotFound) {
		return err
	}
	return s.wrap(fmt.Sprintf("delete node %d", id), err)
}

// CreateJoinKey implements Store.
func (s *sqlStore) CreateJoinKey(ctx context.Context, k *JoinKey, r Region) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO regions (code, name, lat, lon, mesh_secret) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT(code) DO UPDATE SET name = CASE WHEN excluded.name != '' THEN excluded.name ELSE regions.name END`),
			r.Code, r.Name, r.Lat, r.Lon, r.MeshSecret)
		if err != nil {
			return fmt.Errorf("region %s: %w", r.Code, err)
		}
		if err := tx.QueryRowContext(ctx, s.q(`INSERT INTO joinkeys (hash, region, created, expires) VALUES (?, ?, ?, ?) RETURNING id`),
			k.Hash, k.Region, ms(k.Created), ms(k.Expires)).Scan(&k.ID); err != nil {
			return err
		}
		return s.notifyOne(ctx, tx, Change{Kind: ChangeRegion, Key: r.Code})
	})
	return s.wrap("create join key", err)
}

const joinKeyCols = `id, hash, region, created, expires, revoked`

func scanJoinKey(row scanner) (JoinKey, error) {
	var k JoinKey
	var created, expires int64
	err := row.Scan(&k.ID, &k.Hash, &k.Region, &created, &expires, &k.Revoked)
	k.Created, k.Expires = fromMS(created), fromMS(expires)
	return k, err
}

// JoinKeyByHash implements Store.
func (s *sqlStore) JoinKeyByHash(ctx context.Context, hash string) (JoinKey, error) {
	k, err := scanJoinKey(s.db.QueryRowContext(ctx, s.q(`SELECT `+joinKeyCols+` FROM joinkeys WHERE hash = ?`), hash))
	if errors.Is(err, sql.ErrNoRows) {
		return k, ErrNotFound
	}
	return k, s.wrap("look up join key", err)
}

// JoinKeys implements Store.
func (s *sqlStore) JoinKeys(ctx context.Context) ([]JoinKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+joinKeyCols+` FROM joinkeys ORDER BY id`)
	if err != nil {
		return nil, s.wrap("list join keys", err)
	}
	defer rows.Close()
	var out []JoinKey
	for rows.Next() {
		k, err := scanJoinKey(rows)
		if err != nil {
			return nil, s.wrap("list join keys", err)
		}
		out = append(out, k)
	}
	return out, s.wrap("list join keys", rows.Err())
}

// RevokeJoinKey implements Store.
func (s *sqlStore) RevokeJoinKey(ctx context.Context, id int64) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE joinkeys SET revoked = ? WHERE id = ?`), true, id)
	if err != nil {
		return s.wrap(fmt.Sprintf("revoke join key %d", id), err)
	}
	if c, _ := res.RowsAffected(); c == 0 {
		return ErrNotFound
	}
	return nil
}

// SetRevocation implements Store.
func (s *sqlStore) SetRevocation(ctx context.Context, r Revocation, seq uint64, now time.Time) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if r.Until.IsZero() {
			_, err = tx.ExecContext(ctx, s.q(`DELETE FROM revocations WHERE node_key = ?`), r.NodeKey)
		} else {
			_, err = tx.ExecContext(ctx, s.q(`INSERT INTO revocations (node_key, until) VALUES (?, ?)
				ON CONFLICT(node_key) DO UPDATE SET until = `+s.d.greatest+`(revocations.until, excluded.until)`), r.NodeKey, ms(r.Until))
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM revocations WHERE until < ?`), ms(now)); err != nil {
			return err
		}
		if _, err = tx.ExecContext(ctx, s.q(`INSERT INTO meta (k, v) VALUES ('revocation_seq', ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v`),
			strconv.FormatUint(seq, 10)); err != nil {
			return err
		}
		return s.notifyOne(ctx, tx, Change{Kind: ChangeRevocation, Key: r.NodeKey, Until: ms(r.Until)})
	})
	return s.wrap("store revocation of "+r.NodeKey, err)
}

// PutRelay implements Store.
func (s *sqlStore) PutRelay(ctx context.Context, r Relay) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO relays (key, name, region, addr, pin, joined, last_heartbeat, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT(key) DO UPDATE SET name = excluded.name, region = excluded.region, addr = excluded.addr, pin = excluded.pin,
			last_heartbeat = excluded.last_heartbeat, state = excluded.state`),
			r.Key, r.Name, r.Region, r.Addr, r.Pin, ms(r.Joined), ms(r.LastHeartbeat), r.State)
		if err != nil {
			return err
		}
		return s.notifyOne(ctx, tx, Change{Kind: ChangeRelay, Key: r.Key})
	})
	if s.d.isUnique(err) {
		return ErrConflict
	}
	return s.wrap("put relay "+r.Name, err)
}

// SetPolicy implements Store.
func (s *sqlStore) SetPolicy(ctx context.Context, text string, now time.Time) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO policy (id, text, updated) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET text = excluded.text, updated = excluded.updated`),
			text, ms(now))
		if err != nil {
			return err
		}
		return s.notifyOne(ctx, tx, Change{Kind: ChangePolicy})
	})
	return s.wrap("set policy", err)
}

// SetDNS implements Store.
func (s *sqlStore) SetDNS(ctx context.Context, settings string, now time.Time) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO dns (id, settings, updated) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET settings = excluded.settings, updated = excluded.updated`),
			settings, ms(now))
		if err != nil {
			return err
		}
		return s.notifyOne(ctx, tx, Change{Kind: ChangeDNS})
	})
	return s.wrap("set dns settings", err)
}

// Secret implements Store.
func (s *sqlStore) Secret(ctx context.Context, name string, gen func() ([]byte, error)) ([]byte, error) {
	var v string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT value FROM secrets WHERE name = ?`), name).Scan(&v)
	if err == nil {
		return []byte(v), nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, s.wrap("read secret "+name, err)
	}
	fresh, err := gen()
	if err != nil {
		return nil, fmt.Errorf("make secret %s: %w", name, err)
	}
	// Whoever inserts first wins; everyone reads the winner.
	if _, err := s.db.ExecContext(ctx, s.q(`INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT(name) DO NOTHING`), name, string(fresh)); err != nil {
		return nil, s.wrap("store secret "+name, err)
	}
	if err := s.db.QueryRowContext(ctx, s.q(`SELECT value FROM secrets WHERE name = ?`), name).Scan(&v); err != nil {
		return nil, s.wrap("read secret "+name, err)
	}
	return []byte(v), nil
}

var _ Store = (*sqlStore)(nil)
