// Package store is the coordinator's durable state behind an interface:
// nodes, auth keys, relay join keys, regions, relays, the policy and a few
// counters. The coordinator keeps a working copy of nodes, relays and the
// policy in memory and writes every change through the Store before it
// acknowledges it, so a crash (kill -9 included) loses nothing a client was
// told succeeded.
//
// SQLite (pure Go, modernc.org/sqlite, WAL) is the implementation today;
// PostgreSQL can implement the same interface later.
package store

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// Errors callers branch on.
var (
	ErrNotFound   = errors.New("not found")
	ErrKeyUsed    = errors.New("auth key already used")
	ErrKeyExpired = errors.New("auth key expired")
	ErrConflict   = errors.New("already exists")
)

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
}

// Revocation is a node key relays must refuse until Until.
type Revocation struct {
	NodeKey string // nodekey:<hex>
	Until   time.Time
}

// Snapshot is everything the coordinator loads at start.
type Snapshot struct {
	Nodes    []Node
	Regions  []Region
	Relays   []Relay
	Policy   string // empty: none
	IPCursor netip.Addr
	// Revocations are those still in force at Load; RevocationSeq is the
	// sequence number of the newest change to them.
	Revocations   []Revocation
	RevocationSeq uint64
}

// Store is the coordinator's durable state. Every method is safe for
// concurrent use and returns only after the change is durable.
type Store interface {
	// Load reads the whole working set.
	Load(ctx context.Context) (*Snapshot, error)

	// CreateAuthKey stores k and sets its ID.
	CreateAuthKey(ctx context.Context, k *AuthKey) error
	// AuthKeyByHash returns the auth key with that hash, or ErrNotFound.
	// It is the cheap check made before any work on a registration.
	AuthKeyByHash(ctx context.Context, hash string) (AuthKey, error)
	// RegisterNode checks the auth key with hash keyHash at now and, in
	// one transaction, consumes one use of it and inserts n (n.ID == 0) or
	// renews an existing node's row (n.ID != 0). It fills n's tags and
	// ephemeral flag from the key, sets n.ID, and records n.IP as the
	// address cursor. It returns ErrNotFound, ErrKeyUsed, ErrKeyExpired or
	// ErrConflict (name, key or IP taken).
	RegisterNode(ctx context.Context, keyHash string, now time.Time, n *Node) (AuthKey, error)
	// UpdateNode rewrites the mutable fields of node n.ID.
	UpdateNode(ctx context.Context, n *Node) error
	// DeleteNode removes node id.
	DeleteNode(ctx context.Context, id int64) error

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

	Close() error
}
