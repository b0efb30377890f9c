// Package admit implements relay admission tokens: short-lived statements,
// signed by the coordinator's Ed25519 key, that a given node key may use the
// relays of the listed regions (or of any region) until an expiry time.
//
// A token alone is not enough to use a relay: the relay handshake also proves
// possession of the node's private key, so a stolen token is useless. Relays
// verify tokens offline against the coordinator public keys they trust.
//
// Wire layout (all integers big-endian), then base64url without padding in
// text form. Version 2, what coordinators issue:
//
//	version   1 byte  (2)
//	keyID     8 bytes first 8 bytes of the signer's public key
//	nodeKey  32 bytes the node public key the token is bound to
//	issued    8 bytes unix seconds
//	expires   8 bytes unix seconds
//	nRegions  1 byte  0 means any region; at most MaxRegions
//	regions   nRegions times: len 1 byte (1..MaxRegionLen), then the code
//	sig      64 bytes Ed25519 over domain || all bytes above
//
// Version 1, still accepted (and made by Issue, for tests and tools), has
// one region instead of a list: regionLen 1 byte (0: any), then the code.
package admit

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// Token versions: VersionRegion carries one region (or none), VersionRegions
// a list. Both are accepted; coordinators issue VersionRegions.
const (
	VersionRegion  = 1
	VersionRegions = 2
	// Version is the newest version.
	Version = VersionRegions
)

// Limits. MaxRegionLen matches the region codes used in relay maps (short,
// DNS-label-like). MaxRegions bounds a token's region list: a fleet with
// more regions than that gets tokens valid in any region (see
// IssueRegions). MaxLen bounds what a relay reads before rejecting.
const (
	MaxRegionLen = 32
	MaxRegions   = 16
	fixedLen     = 1 + 8 + key.Len + 8 + 8 + 1 + ed25519.SignatureSize
	MaxLen       = fixedLen + MaxRegions*(1+MaxRegionLen)
	MaxTextLen   = (MaxLen*8 + 5) / 6
)

// ClockSkew is how far in the future an issue time may be before a token is
// refused. Relays and coordinators are not assumed to share a tight clock.
const ClockSkew = 5 * time.Minute

// DefaultLifetime is how long coordinators make tokens valid: one hour.
// The coordinator pushes a fresh token down the netmap stream once half of
// one has elapsed (see NeedsRefresh), so a coordinator outage shorter than
// 30 minutes never stops a node from (re)connecting to relays, while a
// deleted node's tokens, and the relays' revocation entries for it, die
// within the hour. Refresh costs one signature per node per half hour.
const DefaultLifetime = time.Hour

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
	// Regions are the region codes the token is valid in; empty means any
	// region. A version 1 token has at most one.
	Regions []string
	Sig     [ed25519.SignatureSize]byte
	version byte
}

// ValidIn reports whether the token may be used at a relay of region.
func (t *Token) ValidIn(region string) bool {
	return len(t.Regions) == 0 || slices.Contains(t.Regions, region)
}

// KeyID returns the 8-byte identifier of a signing public key.
func KeyID(k key.SigningPublic) [8]byte {
	var id [8]byte
	raw := k.Raw()
	copy(id[:], raw[:])
	return id
}

// Issue returns a signed version 1 token binding node to region (empty for
// any) for lifetime from now, in binary form.
func Issue(signer key.SigningPrivate, node key.NodePublic, region string, now time.Time, lifetime time.Duration) ([]byte, error) {
	return IssueWith(signer.Signer(), signer.Public(), node, region, now, lifetime)
}

// IssueWith is Issue with a cached Signer, for coordinators that sign many.
func IssueWith(s key.Signer, pub key.SigningPublic, node key.NodePublic, region string, now time.Time, lifetime time.Duration) ([]byte, error) {
	if len(region) > MaxRegionLen {
		return nil, fmt.Errorf("admit: region %q longer than %d bytes", region, MaxRegionLen)
	}
	t := Token{KeyID: KeyID(pub), Node: node, Issued: now, Expires: now.Add(lifetime), version: VersionRegion}
	if region != "" {
		t.Regions = []string{region}
	}
	return t.sign(s), nil
}

// IssueRegions returns a signed version 2 token binding node to the given
// regions (none: any region) until expires.
func IssueRegions(s key.Signer, pub key.SigningPublic, node key.NodePublic, regions []string, now, expires time.Time) ([]byte, error) {
	if len(regions) > MaxRegions {
		return nil, fmt.Errorf("admit: %d regions, at most %d", len(regions), MaxRegions)
	}
	for _, r := range regions {
		if r == "" || len(r) > MaxRegionLen {
			return nil, fmt.Errorf("admit: region %q empty or longer than %d bytes", r, MaxRegionLen)
		}
	}
	t := Token{KeyID: KeyID(pub), Node: node, Issued: now, Expires: expires, Regions: regions, version: VersionRegions}
	return t.sign(s), nil
}

func (t *Token) sign(s key.Signer) []byte {
	body := t.appendBody(make([]byte, 0, MaxLen))
	sig := s.Sign(append([]byte(domain), body...))
	return append(body, sig...)
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
	b = append(b, t.version)
	b = append(b, t.KeyID[:]...)
	raw := t.Node.Raw()
	b = append(b, raw[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(t.Issued.Unix()))
	b = binary.BigEndian.AppendUint64(b, uint64(t.Expires.Unix()))
	if t.version == VersionRegion {
		if len(t.Regions) == 0 {
			return append(b, 0)
		}
		b = append(b, byte(len(t.Regions[0])))
		return append(b, t.Regions[0]...)
	}
	b = append(b, byte(len(t.Regions)))
	for _, r := range t.Regions {
		b = append(b, byte(len(r)))
		b = append(b, r...)
	}
	return b
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
	t.version = b[0]
	if t.version != VersionRegion && t.version != VersionRegions {
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
	n := int(p[0])
	p = p[1:]
	if t.version == VersionRegion {
		if n > MaxRegionLen || len(p) != n+ed25519.SignatureSize {
			return t, fmt.Errorf("%w: region length %d does not match token length", ErrMalformed, n)
		}
		if n > 0 {
			t.Regions = []string{string(p[:n])}
		}
		p = p[n:]
	} else {
		if n > MaxRegions {
			return t, fmt.Errorf("%w: %d regions", ErrMalformed, n)
		}
		for range n {
			if len(p) < 1+ed25519.SignatureSize {
				return t, fmt.Errorf("%w: region list truncated", ErrMalformed)
			}
			rl := int(p[0])
			if rl == 0 || rl > MaxRegionLen || len(p) < 1+rl+ed25519.SignatureSize {
				return t, fmt.Errorf("%w: region length %d", ErrMalformed, rl)
			}
			t.Regions = append(t.Regions, string(p[1:1+rl]))
			p = p[1+rl:]
		}
		if len(p) != ed25519.SignatureSize {
			return t, fmt.Errorf("%w: %d bytes after the region list", ErrMalformed, len(p)-ed25519.SignatureSize)
		}
	}
	copy(t.Sig[:], p)
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
// to node, valid for region (listed in the token's regions; a token with no
// region is valid everywhere) and
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
	if !t.ValidIn(region) {
		return t, fmt.Errorf("%w: token is for %s, not %q", ErrWrongRegion, strings.Join(t.Regions, ","), region)
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
