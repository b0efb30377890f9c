// Package admit implements relay admission tokens: short-lived statements,
// signed by the coordinator's Ed25519 key, that a given node key may use the
// relays (optionally of one region only) until an expiry time.
//
// A token alone is not enough to use a relay: the relay handshake also proves
// possession of the node's private key, so a stolen token is useless. Relays
// verify tokens offline against the coordinator public keys they trust.
//
// Wire layout (all integers big-endian), then base64url without padding in
// text form:
//
//	version   1 byte  (1)
//	keyID     8 bytes first 8 bytes of the signer's public key
//	nodeKey  32 bytes the node public key the token is bound to
//	issued    8 bytes unix seconds
//	expires   8 bytes unix seconds
//	regionLen 1 byte  0 means any region
//	region    regionLen bytes
//	sig      64 bytes Ed25519 over domain || all bytes above
package admit

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// Version is the only token version this package issues and accepts.
const Version = 1

// Limits. MaxRegionLen matches the region codes used in relay maps (short,
// DNS-label-like). MaxLen bounds what a relay reads before rejecting.
const (
	MaxRegionLen = 32
	fixedLen     = 1 + 8 + key.Len + 8 + 8 + 1 + ed25519.SignatureSize
	MaxLen       = fixedLen + MaxRegionLen
	MaxTextLen   = (MaxLen*8 + 5) / 6
)

// ClockSkew is how far in the future an issue time may be before a token is
// refused. Relays and coordinators are not assumed to share a tight clock.
const ClockSkew = 5 * time.Minute

// DefaultLifetime is how long coordinators make tokens valid. Nodes refresh a
// token once half of it has elapsed (see NeedsRefresh), so a coordinator
// outage shorter than half the lifetime never interrupts relay access.
const DefaultLifetime = 12 * time.Hour

// domain separates token signatures from every other use of the key.
const domain = "wiremesh admission token v1\x00"

// Rejection reasons. Relays count rejections by these (see Reason).
var (
	ErrMissing      = errors.New("admission token missing")
	ErrMalformed    = errors.New("admission token malformed")
	ErrExpired      = errors.New("admission token expired")
	ErrNotYetValid  = errors.New("admission token issued in the future")
	ErrForeign      = errors.New("admission token signed by an untrusted key")
	ErrBadSignature = errors.New("admission token signature invalid")
	ErrWrongNode    = errors.New("admission token bound to another node key")
	ErrWrongRegion  = errors.New("admission token not valid for this region")
)

// Reason returns a short, stable label for a Verify error, for metrics.
func Reason(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrMissing):
		return "token_missing"
	case errors.Is(err, ErrMalformed):
		return "token_malformed"
	case errors.Is(err, ErrExpired):
		return "token_expired"
	case errors.Is(err, ErrNotYetValid):
		return "token_future"
	case errors.Is(err, ErrForeign):
		return "token_foreign"
	case errors.Is(err, ErrBadSignature):
		return "token_bad_signature"
	case errors.Is(err, ErrWrongNode):
		return "token_wrong_node"
	case errors.Is(err, ErrWrongRegion):
		return "token_wrong_region"
	}
	return "other"
}

// Token is a decoded admission token.
type Token struct {
	KeyID   [8]byte
	Node    key.NodePublic
	Issued  time.Time
	Expires time.Time
	Region  string // empty: any region
	Sig     [ed25519.SignatureSize]byte
}

// KeyID returns the 8-byte identifier of a signing public key.
func KeyID(k key.SigningPublic) [8]byte {
	var id [8]byte
	raw := k.Raw()
	copy(id[:], raw[:])
	return id
}

// Issue returns a signed token binding node to region (empty for any) for
// lifetime from now, in binary form.
func Issue(signer key.SigningPrivate, node key.NodePublic, region string, now time.Time, lifetime time.Duration) ([]byte, error) {
	return IssueWith(signer.Signer(), signer.Public(), node, region, now, lifetime)
}

// IssueWith is Issue with a cached Signer, for coordinators that sign many.
func IssueWith(s key.Signer, pub key.SigningPublic, node key.NodePublic, region string, now time.Time, lifetime time.Duration) ([]byte, error) {
	if len(region) > MaxRegionLen {
		return nil, fmt.Errorf("admit: region %q longer than %d bytes", region, MaxRegionLen)
	}
	t := Token{KeyID: KeyID(pub), Node: node, Issued: now, Expires: now.Add(lifetime), Region: region}
	body := t.appendBody(make([]byte, 0, MaxLen))
	sig := s.Sign(append([]byte(domain), body...))
	return append(body, sig...), nil
}

