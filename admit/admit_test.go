package admit

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func TestVerify(t *testing.T) {
	coord := key.NewSigning()
	other := key.NewSigning()
	node := key.NewNode().Public()
	trusted := []key.SigningPublic{other.Public(), coord.Public()}

	good, err := Issue(coord, node, "", t0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	regional, _ := Issue(coord, node, "nyc", t0, time.Hour)
	foreign, _ := Issue(key.NewSigning(), node, "", t0, time.Hour)
	forged := append([]byte(nil), good...)
	forged[len(forged)-1] ^= 1
	tamperedExpiry := append([]byte(nil), good...)
	tamperedExpiry[1+8+32+8+7] ^= 0x10

	for _, tc := range []struct {
		name   string
		tok    []byte
		node   key.NodePublic
		region string
		now    time.Time
		want   error
		reason string
	}{
		{"ok", good, node, "nyc", t0.Add(time.Minute), nil, "ok"},
		{"ok regional", regional, node, "nyc", t0, nil, "ok"},
		{"missing", nil, node, "nyc", t0, ErrMissing, "token_missing"},
		{"truncated", good[:20], node, "nyc", t0, ErrMalformed, "token_malformed"},
		{"oversized", append(good, make([]byte, 100)...), node, "nyc", t0, ErrMalformed, "token_malformed"},
		{"expired", good, node, "nyc", t0.Add(time.Hour), ErrExpired, "token_expired"},
		{"future", good, node, "nyc", t0.Add(-ClockSkew - time.Second), ErrNotYetValid, "token_future"},
		{"small skew ok", good, node, "nyc", t0.Add(-ClockSkew + time.Second), nil, "ok"},
		{"foreign", foreign, node, "nyc", t0, ErrForeign, "token_foreign"},
		{"forged", forged, node, "nyc", t0, ErrBadSignature, "token_bad_signature"},
		{"tampered expiry", tamperedExpiry, node, "nyc", t0, ErrBadSignature, "token_bad_signature"},
		{"other node", good, key.NewNode().Public(), "nyc", t0, ErrWrongNode, "token_wrong_node"},
		{"other region", regional, node, "fra", t0, ErrWrongRegion, "token_wrong_region"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Verify(tc.tok, trusted, tc.node, tc.region, tc.now)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Verify err = %v, want %v", err, tc.want)
			}
			if got := Reason(err); got != tc.reason {
				t.Fatalf("Reason = %q, want %q", got, tc.reason)
			}
		})
	}
}

func TestVersionRejected(t *testing.T) {
	coord := key.NewSigning()
	node := key.NewNode().Public()
	tok, _ := Issue(coord, node, "", t0, time.Hour)
	tok[0] = 3
	if _, err := Parse(tok); !errors.Is(err, ErrMalformed) {
		t.Fatalf("version 3: err = %v", err)
	}
}

func TestText(t *testing.T) {
	coord := key.NewSigning()
	node := key.NewNode().Public()
	s, err := IssueText(coord, node, "fra", t0, DefaultLifetime)
	if err != nil {
		t.Fatal(err)
	}
	tok, raw, err := ParseText(s)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tok.Regions, []string{"fra"}) || tok.Node != node || !tok.Expires.Equal(t0.Add(DefaultLifetime)) {
		t.Fatalf("parsed %+v", tok)
	}
	if _, err := Verify(raw, []key.SigningPublic{coord.Public()}, node, "fra", t0); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "!!!", strings.Repeat("A", MaxTextLen+1), base64.RawURLEncoding.EncodeToString([]byte{1, 2, 3})} {
		if _, _, err := ParseText(bad); err == nil {
			t.Fatalf("ParseText(%q) accepted", bad)
		}
	}
}

