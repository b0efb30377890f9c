// Package store is the coordinator's durable state behind one interface:
// users, nodes, auth keys, relay join keys, regions, relays, the policy, the
// DNS settings, the shared secrets (coordinator key, signing key, TLS
// certificate) and a few counters. The coordinator keeps a working copy of
// nodes, relays, the policy and the DNS settings in memory and writes every
// change through the Store before it acknowledges it, so a crash (kill -9
// included) loses nothing a client was told succeeded.
//
// Two engines implement it with the same SQL (sql.go) and their own
// dialect and schema migrations:
//
//   - SQLite (sqlite.go; pure Go, modernc.org/sqlite, WAL, synchronous=FULL),
//     embedded, the default: one coordinator owns the file.
//   - PostgreSQL (postgres.go; jackc/pgx/v5), served: any number of
//     coordinator replicas share one database. It also implements Shared:
//     every committed change is announced with NOTIFY in its own
//     transaction, replicas LISTEN for the others' changes, and an advisory
//     lock elects the one replica that runs the periodic jobs.
//
// conformance_test.go runs one suite against both engines.
//
// Adding to the store: write the SQL once, in sql.go, with ? placeholders
// (s.q rewrites them for PostgreSQL) and RETURNING for new IDs; add the
// schema change as a new migration to both sqliteMigrations and
// pgMigrations; announce a change other replicas must apply with
// notifyOne or notifyIDs inside the write's transaction (a new ChangeKind,
// handled in the coordinator's replica.go); and add a case to the
// conformance suite.
package store

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// Errors callers branch on.
var (
	ErrNotFound    = errors.New("not found")
	ErrKeyUsed     = errors.New("auth key already used")
	ErrKeyExpired  = errors.New("auth key expired")
	ErrKeyRevoked  = errors.New("auth key revoked")
	ErrConflict    = errors.New("already exists")
	ErrUserHasNode = errors.New("user still owns nodes")
	// ErrUnavailable wraps failures to reach the database (connection
	// refused, connection lost, timeouts), as opposed to refusals by it.
	ErrUnavailable = errors.New("database unavailable")
	// ErrClosed is returned by calls after Close.
	ErrClosed = errors.New("store closed")
)

// ConflictError says which unique column a write collided on. It matches
// ErrConflict with errors.Is.
type ConflictError struct {
	Column string // "name", "ip", "node_key", ...; empty when unknown
}

func (e *ConflictError) Error() string {
	if e.Column == "" {
		return ErrConflict.Error()
	}
	return e.Column + " " + ErrConflict.Error()
}

// Is makes errors.Is(err, ErrConflict) hold.
func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// AdminUser is the built-in user that owns nodes registered with a key made
// without --user and without --tags. It always exists.
const AdminUser = "admin@"

// User is a person (or service) that owns nodes. Name looks like a login:
// alice@example.com.
type User struct {
	Name    string
	Created time.Time
}

// Node is a registered node.
type Node struct {
	ID        int64
	Name      string
	NodeKey   string // nodekey:<hex>
	DiscoKey  string
	Hostname  string
	OS        string
	IP        netip.Addr
	Tags      []string
	Ephemeral bool
	Created   time.Time
	KeyExpiry time.Time
	LastSeen  time.Time
	Endpoints []netip.AddrPort
	HomeRelay string
	Netcheck  []byte // JSON as the node sent it, or nil
	AuthKeyID int64
	// User owns the node; empty for a node owned by its tags (registered
	// with a tagged key made without --user).
	User string
	// AdvertisedRoutes are the routes the node last offered to route;
	// 0.0.0.0/0 stands for an exit-node offer.
	AdvertisedRoutes []netip.Prefix
	// ApprovedRoutes are the routes an admin approved for the node, kept
	// while the node stops advertising them. A route is in effect while it
	// is both advertised and approved (here or by the policy).
	ApprovedRoutes []netip.Prefix
}

// AuthKey is a pre-auth key. Only the hash of its secret is stored.
type AuthKey struct {
	ID        int64
	Hash      string
	Reusable  bool
	Ephemeral bool
	Tags      []string
	Expires   time.Time // zero: never
	Created   time.Time
	Uses      int
	// User gets the nodes registered with the key; empty only for a tagged
	// key made without --user.
	User    string
	Revoked time.Time // zero: not revoked
}

// JoinKey is a relay join key for one region. Only the hash of its secret
// is stored.
type JoinKey struct {
	ID      int64
	Hash    string
	Region  string
	Created time.Time
	Expires time.Time // zero: never
	Revoked bool
}