// IssueText is Issue in text form.
func IssueText(signer key.SigningPrivate, node key.NodePublic, region string, now time.Time, lifetime time.Duration) (string, error) {
	b, err := Issue(signer, node, region, now, lifetime)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func (t *Token) appendBody(b []byte) []byte {
	b = append(b, Version)
	b = append(b, t.KeyID[:]...)
	raw := t.Node.Raw()
	b = append(b, raw[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(t.Issued.Unix()))
	b = binary.BigEndian.AppendUint64(b, uint64(t.Expires.Unix()))
	b = append(b, byte(len(t.Region)))
	return append(b, t.Region...)
}

// Parse decodes a binary token without checking its signature.
func Parse(b []byte) (Token, error) {
	var t Token
	if len(b) == 0 {
		return t, ErrMissing
	}
	if len(b) < fixedLen || len(b) > MaxLen {
		return t, fmt.Errorf("%w: length %d", ErrMalformed, len(b))
	}
	if b[0] != Version {
		return t, fmt.Errorf("%w: version %d", ErrMalformed, b[0])
	}
	p := b[1:]
	copy(t.KeyID[:], p)
	p = p[8:]
	var nk [key.Len]byte
	copy(nk[:], p)
	t.Node = key.PublicFromRaw[key.Node](nk)
	p = p[key.Len:]
	t.Issued = time.Unix(int64(binary.BigEndian.Uint64(p)), 0)
	t.Expires = time.Unix(int64(binary.BigEndian.Uint64(p[8:])), 0)
	p = p[16:]
	rl := int(p[0])
	p = p[1:]
	if rl > MaxRegionLen || len(p) != rl+ed25519.SignatureSize {
		return t, fmt.Errorf("%w: region length %d does not match token length", ErrMalformed, rl)
	}
	t.Region = string(p[:rl])
	copy(t.Sig[:], p[rl:])
	return t, nil
}

// ParseText decodes a text token without checking its signature.
func ParseText(s string) (Token, []byte, error) {
	if s == "" {
		return Token{}, nil, ErrMissing
	}
	if len(s) > MaxTextLen {
		return Token{}, nil, fmt.Errorf("%w: text length %d", ErrMalformed, len(s))
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Token{}, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	t, err := Parse(b)
	return t, b, err
}

// Verify checks a binary token: well formed, signed by one of trusted, bound
// to node, valid for region (a token with no region is valid everywhere) and
// within its validity window at now. It does no allocation proportional to
// untrusted input beyond the bounded token itself.
func Verify(b []byte, trusted []key.SigningPublic, node key.NodePublic, region string, now time.Time) (Token, error) {
	t, err := Parse(b)
	if err != nil {
		return t, err
	}
	var signer *key.SigningPublic
	for i := range trusted {
		if KeyID(trusted[i]) == t.KeyID {
			signer = &trusted[i]
			break
		}
	}
	if signer == nil {
		return t, ErrForeign
	}
	body := b[:len(b)-ed25519.SignatureSize]
	msg := make([]byte, 0, len(domain)+len(body))
	msg = append(append(msg, domain...), body...)
	if !signer.Verify(msg, t.Sig[:]) {
		return t, ErrBadSignature
	}
	if !t.Node.Equal(node) {
		return t, ErrWrongNode
	}
	if t.Region != "" && t.Region != region {
		return t, fmt.Errorf("%w: token is for %q", ErrWrongRegion, t.Region)
	}
	if now.Before(t.Issued.Add(-ClockSkew)) {
		return t, ErrNotYetValid
	}
	if !now.Before(t.Expires) {
		return t, fmt.Errorf("%w at %s", ErrExpired, t.Expires.UTC().Format(time.RFC3339))
	}
	return t, nil
}

// NeedsRefresh reports whether a holder should fetch a new token: once half
// of its lifetime has passed.
func (t Token) NeedsRefresh(now time.Time) bool {
	half := t.Issued.Add(t.Expires.Sub(t.Issued) / 2)
	return !now.Before(half)
}
