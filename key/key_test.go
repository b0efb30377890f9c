package key

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPublicTextRoundTrip(t *testing.T) {
	n := NewNode().Public()
	d := NewDisco().Public()
	r := NewRelay().Public()
	for _, tc := range []struct {
		name   string
		text   string
		prefix string
		parse  func(string) (string, error)
	}{
		{"node", n.String(), "nodekey:", func(s string) (string, error) { k, err := ParseNodePublic(s); return k.String(), err }},
		{"disco", d.String(), "discokey:", func(s string) (string, error) { k, err := ParseDiscoPublic(s); return k.String(), err }},
		{"relay", r.String(), "relaykey:", func(s string) (string, error) { k, err := ParseRelayPublic(s); return k.String(), err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.HasPrefix(tc.text, tc.prefix) || len(tc.text) != len(tc.prefix)+64 {
				t.Fatalf("text form %q: want %s<64 hex>", tc.text, tc.prefix)
			}
			got, err := tc.parse(tc.text)
			if err != nil || got != tc.text {
				t.Fatalf("parse(%q) = %q, %v", tc.text, got, err)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	good := NewNode().Public().String()
	for _, tc := range []struct{ name, in string }{
		{"empty", ""},
		{"wrong prefix", "discokey:" + good[len("nodekey:"):]},
		{"no prefix", good[len("nodekey:"):]},
		{"short", good[:len(good)-2]},
		{"long", good + "00"},
		{"non-hex", good[:len(good)-1] + "g"},
		{"upper prefix", "NODEKEY:" + good[len("nodekey:"):]},
		{"upper hex", "nodekey:" + strings.ToUpper(good[len("nodekey:"):])},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseNodePublic(tc.in)
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("ParseNodePublic(%q) err = %v, want ErrBadKey", tc.in, err)
			}
		})
	}
}

func TestKindsAreDistinct(t *testing.T) {
	// A disco key's text must not parse as a node key: the prefixes differ.
	d := NewDisco().Public().String()
	if _, err := ParseNodePublic(d); err == nil {
		t.Fatal("disco key parsed as node key")
	}
}

func TestJSON(t *testing.T) {
	type doc struct {
		Node  NodePublic  `json:"node"`
		Disco DiscoPublic `json:"disco"`
		Sign  SigningPublic
	}
	in := doc{NewNode().Public(), NewDisco().Public(), NewSigning().Public()}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"nodekey:`)) || !bytes.Contains(b, []byte(`"discokey:`)) || !bytes.Contains(b, []byte(`"signkey:`)) {
		t.Fatalf("json %s lacks text forms", b)
	}
	var out doc
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out != in {
		t.Fatalf("round trip: got %+v want %+v", out, in)
	}
	if err := json.Unmarshal([]byte(`{"node":"nodekey:zz"}`), &out); !errors.Is(err, ErrBadKey) {
		t.Fatalf("bad json key err = %v", err)
	}
}

func TestPrivateNeverPrinted(t *testing.T) {
	n := NewNode()
	s := NewSigning()
	raw := n.Raw()
	hexPriv := n.UAPI()
	sm, _ := s.MarshalText()
	for _, out := range []string{
		n.String(), fmt.Sprint(n), fmt.Sprintf("%v %+v %#v %s", n, n, n, n),
		s.String(), fmt.Sprintf("%v %+v %#v", s, s, s),
		fmt.Sprintf("%v", struct{ K NodePrivate }{n}),
	} {
		if strings.Contains(out, hexPriv) || strings.Contains(out, string(sm[len(SignPrivatePrefix):])) {
			t.Fatalf("private key printed: %q", out)
		}
		if !strings.Contains(out, "redacted") {
			t.Fatalf("output %q lacks redaction marker", out)
		}
	}
	_ = raw
}

func TestPrivateTextRoundTrip(t *testing.T) {
	n := NewNode()
	b, _ := n.MarshalText()
	var m NodePrivate
	if err := m.UnmarshalText(b); err != nil {
		t.Fatal(err)
	}
	if !m.Equal(n) || m.Public() != n.Public() {
		t.Fatal("round trip changed key")
	}
	var z NodePrivate
	zero := append([]byte(NodePrivatePrefix), strings.Repeat("0", 64)...)
	if err := z.UnmarshalText(zero); !errors.Is(err, ErrBadKey) {
		t.Fatalf("zero private key accepted: %v", err)
	}
}

func TestEqual(t *testing.T) {
	a, b := NewNode(), NewNode()
	if a.Equal(b) || a.Public().Equal(b.Public()) {
		t.Fatal("distinct keys compare equal")
	}
	if !a.Equal(a) || !a.Public().Equal(a.Public()) {
		t.Fatal("key not equal to itself")
	}
	if a.IsZero() || a.Public().IsZero() || !(NodePublic{}).IsZero() || !(NodePrivate{}).IsZero() {
		t.Fatal("IsZero wrong")
	}
}

