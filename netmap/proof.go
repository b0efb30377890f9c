package netmap

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// Proof of possession. Every request a node or relay makes carries
//
//	Wiremesh-Proof: <public key text> <base64url sealed box>
//
// The box is sealed with NaCl box from the client's private key (node or
// relay) to the coordinator's Curve25519 key (ServerInfo.Key), so only the
// holder of that private key can make it. Its plaintext binds it to one
// request at one moment:
//
//	unix milliseconds  8 bytes big-endian
//	digest            32 bytes SHA-256(method " " path "\n" body)
//
// The server accepts a proof within ProofWindow of its clock and remembers
// the box nonces it accepted for that long, so a captured proof can be
// replayed neither later nor twice.
const ProofHeader = "Wiremesh-Proof"

// ProofWindow is how far a proof's time may be from the server's clock. Two
// minutes tolerates ordinary clock drift; the replay cache holds nonces for
// this long.
const ProofWindow = 2 * time.Minute

const (
	proofPlainLen = 8 + sha256.Size
	proofSealLen  = proofPlainLen + key.Overhead
	// maxProofHeader bounds the header before parsing: prefix, 64 hex
	// digits, space, base64 of the box.
	maxProofHeader = 200
)

// Proof errors, for callers that branch and for metrics.
var (
	ErrProofMissing   = errors.New("proof of possession missing")
	ErrProofMalformed = errors.New("proof of possession malformed")
	ErrProofInvalid   = errors.New("proof of possession does not open with this key")
	ErrProofStale     = errors.New("proof of possession outside the time window")
	ErrProofMismatch  = errors.New("proof of possession made for another request")
)

// RequestDigest is the SHA-256 a proof binds to.
func RequestDigest(method, path string, body []byte) [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(method))
	h.Write([]byte{' '})
	h.Write([]byte(path))
	h.Write([]byte{'\n'})
	h.Write(body)
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// MakeProof returns the ProofHeader value for a request, sealed with the
// precomputed shared key between the client's private key and the
// coordinator's key. pub is the client's public key text.
func MakeProof(shared *key.SharedKey, pub string, method, path string, body []byte, now time.Time) string {
	var plain [proofPlainLen]byte
	binary.BigEndian.PutUint64(plain[:8], uint64(now.UnixMilli()))
	d := RequestDigest(method, path, body)
	copy(plain[8:], d[:])
	sealed := shared.Seal(make([]byte, 0, proofSealLen), plain[:])
	return pub + " " + base64.RawURLEncoding.EncodeToString(sealed)
}

// ParseProof splits a ProofHeader value into the public key text and the
// sealed box, checking sizes only.
func ParseProof(h string) (pub string, sealed []byte, err error) {
	if h == "" {
		return "", nil, ErrProofMissing
	}
	if len(h) > maxProofHeader {
		return "", nil, fmt.Errorf("%w: header too long", ErrProofMalformed)
	}
	pub, b64, ok := strings.Cut(h, " ")
	if !ok {
		return "", nil, fmt.Errorf("%w: want \"<key> <box>\"", ErrProofMalformed)
	}
	sealed, err = base64.RawURLEncoding.DecodeString(b64)
	if err != nil || len(sealed) != proofSealLen {
		return "", nil, fmt.Errorf("%w: bad box encoding", ErrProofMalformed)
	}
	return pub, sealed, nil
}

// OpenProof opens sealed with the shared key and checks it against the
// request and now. It returns the box nonce for the caller's replay cache.
func OpenProof(shared *key.SharedKey, sealed []byte, method, path string, body []byte, now time.Time) (nonce [key.NonceLen]byte, err error) {
	plain, err := shared.Open(make([]byte, 0, proofPlainLen), sealed)
	if err != nil || len(plain) != proofPlainLen {
		return nonce, ErrProofInvalid
	}
	ts := time.UnixMilli(int64(binary.BigEndian.Uint64(plain[:8])))
	if d := now.Sub(ts); d > ProofWindow || d < -ProofWindow {
		return nonce, fmt.Errorf("%w: proof time %s, server time %s", ErrProofStale, ts.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	want := RequestDigest(method, path, body)
	if [sha256.Size]byte(plain[8:]) != want {
		return nonce, ErrProofMismatch
	}
	copy(nonce[:], sealed)
	return nonce, nil
}