// Region is a relay region and its mesh secret.
type Region struct {
	Code       string
	Name       string
	Lat, Lon   float64
	MeshSecret string
}

// Relay is a relay that joined.
type Relay struct {
	Name          string
	Region        string
	Addr          string
	Pin           string
	Key           string // relaykey:<hex>
	Joined        time.Time
	LastHeartbeat time.Time
	// State is the relay's last known state (netmap.RelayUp, ...); empty
	// for a row written before states were stored.
	State string
}

// Revocation is a node key relays must refuse until Until.
type Revocation struct {
	NodeKey string // nodekey:<hex>
	Until   time.Time
}

// Snapshot is everything the coordinator loads at start.
type Snapshot struct {
	Nodes   []Node
	Regions []Region
	Relays  []Relay
	Policy  string // empty: none
	// DNS is the DNS settings as JSON (netmap.DNS); empty: none stored,
	// the coordinator's start-up flags apply.
	DNS      string
	IPCursor netip.Addr
	// Revocations are those still in force at Load; RevocationSeq is the
	// sequence number of the newest change to them.
	Revocations   []Revocation
	RevocationSeq uint64
}

// Store is the coordinator's durable state. Every method is safe for
// concurrent use and returns only after the change is durable. Errors
// reaching the database wrap ErrUnavailable.
type Store interface {
	// Load reads the whole working set.
	Load(ctx context.Context) (*Snapshot, error)
	// Node reads node id, or returns ErrNotFound.
	Node(ctx context.Context, id int64) (Node, error)
	// NodeByKey reads the node with that node key, or returns ErrNotFound.
	NodeByKey(ctx context.Context, nodeKey string) (Node, error)
	// Relay reads the relay with that key, or returns ErrNotFound.
	Relay(ctx context.Context, key string) (Relay, error)
	// Region reads a region, or returns ErrNotFound.
	Region(ctx context.Context, code string) (Region, error)
	// Policy reads the policy text (empty: none).
	Policy(ctx context.Context) (string, error)
	// DNS reads the DNS settings, JSON (empty: none stored).
	DNS(ctx context.Context) (string, error)

	// CreateUser stores u, or returns ErrConflict.
	CreateUser(ctx context.Context, u User) error
	// Users lists every user, AdminUser included, by name.
	Users(ctx context.Context) ([]User, error)
	// DeleteUser removes a user, revokes its auth keys and ends its console
	// links and sessions. A user who owns
	// nodes is refused with ErrUserHasNode unless force is set, which
	// deletes the nodes too; their IDs are returned.
	DeleteUser(ctx context.Context, name string, force bool, now time.Time) ([]int64, error)

	// CreateAuthKey stores k and sets its ID. k.User, when set, must be a
	// user (else ErrNotFound).
	CreateAuthKey(ctx context.Context, k *AuthKey) error
	// AuthKeyByHash returns the auth key with that hash, or ErrNotFound.
	// It is the cheap check made before any work on a registration.
	AuthKeyByHash(ctx context.Context, hash string) (AuthKey, error)
	// AuthKeys lists every auth key, by ID.
	AuthKeys(ctx context.Context) ([]AuthKey, error)
	// RevokeAuthKey revokes key id at now: it registers no more nodes.
	// Revoking a revoked key is not an error.
	RevokeAuthKey(ctx context.Context, id int64, now time.Time) error
	// RegisterNode checks the auth key with hash keyHash at now and, in
	// one transaction, consumes one use of it and inserts n (n.ID == 0) or
	// renews an existing node's row (n.ID != 0). It fills n's tags,
	// ephemeral flag and user from the key, sets n.ID, and records n.IP as
	// the address cursor. It returns ErrNotFound, ErrKeyUsed,
	// ErrKeyExpired, ErrKeyRevoked or ErrConflict (name, key or IP taken).
	RegisterNode(ctx context.Context, keyHash string, now time.Time, n *Node) (AuthKey, error)
	// UpdateNode rewrites the mutable fields of node n.ID.
	UpdateNode(ctx context.Context, n *Node) error
	// SetAdvertisedRoutes replaces the routes node id advertises.
	SetAdvertisedRoutes(ctx context.Context, id int64, routes []netip.Prefix) error
	// ApproveRoute adds route to node id's approved routes (approve) or
	// removes it, atomically against other replicas' approvals. It
	// reports whether the set changed.
	ApproveRoute(ctx context.Context, id int64, route netip.Prefix, approve bool) (bool, error)
	// DeleteNode removes node id.
	DeleteNode(ctx context.Context, id int64) error
	// RenameNode gives node id a new name, or returns ErrConflict (taken)
	// or ErrNotFound.
	RenameNode(ctx context.Context, id int64, name string) error

	// CreateJoinKey stores k and creates or renames its region.
	CreateJoinKey(ctx context.Context, k *JoinKey, r Region) error
	// JoinKeyByHash returns the join key with that hash, or ErrNotFound.
	JoinKeyByHash(ctx context.Context, hash string) (JoinKey, error)
	// JoinKeys lists every join key, oldest first.
	JoinKeys(ctx context.Context) ([]JoinKey, error)
	// RevokeJoinKey marks join key id revoked, or returns ErrNotFound.
	RevokeJoinKey(ctx context.Context, id int64) error
	// PutRelay inserts or replaces the relay with r.Key.
	PutRelay(ctx context.Context, r Relay) error

	// SetRevocation records r (or, with a zero Until, lifts the
	// revocation of r.NodeKey), stores seq as the revocation sequence, and
	// forgets revocations whose Until is before now: one transaction.
	SetRevocation(ctx context.Context, r Revocation, seq uint64, now time.Time) error

	// SetPolicy replaces the policy text.
	SetPolicy(ctx context.Context, text string, now time.Time) error
	// SetDNS replaces the DNS settings (JSON, checked by the caller).
	SetDNS(ctx context.Context, settings string, now time.Time) error

	// Secret returns the value stored under name. If there is none it
	// stores gen's result first; when several callers race, all get the
	// one value that was stored first.
	Secret(ctx context.Context, name string, gen func() ([]byte, error)) ([]byte, error)

	WebStore

	// SchemaVersion returns the number of applied migrations.
	SchemaVersion(ctx context.Context) (int, error)

	Close() error
}

