package key

import "encoding/hex"

// Kind tags a Curve25519 key with its role, so a disco key can never be passed
// where a node key is wanted. The three kinds are Node, Disco and Relay.
type Kind interface {
	publicPrefix() string
	privatePrefix() string
	name() string
}

// Node is the Kind of node keys: WireGuard static keys and node identities.
type Node struct{}

// Disco is the Kind of disco keys: fresh on each start, they seal disco messages.
type Disco struct{}

// Relay is the Kind of relay keys: a relay's identity, to which clients seal
// their proof of possession.
type Relay struct{}

// Coord is the Kind of the coordinator's Curve25519 key: nodes and relays
// seal their proof of possession of their own keys to it.
type Coord struct{}

func (Node) publicPrefix() string   { return NodePublicPrefix }
func (Node) privatePrefix() string  { return NodePrivatePrefix }
func (Node) name() string           { return "node" }
func (Disco) publicPrefix() string  { return DiscoPublicPrefix }
func (Disco) privatePrefix() string { return DiscoPrivatePrefix }
func (Disco) name() string          { return "disco" }
func (Relay) publicPrefix() string  { return RelayPublicPrefix }
func (Relay) privatePrefix() string { return RelayPrivatePrefix }
func (Relay) name() string          { return "relay" }
func (Coord) publicPrefix() string  { return CoordPublicPrefix }
func (Coord) privatePrefix() string { return CoordPrivatePrefix }
func (Coord) name() string          { return "coordinator" }

// Private is a Curve25519 private key of kind K. The zero value is not a
// valid key. String never reveals it.
type Private[K Kind] struct{ k curvePrivate }

// Public is a Curve25519 public key of kind K. It is comparable and usable as
// a map key; use Equal where timing matters.
type Public[K Kind] struct{ k [Len]byte }

// The concrete key types.
type (
	NodePrivate  = Private[Node]
	NodePublic   = Public[Node]
	DiscoPrivate = Private[Disco]
	DiscoPublic  = Public[Disco]
	RelayPrivate = Private[Relay]
	RelayPublic  = Public[Relay]
	CoordPrivate = Private[Coord]
	CoordPublic  = Public[Coord]
)

// NewNode returns a fresh random node private key.
func NewNode() NodePrivate { return NodePrivate{newCurvePrivate()} }

// NewDisco returns a fresh random disco private key.
func NewDisco() DiscoPrivate { return DiscoPrivate{newCurvePrivate()} }

// NewRelay returns a fresh random relay private key.
func NewRelay() RelayPrivate { return RelayPrivate{newCurvePrivate()} }

// NewCoord returns a fresh random coordinator private key.
func NewCoord() CoordPrivate { return CoordPrivate{newCurvePrivate()} }

// PrivateFromRaw returns the private key of kind K with the given raw bytes.
func PrivateFromRaw[K Kind](b [Len]byte) Private[K] { return Private[K]{curvePrivate(b)} }

// PublicFromRaw returns the public key of kind K with the given raw bytes.
func PublicFromRaw[K Kind](b [Len]byte) Public[K] { return Public[K]{b} }

// ParseNodePublic parses "nodekey:<hex>".
func ParseNodePublic(s string) (NodePublic, error) { return parsePublic[Node](s) }

// ParseDiscoPublic parses "discokey:<hex>".
func ParseDiscoPublic(s string) (DiscoPublic, error) { return parsePublic[Disco](s) }

// ParseRelayPublic parses "relaykey:<hex>".
func ParseRelayPublic(s string) (RelayPublic, error) { return parsePublic[Relay](s) }

// ParseCoordPublic parses "coordkey:<hex>".
func ParseCoordPublic(s string) (CoordPublic, error) { return parsePublic[Coord](s) }

func parsePublic[K Kind](s string) (Public[K], error) {
	var k Public[K]
	err := k.UnmarshalText([]byte(s))
	return k, err
}

// Public returns the public half of k.
func (k Private[K]) Public() Public[K] { return Public[K]{k.k.public()} }

// IsZero reports whether k is the zero value.
func (k Private[K]) IsZero() bool { return k.k.isZero() }

// Equal reports whether k and o are the same key, in constant time.
func (k Private[K]) Equal(o Private[K]) bool { return equal32(k.k, o.k) }

// Raw returns the key's 32 bytes.
func (k Private[K]) Raw() [Len]byte { return k.k }

// UAPI returns the key as wireguard-go's UAPI wants it: 64 lowercase hex digits.
func (k Private[K]) UAPI() string { return hex.EncodeToString(k.k[:]) }

// String never reveals the key: it returns "<prefix>[redacted]".
func (k Private[K]) String() string {
	var kind K
	return kind.privatePrefix() + redacted
}

// GoString never reveals the key either, so %#v is safe.
func (k Private[K]) GoString() string { return k.String() }

// MarshalText returns "<prefix><hex>". It exists for state files only; never
// log its result.
func (k Private[K]) MarshalText() ([]byte, error) {
	var kind K
	return appendHex(nil, kind.privatePrefix(), k.k[:]), nil
}

// UnmarshalText parses "<prefix><hex>".
func (k *Private[K]) UnmarshalText(b []byte) error {
	var kind K
	if err := parseHex(kind.name()+" private key", kind.privatePrefix(), b, k.k[:]); err != nil {
		return err
	}
	if k.IsZero() {
		return errZero(kind.name() + " private key")
	}
	return nil
}

// IsZero reports whether k is the zero value.
func (k Public[K]) IsZero() bool { return k == Public[K]{} }

// Equal reports whether k and o are the same key, in constant time.
func (k Public[K]) Equal(o Public[K]) bool { return equal32(k.k, o.k) }

// Raw returns the key's 32 bytes.
func (k Public[K]) Raw() [Len]byte { return k.k }

// UAPI returns the key as 64 lowercase hex digits, as wireguard-go's UAPI wants.
func (k Public[K]) UAPI() string { return hex.EncodeToString(k.k[:]) }

// ShortString returns an abbreviated form for logs, such as "[1a2b3]".
func (k Public[K]) ShortString() string { return "[" + hex.EncodeToString(k.k[:3])[:5] + "]" }

// String returns "<prefix><hex>", for example "nodekey:1a2b…".
func (k Public[K]) String() string {
	b, _ := k.AppendText(nil)
	return string(b)
}

// AppendText implements encoding.TextAppender.
func (k Public[K]) AppendText(b []byte) ([]byte, error) {
	var kind K
	return appendHex(b, kind.publicPrefix(), k.k[:]), nil
}

// MarshalText returns "<prefix><hex>".
func (k Public[K]) MarshalText() ([]byte, error) { return k.AppendText(nil) }

// UnmarshalText parses "<prefix><hex>".
func (k *Public[K]) UnmarshalText(b []byte) error {
	var kind K
	return parseHex(kind.name()+" public key", kind.publicPrefix(), b, k.k[:])
}
