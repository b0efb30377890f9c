package key

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
)

// SigningPrivate is the coordinator's Ed25519 signing key. It signs relay
// admission tokens so that relays can verify nodes while offline.
type SigningPrivate struct{ seed [ed25519.SeedSize]byte }

// SigningPublic is the public half of a SigningPrivate. Relays trust it.
type SigningPublic struct{ k [ed25519.PublicKeySize]byte }

// NewSigning returns a fresh random signing key.
func NewSigning() SigningPrivate {
	var k SigningPrivate
	if _, err := rand.Read(k.seed[:]); err != nil {
		panic(fmt.Sprintf("key: crypto/rand: %v", err))
	}
	return k
}

func (k SigningPrivate) ed() ed25519.PrivateKey { return ed25519.NewKeyFromSeed(k.seed[:]) }

// Public returns the public half of k.
func (k SigningPrivate) Public() SigningPublic {
	var p SigningPublic
	copy(p.k[:], k.ed().Public().(ed25519.PublicKey))
	return p
}

// IsZero reports whether k is the zero value.
func (k SigningPrivate) IsZero() bool {
	var z [ed25519.SeedSize]byte
	return subtle.ConstantTimeCompare(k.seed[:], z[:]) == 1
}

// Equal reports whether k and o are the same key, in constant time.
func (k SigningPrivate) Equal(o SigningPrivate) bool {
	return subtle.ConstantTimeCompare(k.seed[:], o.seed[:]) == 1
}

// Sign returns the Ed25519 signature of msg.
func (k SigningPrivate) Sign(msg []byte) []byte { return ed25519.Sign(k.ed(), msg) }

// Signer returns a signer that caches the expanded key, for signing many
// messages (the coordinator signs a token per node).
func (k SigningPrivate) Signer() Signer { return Signer{k.ed()} }

// Signer signs with an expanded Ed25519 key.
type Signer struct{ k ed25519.PrivateKey }

// Sign returns the Ed25519 signature of msg.
func (s Signer) Sign(msg []byte) []byte { return ed25519.Sign(s.k, msg) }

// String never reveals the key.
func (k SigningPrivate) String() string { return SignPrivatePrefix + redacted }

// GoString never reveals the key either.
func (k SigningPrivate) GoString() string { return k.String() }

// MarshalText returns "signpriv:<hex seed>", for state files only.
func (k SigningPrivate) MarshalText() ([]byte, error) {
	return appendHex(nil, SignPrivatePrefix, k.seed[:]), nil
}

// UnmarshalText parses "signpriv:<hex seed>".
func (k *SigningPrivate) UnmarshalText(b []byte) error {
	if err := parseHex("signing private key", SignPrivatePrefix, b, k.seed[:]); err != nil {
		return err
	}
	if k.IsZero() {
		return errZero("signing private key")
	}
	return nil
}

// ParseSigningPublic parses "signkey:<hex>".
func ParseSigningPublic(s string) (SigningPublic, error) {
	var k SigningPublic
	err := k.UnmarshalText([]byte(s))
	return k, err
}

// SigningPublicFromRaw returns the signing public key with the given bytes.
func SigningPublicFromRaw(b [ed25519.PublicKeySize]byte) SigningPublic { return SigningPublic{b} }

// Raw returns the key's 32 bytes.
func (k SigningPublic) Raw() [ed25519.PublicKeySize]byte { return k.k }

// IsZero reports whether k is the zero value.
func (k SigningPublic) IsZero() bool { return k == SigningPublic{} }

// Equal reports whether k and o are the same key, in constant time.
func (k SigningPublic) Equal(o SigningPublic) bool {
	return subtle.ConstantTimeCompare(k.k[:], o.k[:]) == 1
}

// Verify reports whether sig is a valid signature of msg by k. A zero key
// never verifies.
func (k SigningPublic) Verify(msg, sig []byte) bool {
	if k.IsZero() || len(sig) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(k.k[:], msg, sig)
}

// String returns "signkey:<hex>".
func (k SigningPublic) String() string {
	b, _ := k.AppendText(nil)
	return string(b)
}

// AppendText implements encoding.TextAppender.
func (k SigningPublic) AppendText(b []byte) ([]byte, error) {
	return appendHex(b, SignPublicPrefix, k.k[:]), nil
}

// MarshalText returns "signkey:<hex>".
func (k SigningPublic) MarshalText() ([]byte, error) { return k.AppendText(nil) }

// UnmarshalText parses "signkey:<hex>".
func (k *SigningPublic) UnmarshalText(b []byte) error {
	return parseHex("signing public key", SignPublicPrefix, b, k.k[:])
}
