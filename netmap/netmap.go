// Package netmap holds every message exchanged between the coordinator and
// its clients (nodes and relays): registration, the netmap stream (a full map
// first, then deltas), endpoint reports, relay join and heartbeat, the relay
// map, packet-filter rules, DNS settings, and the text forms of auth keys and
// relay join keys. Both sides import only this package for wire types, so a
// field change happens in one place; CapabilityVersion records each change.
//
// All messages are JSON. Over the netmap stream each MapResponse travels as
// one length-delimited frame (see WriteFrame and FrameReader).
//
// Nil and empty have distinct meanings in MapResponse: a nil field means
// "unchanged since the last frame", a non-nil empty one means "now empty".
// Each field's comment says so where it matters.
package netmap

import (
	"net/netip"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// CapabilityVersion is the version of the coordinator protocol a client or
// server speaks. Clients send theirs in RegisterRequest and MapRequest; the
// server refuses versions below MinCapabilityVersion.
//
// History:
//
//	1 (2026-11-25): first version: register, map stream with deltas (peer
//	  records and online/last-seen patches), endpoint updates, relay join
//	  and heartbeat, admission tokens in the map.
//	  Later the same day, without a version change (older clients ignore
//	  them): Region.Weight, Region.Pinned and Region.Excluded.
type CapabilityVersion int

// CurrentCapabilityVersion is the version this package implements.
const CurrentCapabilityVersion CapabilityVersion = 1

// MinCapabilityVersion is the oldest version the coordinator still serves.
const MinCapabilityVersion CapabilityVersion = 1

// NodeID is a node's stable identifier, assigned by the coordinator at
// registration and never reused.
type NodeID int64

// Node describes one node: the receiving node itself (MapResponse.Self) or one
// of its peers. A peer's fields are the same for every node that sees it.
type Node struct {
	ID   NodeID `json:"id"`
	Name string `json:"name"` // unique, DNS-safe (a single label)
	// Addresses are the node's mesh addresses (one IPv4 /32 from 100.64.0.0/10).
	Addresses []netip.Prefix `json:"addresses"`
	// AllowedIPs are the prefixes WireGuard routes to this node: its
	// addresses (and, later, approved subnet routes).
	AllowedIPs []netip.Prefix   `json:"allowed_ips"`
	NodeKey    key.NodePublic   `json:"node_key"`
	DiscoKey   key.DiscoPublic  `json:"disco_key"`
	Endpoints  []netip.AddrPort `json:"endpoints,omitempty"`
	// HomeRelay is the region code of the node's home relay, empty if unknown.
	HomeRelay string    `json:"home_relay,omitempty"`
	Online    bool      `json:"online"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	KeyExpiry time.Time `json:"key_expiry,omitzero"`
	Tags      []string  `json:"tags,omitempty"`
	Hostname  string    `json:"hostname,omitempty"` // as the node reported it
	OS        string    `json:"os,omitempty"`
	Ephemeral bool      `json:"ephemeral,omitempty"`
	// Routes are the subnet routes approved for this peer (never the
	// exit route 0.0.0.0/0, which ExitNodeOption stands for), limited to
	// those the receiving node may use under the policy.
	Routes []netip.Prefix `json:"routes,omitempty"`
	// ExitNodeOption means the peer is an approved exit node the receiving
	// node may use.
	ExitNodeOption bool `json:"exit_node_option,omitempty"`
}

// RegisterRequest is sent once, the first time a node joins, to
// POST /coord/v1/register. It must carry a ProofHeader made with NodeKey.
type RegisterRequest struct {
	Version  CapabilityVersion `json:"version"`
	AuthKey  string            `json:"auth_key"` // the secret part; see ParseAuthKey
	NodeKey  key.NodePublic    `json:"node_key"`
	DiscoKey key.DiscoPublic   `json:"disco_key"`
	Hostname string            `json:"hostname"`
	OS       string            `json:"os"`
}

// RegisterResponse answers a successful registration.
type RegisterResponse struct {
	Node Node `json:"node"`
}

// MapRequest opens the netmap stream at POST /coord/v1/map. The response body
// is a sequence of frames, each a MapResponse: the first has Full set.
// Empty Endpoints or HomeRelay leave the last reported values in place.
type MapRequest struct {
	Version   CapabilityVersion `json:"version"`
	DiscoKey  key.DiscoPublic   `json:"disco_key"` // fresh each start
	Endpoints []netip.AddrPort  `json:"endpoints,omitempty"`
	HomeRelay string            `json:"home_relay,omitempty"`
	Netcheck  *Netcheck         `json:"netcheck,omitempty"`
}

// UpdateRequest reports a change in what a node knows about itself, at
// POST /coord/v1/update. Nil fields are unchanged.
type UpdateRequest struct {
	Endpoints *[]netip.AddrPort `json:"endpoints,omitempty"`
	HomeRelay *string           `json:"home_relay,omitempty"`
	Netcheck  *Netcheck         `json:"netcheck,omitempty"`
	// AdvertisedRoutes replaces the subnet routes the node offers to
	// route (--advertise-routes); an empty list withdraws them all.
	AdvertisedRoutes *[]netip.Prefix `json:"advertised_routes,omitempty"`
	// ExitNode is whether the node offers itself as an exit node
	// (--advertise-exit-node).
	ExitNode *bool `json:"exit_node,omitempty"`
}

// Netcheck is a node's latest view of its network, as `meshnode netcheck`
// reports it. The coordinator stores it for operators; it does not fan out.
type Netcheck struct {
	UDP                 bool               `json:"udp"`
	PublicAddr          string             `json:"public_addr,omitempty"`
	MappingVariesByDest bool               `json:"mapping_varies_by_dest"`
	PreferredRelay      string             `json:"preferred_relay,omitempty"`
	RelayLatencyMS      map[string]float64 `json:"relay_latency_ms,omitempty"`
	PortMapping         string             `json:"port_mapping,omitempty"`
}

// MapResponse is one frame of the netmap stream.
type MapResponse struct {
	// Seq increases by one per frame on a stream.
	Seq uint64 `json:"seq"`
	// KeepAlive frames carry nothing else; they keep NATs and proxies open.
	KeepAlive bool `json:"keep_alive,omitempty"`
	// Full means: forget everything from earlier frames; Peers is the whole
	// peer list and every other field is set.
	Full bool  `json:"full,omitempty"`
	Self *Node `json:"self,omitempty"` // nil: unchanged
	// Peers is the complete peer list, only in a full frame.
	Peers []Node `json:"peers,omitempty"`
	// PeersChanged are peers that were added or changed: replace by ID.
	PeersChanged []Node `json:"peers_changed,omitempty"`
	// PeersChangedPatch updates fields of peers the node already has,
	// cheaper than a whole record: today a peer going online or offline.
	PeersChangedPatch []PeerChange `json:"peers_changed_patch,omitempty"`
	// PeersRemoved are peers this node may no longer see (deleted, expired or
	// no longer allowed by policy).
	PeersRemoved []NodeID  `json:"peers_removed,omitempty"`
	RelayMap     *RelayMap `json:"relay_map,omitempty"` // nil: unchanged
	DNS          *DNS      `json:"dns,omitempty"`       // nil: unchanged
	// PacketFilter is this node's inbound filter; nil: unchanged. An empty
	// filter (no rules) drops every inbound packet from peers.
	PacketFilter *Filter `json:"packet_filter,omitempty"`
	// Admission is a fresh relay admission token; nil: unchanged. The
	// coordinator sends a new one once half of the previous one's life is over.
	Admission *Admission `json:"admission,omitempty"`
}

// PeerChange patches one peer; nil fields are unchanged. A patch for a
// peer the node does not have is ignored.
type PeerChange struct {
	ID       NodeID     `json:"id"`
	Online   *bool      `json:"online,omitempty"`
	LastSeen *time.Time `json:"last_seen,omitempty"`
}

// Admission carries a relay admission token (see package admit).
type Admission struct {
	Token   string    `json:"token"` // admit text form
	Expires time.Time `json:"expires"`
}

// DNS is the mesh's name resolution settings.
type DNS struct {
	// Domain is the suffix under which node names resolve (name.Domain).
	Domain   string `json:"domain"`
	MagicDNS bool   `json:"magic_dns"`
	// Nameservers answer every name not under Domain, a Split suffix or
	// an extra record; empty: the resolvers the node's OS had before.
	Nameservers []netip.Addr `json:"nameservers,omitempty"`
	// SearchDomains follow Domain in the node's search list.
	SearchDomains []string `json:"search_domains,omitempty"`
	// Split maps a DNS suffix to the nameservers for names under it.
	Split map[string][]netip.Addr `json:"split,omitempty"`
	// ExtraRecords answer as written, inside Domain or not.
	ExtraRecords []DNSRecord `json:"extra_records,omitempty"`
}

// DNSRecord is one extra record: Type is "A", "AAAA" or "CNAME"; Value an
// address or (CNAME) a name.
type DNSRecord struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Value string `json:"value"`
}

// Filter is a node's inbound packet filter: a packet from a peer is accepted
// when any rule matches it; everything else from the mesh is dropped.
type Filter struct {
	Rules []FilterRule `json:"rules"`
}

// FilterRule accepts packets from any of SrcIPs to any of DstPorts.
type FilterRule struct {
	// SrcIPs are prefixes; "*" (encoded as 0.0.0.0/0) means any source.
	SrcIPs   []netip.Prefix `json:"src_ips"`
	DstPorts []PortRange    `json:"dst_ports"`
}

// PortRange is a destination prefix and an inclusive port range. First 0 and
// Last 65535 mean any port.
type PortRange struct {
	Dst   netip.Prefix `json:"dst"`
	First uint16       `json:"first"`
	Last  uint16       `json:"last"`
}

// RelayMap is the fleet of relays, by region.
type RelayMap struct {
	Regions []Region `json:"regions"`
}

// Region is a group of relays that mesh with each other and forward one hop.
type Region struct {
	Code   string  `json:"code"` // short, DNS-label-like: "nyc"
	Name   string  `json:"name,omitempty"`
	Lat    float64 `json:"lat,omitempty"`
	Lon    float64 `json:"lon,omitempty"`
	Relays []Relay `json:"relays"`
	// Operator preferences for home-relay choice (package geo). Weight
	// multiplies the region's measured latency (0 means 1); Pinned makes
	// every node choose the region whenever it is usable; Excluded keeps
	// nodes from choosing it as home (they still reach peers homed there).
	Weight   float64 `json:"weight,omitempty"`
	Pinned   bool    `json:"pinned,omitempty"`
	Excluded bool    `json:"excluded,omitempty"`
}

// Relay states.
const (
	RelayUp         = "up"         // heartbeating and healthy
	RelayDown       = "down"       // silent past the heartbeat deadline
	RelayDraining   = "draining"   // restarting: no new clients
	RelayOverloaded = "overloaded" // healthy but full: avoid if possible
	RelayStatic     = "static"     // from --relay-map: no heartbeats, assumed up
)

// Relay is one relay server.
type Relay struct {
	Name string          `json:"name"`
	Addr string          `json:"addr"` // host:port, UDP for QUIC and STUN, TCP for the fallback
	Pin  string          `json:"pin"`  // tlspin pin of its certificate
	Key  key.RelayPublic `json:"key"`
	// Healthy is State == up or static: nodes may pick it.
	Healthy bool   `json:"healthy"`
	State   string `json:"state"`
}

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
	// Code, when set, is a stable machine-readable reason clients branch on
	// (one of the ErrorCode constants); Error stays the human sentence.
	Code ErrorCode `json:"code,omitempty"`
}

// ErrorCode is a stable reason in an ErrorResponse.
type ErrorCode string

// Error codes. A client that gets NodeUnknown or NodeExpired must not retry
// at its normal pace: it has been deleted or has expired, and only an
// operator (or a new registration) changes that.
const (
	// CodeNodeUnknown: the node key is not registered (never, or deleted).
	CodeNodeUnknown ErrorCode = "node_unknown"
	// CodeNodeExpired: the node key's expiry has passed.
	CodeNodeExpired ErrorCode = "node_expired"
)

// ServerInfo answers GET /coord/v1/info: what a client needs before its
// first authenticated request.
type ServerInfo struct {
	Version CapabilityVersion `json:"version"`
	// Key is the coordinator's Curve25519 key; proofs are sealed to it.
	Key key.CoordPublic `json:"key"`
	// AdmitKeys verify relay admission tokens.
	AdmitKeys []key.SigningPublic `json:"admit_keys"`
}
