// Package key holds Wiremesh's long-lived and per-run key types: node keys
// (the WireGuard static key and a node's identity everywhere), disco keys
// (fresh each start, used only to seal disco messages), relay keys (a relay's
// Curve25519 identity, the target of a client's proof of possession) and the
// coordinator's Ed25519 signing key.
//
// Public keys have a stable text form, "<prefix>:<64 hex digits>", used in
// JSON, logs and the CLI. Private keys never print through String; they are
// marshalled only by MarshalText, for storage in files written with 0600
// permissions (see WriteFileAtomic).
//
// All comparisons of key material are constant time.
package key

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/curve25519"
)

// Text prefixes. They are part of the external interface (key files, CLI
// and JSON output): changing one breaks every stored state
// directory and every script that greps them.
const (
	NodePublicPrefix   = "nodekey:"
	NodePrivatePrefix  = "privkey:"
	DiscoPublicPrefix  = "discokey:"
	DiscoPrivatePrefix = "discopriv:"
	RelayPublicPrefix  = "relaykey:"
	RelayPrivatePrefix = "relaypriv:"
	CoordPublicPrefix  = "coordkey:"
	CoordPrivatePrefix = "coordpriv:"
	SignPublicPrefix   = "signkey:"
	SignPrivatePrefix  = "signpriv:"
)

// Len is the length in bytes of a Curve25519 key.
const Len = 32

// ErrBadKey is wrapped by every parse error, so callers can tell malformed key
// text apart from I/O failures.
var ErrBadKey = errors.New("bad key")

// redacted is what String prints for any private key.
const redacted = "[redacted]"

// parseHex parses "<prefix><hex>" into out, which must have len(out)*2 hex
// digits after the prefix.
func parseHex(kind, prefix string, text []byte, out []byte) error {
	s := string(text)
	if !strings.HasPrefix(s, prefix) {
		return fmt.Errorf("%w: %s must start with %q", ErrBadKey, kind, prefix)
	}
	s = s[len(prefix):]
	if len(s) != hex.EncodedLen(len(out)) {
		return fmt.Errorf("%w: %s must have %d hex digits, got %d", ErrBadKey, kind, hex.EncodedLen(len(out)), len(s))
	}
	// Only lowercase hex is accepted, so every key has one text form and
	// text can be compared or used as a map key.
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("%w: %s: invalid character %q at %d (want lowercase hex)", ErrBadKey, kind, c, len(prefix)+i)
		}
	}
	if _, err := hex.Decode(out, []byte(s)); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrBadKey, kind, err)
	}
	return nil
}

// appendHex appends "<prefix><hex of b>" to dst.
func appendHex(dst []byte, prefix string, b []byte) []byte {
	dst = append(dst, prefix...)
	return hex.AppendEncode(dst, b)
}

// curvePrivate is the shared implementation of the Curve25519 private key types.
type curvePrivate [Len]byte

func newCurvePrivate() curvePrivate {
	var k curvePrivate
	if _, err := rand.Read(k[:]); err != nil {
		// crypto/rand never fails on supported platforms (Go 1.24+ panics
		// inside Read instead of returning an error).
		panic(fmt.Sprintf("key: crypto/rand: %v", err))
	}
	// Clamp as RFC 7748 describes; wireguard-go clamps the same way.
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k
}

func (k curvePrivate) public() [Len]byte {
	var pub [Len]byte
	p, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil {
		// Only possible for a low-order result, which a clamped scalar times
		// the base point cannot produce.
		panic(fmt.Sprintf("key: X25519: %v", err))
	}
	copy(pub[:], p)
	return pub
}

func (k curvePrivate) isZero() bool {
	var z curvePrivate
	return subtle.ConstantTimeCompare(k[:], z[:]) == 1
}

func equal32(a, b [Len]byte) bool {
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

func errZero(kind string) error { return fmt.Errorf("%w: %s is all zeros", ErrBadKey, kind) }
