package netmap

import (
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// RelayJoinRequest is sent by a relay to POST /coord/v1/relay/join with its
// join key in the Authorization header ("Bearer <secret>") and a ProofHeader
// made with its relay key. Joining again with the same relay key updates the
// relay's address and pin.
type RelayJoinRequest struct {
	Version CapabilityVersion `json:"version"`
	// Region must equal the join key's region.
	Region string `json:"region"`
	// Name is optional; the coordinator derives one from the region and key.
	Name string `json:"name,omitempty"`
	// PublicAddr is host:port where nodes reach the relay.
	PublicAddr string          `json:"public_addr"`
	Key        key.RelayPublic `json:"key"`
	Pin        string          `json:"pin"` // tlspin pin of the relay's certificate
}

// RelayJoinResponse answers a join and every heartbeat, so a relay always
// holds fresh fleet information.
type RelayJoinResponse struct {
	// Name is the relay's name in the relay map.
	Name   string `json:"name"`
	Region Region `json:"region"` // the relay's region with all its relays, itself included
	// AdmitKeys are the coordinator signing keys whose admission tokens the
	// relay must accept (more than one during a key rotation).
	AdmitKeys []key.SigningPublic `json:"admit_keys"`
	// MeshSecret authenticates relays of one region to each other; every
	// relay of the region gets the same secret.
	MeshSecret string `json:"mesh_secret"`
	// HeartbeatInterval is how often to call heartbeat. A relay silent for
	// RelayDownAfter heartbeats is marked down in the map.
	HeartbeatInterval Duration `json:"heartbeat_interval"`
}

// RelayHeartbeat is sent to POST /coord/v1/relay/heartbeat with a
// ProofHeader made with the relay key (no join key needed once joined).
type RelayHeartbeat struct {
	Clients    int  `json:"clients"`
	Draining   bool `json:"draining,omitempty"`
	Overloaded bool `json:"overloaded,omitempty"`
}

// RelayDownAfter is how many heartbeat intervals of silence mark a relay
// down: three, so one lost or late heartbeat never flaps the map.
const RelayDownAfter = 3

// Duration is a time.Duration that travels as a Go duration string ("10s").
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// RevokedNode is a node key that relays must stop serving: a relay closes the
// node's sessions at once and refuses its admission tokens until Until, the
// latest expiry of any token the coordinator may have issued to it. After
// Until every such token has expired anyway, so the entry can be forgotten.
type RevokedNode struct {
	Key   key.NodePublic `json:"key"`
	Until time.Time      `json:"until"`
}

// RelayRevocationsRequest is sent to POST /coord/v1/relay/revocations with a
// ProofHeader made with the relay key. It is a long poll: the coordinator
// answers as soon as its revocation sequence passes After, or after
// RevocationPollTimeout with no change.
type RelayRevocationsRequest struct {
	After uint64 `json:"after"`
}

// RelayRevocations lists every revocation still in force (Until in the
// future) and the sequence number of the newest; a relay sends that Seq as
// After in its next poll. The full list is always sent, so a relay that
// missed polls (or restarted) is never left with gaps.
type RelayRevocations struct {
	Seq     uint64        `json:"seq"`
	Revoked []RevokedNode `json:"revoked"`
}

// RevocationPollTimeout is how long the coordinator holds a revocation poll
// open with nothing new; clients allow that plus a margin before giving up.
const RevocationPollTimeout = 25 * time.Second
