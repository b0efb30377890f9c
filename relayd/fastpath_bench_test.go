package relayd

import (
	"crypto/hmac"
	"crypto/sha256"
	"net/netip"
	"testing"

	"golang.org/x/crypto/blake2s"

	"github.com/wiremesh/wiremesh/relayproto"
)

// BenchmarkFastPathAuth compares what authenticating one 1280-byte
// fast-path datagram costs: the address check relayd does against the
// cheapest keyed MACs a per-session-key design would need (BENCHMARKS.md,
// "Fast-path authentication").
func BenchmarkFastPathAuth(b *testing.B) {
	d := make([]byte, relayproto.FastSendOverhead+1280)
	validated := netip.MustParseAddrPort("198.18.0.7:41641")
	from := validated
	key := make([]byte, 32)
	b.Run("address-check", func(b *testing.B) {
		b.SetBytes(int64(len(d)))
		ok := 0
		for b.Loop() {
			if from == validated {
				ok++
			}
		}
		_ = ok
	})
	b.Run("hmac-sha256-trunc8", func(b *testing.B) {
		b.SetBytes(int64(len(d)))
		h := hmac.New(sha256.New, key)
		var sum []byte
		for b.Loop() {
			h.Reset()
			h.Write(d)
			sum = h.Sum(sum[:0])
		}
		_ = sum[:8]
	})
	b.Run("blake2s-128-keyed", func(b *testing.B) {
		b.SetBytes(int64(len(d)))
		h, _ := blake2s.New128(key)
		var sum []byte
		for b.Loop() {
			h.Reset()
			h.Write(d)
			sum = h.Sum(sum[:0])
		}
		_ = sum
	})
}