// Shared is a Store that several coordinator replicas use at once.
type Shared interface {
	Store
	// ReplicaID names this process's connection to the store; changes it
	// commits carry it as their Origin.
	ReplicaID() string
	// Listen calls fn, from one goroutine, for every change committed by
	// another replica and every event it published, until ctx ends. After
	// each (re)connection it first calls fn with a Resync change: changes
	// may have been missed, so the caller reloads; when the connection
	// breaks it calls fn with a Lost change. It returns ctx's error.
	Listen(ctx context.Context, fn func(Change)) error
	// Publish announces an event that is not stored (a stream opened or
	// closed, a replica alive) to the other replicas.
	Publish(ctx context.Context, c Change) error
	// TryLead reports whether this replica holds the jobs lock, trying to
	// take it if not. A replica that dies (or loses its connection) loses
	// the lock, and another one takes it at its next try.
	TryLead(ctx context.Context) (bool, error)
}

// ChangeKind says what a Change is about.
type ChangeKind string

// Change kinds. Stored changes carry IDs or a Key to read back; events
// carry their data.
const (
	ChangeResync ChangeKind = "resync" // reload everything
	// ChangeLost: the listening connection broke; nothing is heard until
	// the next ChangeResync.
	ChangeLost        ChangeKind = "lost"
	ChangeNodes       ChangeKind = "nodes"        // IDs were inserted or updated
	ChangeNodeDeleted ChangeKind = "node_deleted" // IDs were deleted
	ChangeRelay       ChangeKind = "relay"        // Key (a relay key) changed
	ChangeRegion      ChangeKind = "region"       // Key (a region code) changed
	ChangePolicy      ChangeKind = "policy"       // the policy changed
	ChangeDNS         ChangeKind = "dns"          // the DNS settings changed
	// ChangeRevocation: node key Key is revoked at relays until Until
	// (unix ms; 0: the revocation was lifted).
	ChangeRevocation ChangeKind = "revocation"
	// ChangeOnline (event): nodes IDs opened (Online) or closed their
	// streams on replica Origin.
	ChangeOnline ChangeKind = "online"
	// ChangeAlive (event): replica Origin is alive. Key "hello" marks a
	// replica that just (re)connected: every other replica answers by
	// publishing its streaming nodes again (ChangeOnline).
	ChangeAlive ChangeKind = "alive"
)

// Change is one notification between replicas.
type Change struct {
	Kind   ChangeKind `json:"k"`
	Origin string     `json:"o"`
	IDs    []int64    `json:"ids,omitempty"`
	Key    string     `json:"key,omitempty"`
	Online bool       `json:"on,omitempty"`
	Until  int64      `json:"until,omitempty"`
}
