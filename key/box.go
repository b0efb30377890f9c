package key

import (
	"crypto/rand"
	"errors"
	"fmt"

	"golang.org/x/crypto/nacl/box"
)

// Sealed-box layout: a 24-byte random nonce, then NaCl box output (16-byte
// Poly1305 tag plus ciphertext). Overhead is what sealing adds to a message.
const (
	NonceLen = 24
	Overhead = NonceLen + box.Overhead
)

// ErrOpen is returned when a sealed message fails to authenticate or is too
// short to hold a nonce and tag.
var ErrOpen = errors.New("key: sealed message failed to open")

// SharedKey is a precomputed NaCl box key between one private and one public
// key. Precompute once per peer and reuse it: sealing then costs one
// XSalsa20-Poly1305 pass, with no Curve25519 multiplication.
type SharedKey struct{ k [Len]byte }

// Precompute returns the shared key between priv and peer. The two may be of
// different kinds (a node key sealing to a relay key).
func Precompute[A, B Kind](priv Private[A], peer Public[B]) SharedKey {
	var s SharedKey
	pk, sk := peer.Raw(), priv.Raw()
	box.Precompute(&s.k, &pk, &sk)
	return s
}

// Seal appends the sealed form of msg (nonce, tag, ciphertext) to dst.
func (s *SharedKey) Seal(dst, msg []byte) []byte {
	var nonce [NonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		panic(fmt.Sprintf("key: crypto/rand: %v", err))
	}
	dst = append(dst, nonce[:]...)
	return box.SealAfterPrecomputation(dst, msg, &nonce, &s.k)
}

// Open authenticates and decrypts sealed and appends the plaintext to dst. It
// returns ErrOpen if sealed is malformed or was not sealed with this key pair.
func (s *SharedKey) Open(dst, sealed []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return nil, ErrOpen
	}
	var nonce [NonceLen]byte
	copy(nonce[:], sealed)
	out, ok := box.OpenAfterPrecomputation(dst, sealed[NonceLen:], &nonce, &s.k)
	if !ok {
		return nil, ErrOpen
	}
	return out, nil
}

// Seal seals msg from priv to peer. For repeated use, Precompute instead.
func Seal[A, B Kind](priv Private[A], peer Public[B], msg []byte) []byte {
	s := Precompute(priv, peer)
	return s.Seal(nil, msg)
}

// Open opens a message that peer sealed to priv.
func Open[A, B Kind](priv Private[A], peer Public[B], sealed []byte) ([]byte, error) {
	s := Precompute(priv, peer)
	return s.Open(nil, sealed)
}
