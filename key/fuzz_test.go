package key

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
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

// FuzzKeyFile writes fuzzed bytes as a key file and reads them back with
// ReadKeyFile and LoadOrCreate, for each private key type kept in files:
// they must return an error or a key whose file text round-trips, and
// LoadOrCreate must never replace a file it could not parse.
func FuzzKeyFile(f *testing.F) {
	for _, k := range []interface{ MarshalText() ([]byte, error) }{NewNode(), NewDisco(), NewRelay(), NewSigning(), NewCoord()} {
		b, _ := k.MarshalText()
		f.Add(b, uint8(0))
		f.Add(append(b, '\n'), uint8(0))
	}
	f.Add([]byte("privkey:"), uint8(0o44))
	f.Add([]byte{}, uint8(0))
	f.Add(bytes.Repeat([]byte("a"), maxKeyFile+1), uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, mode uint8) {
		path := filepath.Join(t.TempDir(), "k.key")
		perm := FileMode | fs.FileMode(mode&0o77)
		if err := os.WriteFile(path, b, perm); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, perm)
		check := func(name string, k interface {
			UnmarshalText([]byte) error
			MarshalText() ([]byte, error)
		}) {
			if err := ReadKeyFile(path, k); err != nil {
				return
			}
			if perm&0o77 != 0 {
				t.Fatalf("%s: accepted a key file with mode %v", name, perm)
			}
			out, _ := k.MarshalText()
			if !bytes.Equal(bytes.TrimSpace(b), out) {
				t.Fatalf("%s: file %q read as %q", name, b, out)
			}
		}
		check("node", new(NodePrivate))
		check("disco", new(DiscoPrivate))
		check("relay", new(RelayPrivate))
		check("signing", new(SigningPrivate))
		check("coord", new(CoordPrivate))
		if _, err := LoadOrCreate(path, NewNode); err != nil {
			after, _ := os.ReadFile(path)
			if !bytes.Equal(after, b) {
				t.Fatalf("LoadOrCreate replaced an unreadable key file")
			}
		}
	})
}
