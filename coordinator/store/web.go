package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"time"
)

// The web console's durable state: sign-in links and sessions (webtokens),
// nodes waiting for an interactive login (logins), and the audit log. Only
// hashes of link, session and login secrets are stored.

// Kinds of WebToken.
const (
	TokenSignIn  = "signin"  // a one-time sign-in link
	TokenSession = "session" // a browser session (its cookie)
)

// ErrLoginLimit refuses a new interactive login while too many wait.
var ErrLoginLimit = errors.New("too many interactive logins waiting")

// WebToken is a sign-in link or a session, by the hash of its secret.
type WebToken struct {
	Hash  string
	Kind  string
	User  string
	Admin bool
	// CSRF is a session's token for state-changing forms (empty for
	// sign-in links).
	CSRF    string
	Created time.Time
	Expires time.Time
	Used    time.Time // sign-in links: when it was used; zero: unused
}

// Login is a node waiting for a console user to approve it, by the hash of
// its one-time code.
type Login struct {
	CodeHash   string
	NodeKey    string
	Hostname   string
	OS         string
	Created    time.Time
	Expires    time.Time
	ApprovedBy string    // the user who approved it; empty: waiting
	Approved   time.Time // zero: waiting
	// Sealed is the auth key made at approval, sealed to the node key so
	// that only the node can open it.
	Sealed []byte
}

// AuditEntry is one change, made from the console or the CLI.
type AuditEntry struct {
	ID     int64
	Time   time.Time
	Actor  string // "cli", or a console user
	Action string // "nodes delete", "policy set", ...
	Target string // what it was done to
}

// RenameNode implements Store.
func (s *sqlStore) RenameNode(ctx context.Context, id int64, name string) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`UPDATE nodes SET name = ? WHERE id = ?`), name, id)
		if err != nil {
			return err
		}
		if c, _ := res.RowsAffected(); c == 0 {
			return ErrNotFound
		}
		return s.notifyIDs(ctx, tx, ChangeNodes, []int64{id})
	})
	switch {
	case errors.Is(err, ErrNotFound):
		return err
	case s.d.isUnique(err):
		return &ConflictError{Column: "name"}
	}
	return s.wrap("rename node", err)
}

// CreateWebToken stores t.
func (s *sqlStore) CreateWebToken(ctx context.Context, t WebToken) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO webtokens (hash, kind, user_name, admin, csrf, created, expires, used) VALUES (?, ?, ?, ?, ?, ?, ?, 0)`),
		t.Hash, t.Kind, t.User, t.Admin, t.CSRF, ms(t.Created), ms(t.Expires))
	if s.d.isUnique(err) {
		return ErrConflict
	}
	return s.wrap("create web token", err)
}

const webTokenColumns = `hash, kind, user_name, admin, csrf, created, expires, used`

func scanWebToken(r scanner) (WebToken, error) {
	var t WebToken
	var created, expires, used int64
	err := r.Scan(&t.Hash, &t.Kind, &t.User, &t.Admin, &t.CSRF, &created, &expires, &used)
	t.Created, t.Expires, t.Used = fromMS(created), fromMS(expires), fromMS(used)
	return t, err
}

// WebToken reads the token with that hash and kind. It returns ErrNotFound
// for an unknown one and ErrKeyExpired for one past its expiry.
func (s *sqlStore) WebToken(ctx context.Context, hash, kind string, now time.Time) (WebToken, error) {
	t, err := scanWebToken(s.db.QueryRowContext(ctx, s.q(`SELECT `+webTokenColumns+` FROM webtokens WHERE hash = ? AND kind = ?`), hash, kind))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return t, ErrNotFound
	case err != nil:
		return t, s.wrap("read web token", err)
	case !now.Before(t.Expires):
		return t, ErrKeyExpired
	}
	return t, nil
}

// UseSignIn marks the sign-in link with that hash used, once: it returns
// ErrNotFound (unknown), ErrKeyExpired, or ErrKeyUsed (used before, by
// anyone, on any replica).
func (s *sqlStore) UseSignIn(ctx context.Context, hash string, now time.Time) (WebToken, error) {
	var t WebToken
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		t, err = scanWebToken(tx.QueryRowContext(ctx, s.q(`SELECT `+webTokenColumns+` FROM webtokens WHERE hash = ? AND kind = ?`+s.d.forUpdate), hash, TokenSignIn))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return ErrNotFound
		case err != nil:
			return err
		case !t.Used.IsZero():
			return ErrKeyUsed
		case !now.Before(t.Expires):
			return ErrKeyExpired
		}
		res, err := tx.ExecContext(ctx, s.q(`UPDATE webtokens SET used = ? WHERE hash = ? AND used = 0`), ms(now), hash)
		if err != nil {
			return err
		}
		if c, _ := res.RowsAffected(); c != 1 {
			return ErrKeyUsed
		}
		t.Used = now
		return nil
	})
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrKeyUsed) || errors.Is(err, ErrKeyExpired) {
		return t, err
	}
	return t, s.wrap("use sign-in link", err)
}

// DeleteWebToken removes a token (sign-out). An unknown one is no error.
func (s *sqlStore) DeleteWebToken(ctx context.Context, hash string) error {
	_, err := s.db.ExecContext(ctx, s.q(`DELETE FROM webtokens WHERE hash = ?`), hash)
	return s.wrap("delete web token", err)
}

// WebSessions returns the sessions live at now, newest first, at most
// limit.
func (s *sqlStore) WebSessions(ctx context.Context, now time.Time, limit int) ([]WebToken, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+webTokenColumns+` FROM webtokens WHERE kind = ? AND expires > ? ORDER BY created DESC, hash LIMIT ?`),
		TokenSession, ms(now), limit)
	if err != nil {
		return nil, s.wrap("list web sessions", err)
	}
	defer rows.Close()
	var out []WebToken
	for rows.Next() {
		t, err := scanWebToken(rows)
		if err != nil {
			return nil, s.wrap("list web sessions", err)
		}
		out = append(out, t)
	}
	return out, s.wrap("list web sessions", rows.Err())
}

// CreateLogin stores l unless maxPending logins are already waiting
// (ErrLoginLimit).
func (s *sqlStore) CreateLogin(ctx context.Context, l Login, maxPending int, now time.Time) error {
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM logins WHERE approved = 0 AND expires > ?`), ms(now)).Scan(&n); err != nil {
			return err
		}
		if n >= maxPending {
			return ErrLoginLimit
		}
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO logins (code_hash, node_key, hostname, os, created, expires) VALUES (?, ?, ?, ?, ?, ?)`),
			l.CodeHash, l.NodeKey, l.Hostname, l.OS, ms(l.Created), ms(l.Expires))
		return err
	})
	switch {
	case errors.Is(err, ErrLoginLimit):
		return err
	case s.d.isUnique(err):
		return ErrConflict
	}
	return s.wrap("create login", err)
}

// Login reads the login with that code hash, or returns ErrNotFound.
func (s *sqlStore) Login(ctx context.Context, codeHash string) (Login, error) {
	var l Login
	var created, expires, approved int64
	var sealed string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT code_hash, node_key, hostname, os, created, expires, approved_by, approved, sealed FROM logins WHERE code_hash = ?`), codeHash).
		Scan(&l.CodeHash, &l.NodeKey, &l.Hostname, &l.OS, &created, &expires, &l.ApprovedBy, &approved, &sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return l, ErrNotFound
	}
	l.Created, l.Expires, l.Approved = fromMS(created), fromMS(expires), fromMS(approved)
	if sealed != "" {
		l.Sealed, _ = base64.StdEncoding.DecodeString(sealed)
	}
	return l, s.wrap("read login", err)
}