// TestRegionList: version 2 tokens are valid exactly in their listed
// regions (or anywhere, with none), and the issuer refuses lists that would
// not fit MaxLen.
func TestRegionList(t *testing.T) {
	coord := key.NewSigning()
	node := key.NewNode().Public()
	trusted := []key.SigningPublic{coord.Public()}
	tok, err := IssueRegions(coord.Signer(), coord.Public(), node, []string{"nyc", "fra"}, t0, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for region, want := range map[string]error{"nyc": nil, "fra": nil, "sin": ErrWrongRegion, "": ErrWrongRegion} {
		if _, err := Verify(tok, trusted, node, region, t0); !errors.Is(err, want) && (want != nil || err != nil) {
			t.Errorf("region %q: %v, want %v", region, err, want)
		}
	}
	anyRegion, _ := IssueRegions(coord.Signer(), coord.Public(), node, nil, t0, t0.Add(time.Hour))
	if _, err := Verify(anyRegion, trusted, node, "sin", t0); err != nil {
		t.Errorf("token with no regions at sin: %v", err)
	}
	var most []string
	for i := range MaxRegions {
		most = append(most, fmt.Sprintf("%s%02d", strings.Repeat("r", MaxRegionLen-2), i))
	}
	big, err := IssueRegions(coord.Signer(), coord.Public(), node, most, t0, t0.Add(time.Hour))
	if err != nil || len(big) != MaxLen {
		t.Fatalf("largest token: %d bytes, %v; want MaxLen %d", len(big), err, MaxLen)
	}
	if _, err := Verify(big, trusted, node, most[MaxRegions-1], t0); err != nil {
		t.Fatalf("largest token: %v", err)
	}
	if _, err := IssueRegions(coord.Signer(), coord.Public(), node, append(most, "x"), t0, t0.Add(time.Hour)); err == nil {
		t.Fatal("more than MaxRegions accepted")
	}
	// Tampering with the list breaks the signature.
	tok[fixedLen-ed25519.SignatureSize+2] ^= 1
	if _, err := Verify(tok, trusted, node, "nyc", t0); err == nil {
		t.Fatal("tampered region list verified")
	}
}

func TestIssueRejectsLongRegion(t *testing.T) {
	if _, err := Issue(key.NewSigning(), key.NewNode().Public(), strings.Repeat("x", MaxRegionLen+1), t0, time.Hour); err == nil {
		t.Fatal("long region accepted")
	}
}

func TestNeedsRefresh(t *testing.T) {
	tok, _, _ := ParseText(must(IssueText(key.NewSigning(), key.NewNode().Public(), "", t0, 12*time.Hour)))
	if tok.NeedsRefresh(t0.Add(5 * time.Hour)) {
		t.Fatal("refresh too early")
	}
	if !tok.NeedsRefresh(t0.Add(6 * time.Hour)) {
		t.Fatal("no refresh at half life")
	}
}

func must(s string, err error) string {
	if err != nil {
		panic(err)
	}
	return s
}

func FuzzParse(f *testing.F) {
	coord := key.NewSigning()
	node := key.NewNode().Public()
	good, _ := Issue(coord, node, "nyc", t0, time.Hour)
	good2, _ := IssueRegions(coord.Signer(), coord.Public(), node, []string{"nyc", "fra"}, t0, t0.Add(time.Hour))
	f.Add(good)
	f.Add(good2)
	f.Add(good[:fixedLen-1])
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		tok, err := Parse(b)
		if err != nil {
			return
		}
		if len(tok.Regions) > MaxRegions {
			t.Fatalf("%d regions", len(tok.Regions))
		}
		region := ""
		for _, r := range tok.Regions {
			if len(r) == 0 || len(r) > MaxRegionLen {
				t.Fatalf("region %d bytes", len(r))
			}
			region = r
		}
		// Anything that parses must still fail verification unless it is
		// a genuine token.
		if _, err := Verify(b, []key.SigningPublic{coord.Public()}, tok.Node, region, tok.Issued); err == nil && string(b) != string(good) && string(b) != string(good2) {
			t.Fatalf("forged token verified: %x", b)
		}
	})
}

func FuzzParseText(f *testing.F) {
	f.Add(must(IssueText(key.NewSigning(), key.NewNode().Public(), "", t0, time.Hour)))
	f.Add("AQ")
	f.Fuzz(func(t *testing.T, s string) {
		ParseText(s)
	})
}

func BenchmarkVerify(b *testing.B) {
	coord := key.NewSigning()
	node := key.NewNode().Public()
	tok, _ := Issue(coord, node, "", t0, time.Hour)
	trusted := []key.SigningPublic{coord.Public()}
	for b.Loop() {
		if _, err := Verify(tok, trusted, node, "x", t0); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMaxLenMatchesRelayHello: the relay hello must have room for the
// largest token.
func TestMaxLenMatchesRelayHello(t *testing.T) {
	if relayproto.MaxTokenLen != MaxLen {
		t.Fatalf("relayproto.MaxTokenLen = %d, admit.MaxLen = %d", relayproto.MaxTokenLen, MaxLen)
	}
}