func TestClamped(t *testing.T) {
	for i := 0; i < 32; i++ {
		k := NewNode().Raw()
		if k[0]&7 != 0 || k[31]&128 != 0 || k[31]&64 == 0 {
			t.Fatalf("key %x not clamped", k)
		}
	}
}

func TestBox(t *testing.T) {
	a, b, c := NewNode(), NewRelay(), NewRelay()
	msg := []byte("proof of possession")
	sealed := Seal(a, b.Public(), msg)
	if len(sealed) != len(msg)+Overhead {
		t.Fatalf("sealed len %d, want %d", len(sealed), len(msg)+Overhead)
	}
	got, err := Open(b, a.Public(), sealed)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := Open(c, a.Public(), sealed); !errors.Is(err, ErrOpen) {
		t.Fatalf("wrong recipient opened: %v", err)
	}
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 1
		if _, err := Open(b, a.Public(), bad); !errors.Is(err, ErrOpen) {
			t.Fatalf("tampered byte %d accepted", i)
		}
	}
	if _, err := Open(b, a.Public(), sealed[:Overhead-1]); !errors.Is(err, ErrOpen) {
		t.Fatal("short message accepted")
	}
	// Two seals of one message differ (random nonces).
	if bytes.Equal(Seal(a, b.Public(), msg), Seal(a, b.Public(), msg)) {
		t.Fatal("nonce reuse")
	}
}

func TestSigning(t *testing.T) {
	k := NewSigning()
	msg := []byte("token")
	sig := k.Sign(msg)
	if !k.Public().Verify(msg, sig) {
		t.Fatal("valid signature rejected")
	}
	if !bytes.Equal(k.Signer().Sign(msg), sig) {
		t.Fatal("Signer differs from Sign (ed25519 is deterministic)")
	}
	if k.Public().Verify([]byte("other"), sig) || NewSigning().Public().Verify(msg, sig) {
		t.Fatal("bad signature accepted")
	}
	if (SigningPublic{}).Verify(msg, sig) || k.Public().Verify(msg, sig[:10]) {
		t.Fatal("zero key or short sig accepted")
	}
	p, err := ParseSigningPublic(k.Public().String())
	if err != nil || p != k.Public() {
		t.Fatalf("parse signing public: %v", err)
	}
	b, _ := k.MarshalText()
	var k2 SigningPrivate
	if err := k2.UnmarshalText(b); err != nil || !k2.Equal(k) {
		t.Fatalf("signing private round trip: %v", err)
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "node.key")
	k1, err := LoadOrCreate(path, NewNode)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %#o, want 0600", st.Mode().Perm())
	}
	k2, err := LoadOrCreate(path, NewNode)
	if err != nil || !k2.Equal(k1) {
		t.Fatalf("reload gave a different key (err %v)", err)
	}
	// No temp files are left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("dir has %d entries, want 1", len(ents))
	}
	// Too-open permissions are refused, and the identity is not replaced.
	os.Chmod(path, 0o644)
	if _, err := LoadOrCreate(path, NewNode); !errors.Is(err, ErrInsecureFile) {
		t.Fatalf("insecure file: err = %v", err)
	}
	os.Chmod(path, 0o600)
	// A corrupt file is an error, not a silent new identity.
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, err := LoadOrCreate(path, NewNode); !errors.Is(err, ErrBadKey) {
		t.Fatalf("corrupt file: err = %v", err)
	}
}

func TestWriteFileAtomicReplaces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := WriteFileAtomic(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(path, []byte("two"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if string(b) != "two" {
		t.Fatalf("got %q", b)
	}
	if err := WriteFileAtomic(filepath.Join(t.TempDir(), "missing", "f"), nil, 0o600); err == nil {
		t.Fatal("write into missing dir succeeded")
	}
}

func BenchmarkSeal(b *testing.B) {
	s := Precompute(NewDisco(), NewDisco().Public())
	msg := make([]byte, 64)
	dst := make([]byte, 0, 256)
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		dst = s.Seal(dst[:0], msg)
	}
}

func BenchmarkOpen(b *testing.B) {
	a, c := NewDisco(), NewDisco()
	s := Precompute(a, c.Public())
	r := Precompute(c, a.Public())
	sealed := s.Seal(nil, make([]byte, 64))
	dst := make([]byte, 0, 256)
	for b.Loop() {
		if _, err := r.Open(dst[:0], sealed); err != nil {
			b.Fatal(err)
		}
	}
}