// ApproveLogin records that user approved the login, with the sealed auth
// key for the node. It returns ErrNotFound, ErrKeyExpired, or ErrKeyUsed
// when it was approved before.
func (s *sqlStore) ApproveLogin(ctx context.Context, codeHash, user string, sealed []byte, now time.Time) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE logins SET approved_by = ?, approved = ?, sealed = ? WHERE code_hash = ? AND approved = 0 AND expires > ?`),
		user, ms(now), base64.StdEncoding.EncodeToString(sealed), codeHash, ms(now))
	if err != nil {
		return s.wrap("approve login", err)
	}
	if c, _ := res.RowsAffected(); c == 1 {
		return nil
	}
	l, err := s.Login(ctx, codeHash)
	switch {
	case err != nil:
		return err
	case !l.Approved.IsZero():
		return ErrKeyUsed
	}
	return ErrKeyExpired
}

// AddAudit appends e to the audit log and sets its ID.
func (s *sqlStore) AddAudit(ctx context.Context, e *AuditEntry) error {
	err := s.db.QueryRowContext(ctx, s.q(`INSERT INTO audit (at, actor, action, target) VALUES (?, ?, ?, ?) RETURNING id`),
		ms(e.Time), e.Actor, e.Action, e.Target).Scan(&e.ID)
	return s.wrap("add audit entry", err)
}

// Audit returns the newest limit audit entries, newest first.
func (s *sqlStore) Audit(ctx context.Context, limit int) ([]AuditEntry, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id, at, actor, action, target FROM audit ORDER BY id DESC LIMIT ?`), limit)
	if err != nil {
		return nil, s.wrap("read audit log", err)
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var at int64
		if err := rows.Scan(&e.ID, &at, &e.Actor, &e.Action, &e.Target); err != nil {
			return nil, s.wrap("read audit log", err)
		}
		e.Time = fromMS(at)
		out = append(out, e)
	}
	return out, s.wrap("read audit log", rows.Err())
}

// SweepWeb deletes sign-in links, sessions and logins that expired before
// now, and returns how many rows went.
func (s *sqlStore) SweepWeb(ctx context.Context, now time.Time) (int64, error) {
	var total int64
	for _, q := range []string{`DELETE FROM webtokens WHERE expires <= ?`, `DELETE FROM logins WHERE expires <= ?`} {
		res, err := s.db.ExecContext(ctx, s.q(q), ms(now))
		if err != nil {
			return total, s.wrap("sweep web state", err)
		}
		c, _ := res.RowsAffected()
		total += c
	}
	return total, nil
}

var _ WebStore = (*sqlStore)(nil)

// WebStore is the part of Store the console and interactive login use.
type WebStore interface {
	CreateWebToken(ctx context.Context, t WebToken) error
	WebToken(ctx context.Context, hash, kind string, now time.Time) (WebToken, error)
	UseSignIn(ctx context.Context, hash string, now time.Time) (WebToken, error)
	DeleteWebToken(ctx context.Context, hash string) error
	WebSessions(ctx context.Context, now time.Time, limit int) ([]WebToken, error)
	CreateLogin(ctx context.Context, l Login, maxPending int, now time.Time) error
	Login(ctx context.Context, codeHash string) (Login, error)
	ApproveLogin(ctx context.Context, codeHash, user string, sealed []byte, now time.Time) error
	AddAudit(ctx context.Context, e *AuditEntry) error
	Audit(ctx context.Context, limit int) ([]AuditEntry, error)
	SweepWeb(ctx context.Context, now time.Time) (int64, error)
}
