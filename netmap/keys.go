package netmap

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/wiremesh/wiremesh/tlspin"
)

// Text forms of the secrets the coordinator prints. Each carries the
// coordinator's certificate pin, so the key plus the coordinator URL is all
// a node or relay needs to reach it securely:
//
//	wmauth.<32 hex digits secret>.<pin without "sha256/">   node auth key
//	wmjoin.<32 hex digits secret>.<pin without "sha256/">   relay join key
const (
	AuthKeyPrefix = "wmauth."
	JoinKeyPrefix = "wmjoin."
)

// secretLen is the length of a key's random secret: 128 bits, beyond guessing.
const secretLen = 16

// maxKeyText bounds key text before parsing: prefix, 32 hex, dot, 43 base64.
const maxKeyText = 128

// ErrBadAuthKey is wrapped by every parse error of an auth or join key.
var ErrBadAuthKey = errors.New("malformed key")

// Secret is the random part of an auth or join key. The coordinator stores
// only its hash.
type Secret [secretLen]byte

// NewSecret returns a random secret.
func NewSecret() Secret {
	var s Secret
	rand.Read(s[:])
	return s
}

// Hash returns the hex SHA-256 of the secret, as stored.
func (s Secret) Hash() string {
	h := sha256.Sum256(s[:])
	return hex.EncodeToString(h[:])
}

// String returns the secret in hex.
func (s Secret) String() string { return hex.EncodeToString(s[:]) }

// Equal compares in constant time.
func (s Secret) Equal(o Secret) bool { return subtle.ConstantTimeCompare(s[:], o[:]) == 1 }

// ParseSecret parses 32 hex digits.
func ParseSecret(t string) (Secret, error) {
	var s Secret
	if len(t) != hex.EncodedLen(secretLen) {
		return s, fmt.Errorf("%w: secret must have %d hex digits", ErrBadAuthKey, hex.EncodedLen(secretLen))
	}
	if _, err := hex.Decode(s[:], []byte(t)); err != nil {
		return s, fmt.Errorf("%w: secret is not hex", ErrBadAuthKey)
	}
	return s, nil
}

// FormatAuthKey returns the text form of a node auth key.
func FormatAuthKey(s Secret, pin string) string { return formatKey(AuthKeyPrefix, s, pin) }

// FormatJoinKey returns the text form of a relay join key.
func FormatJoinKey(s Secret, pin string) string { return formatKey(JoinKeyPrefix, s, pin) }

func formatKey(prefix string, s Secret, pin string) string {
	return prefix + s.String() + "." + strings.TrimPrefix(pin, tlspin.Prefix)
}

// ParseAuthKey splits a node auth key into its secret and the coordinator's
// certificate pin ("sha256/...").
func ParseAuthKey(t string) (Secret, string, error) { return parseKey(AuthKeyPrefix, "auth key", t) }

// ParseJoinKey splits a relay join key into its secret and pin.
func ParseJoinKey(t string) (Secret, string, error) { return parseKey(JoinKeyPrefix, "join key", t) }

func parseKey(prefix, what, t string) (Secret, string, error) {
	t = strings.TrimSpace(t)
	if len(t) > maxKeyText {
		return Secret{}, "", fmt.Errorf("%w: %s too long", ErrBadAuthKey, what)
	}
	if !strings.HasPrefix(t, prefix) {
		return Secret{}, "", fmt.Errorf("%w: %s must start with %q", ErrBadAuthKey, what, prefix)
	}
	sec, pin, ok := strings.Cut(t[len(prefix):], ".")
	if !ok {
		return Secret{}, "", fmt.Errorf("%w: %s has no pin part", ErrBadAuthKey, what)
	}
	s, err := ParseSecret(sec)
	if err != nil {
		return Secret{}, "", fmt.Errorf("%s: %w", what, err)
	}
	pin = tlspin.Prefix + pin
	if !tlspin.ValidPin(pin) {
		return Secret{}, "", fmt.Errorf("%w: %s carries an invalid certificate pin", ErrBadAuthKey, what)
	}
	return s, pin, nil
}
