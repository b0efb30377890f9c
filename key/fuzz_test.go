package key

import (
	"bytes"
	"testing"
)

// The parsers must never panic, and anything they accept must round-trip to
// the same text.
func FuzzParsePublic(f *testing.F) {
	f.Add(NewNode().Public().String())
	f.Add(NewDisco().Public().String())
	f.Add(NewRelay().Public().String())
	f.Add(NewSigning().Public().String())
	f.Add("nodekey:")
	f.Add("nodekey:zz")
	f.Fuzz(func(t *testing.T, s string) {
		if k, err := ParseNodePublic(s); err == nil && k.String() != s {
			t.Fatalf("node %q -> %q", s, k.String())
		}
		if k, err := ParseDiscoPublic(s); err == nil && k.String() != s {
			t.Fatalf("disco %q -> %q", s, k.String())
		}
		if k, err := ParseRelayPublic(s); err == nil && k.String() != s {
			t.Fatalf("relay %q -> %q", s, k.String())
		}
		if k, err := ParseSigningPublic(s); err == nil && k.String() != s {
			t.Fatalf("signing %q -> %q", s, k.String())
		}
	})
}

func FuzzParsePrivate(f *testing.F) {
	nb, _ := NewNode().MarshalText()
	sb, _ := NewSigning().MarshalText()
	f.Add(nb)
	f.Add(sb)
	f.Add([]byte("privkey:00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var n NodePrivate
		if err := n.UnmarshalText(b); err == nil {
			out, _ := n.MarshalText()
			if !bytes.Equal(out, b) {
				t.Fatalf("node private %q -> %q", b, out)
			}
		}
		var s SigningPrivate
		if err := s.UnmarshalText(b); err == nil {
			out, _ := s.MarshalText()
			if !bytes.Equal(out, b) {
				t.Fatalf("signing private %q -> %q", b, out)
			}
		}
	})
}

func FuzzOpen(f *testing.F) {
	a, b := NewDisco(), NewDisco()
	s := Precompute(a, b.Public())
	f.Add(s.Seal(nil, []byte("hello")))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, sealed []byte) {
		r := Precompute(b, a.Public())
		r.Open(nil, sealed) // must not panic
	})
}
