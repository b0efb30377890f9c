package routes

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseAdvertised(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     error
		msg      string // a substring the message must carry
	}{
		{"empty", "", nil, ""},
		{"one", "198.19.50.0/24", nil, ""},
		{"two", "198.19.50.0/24, 198.19.60.0/23", nil, ""},
		{"garbage", "printer", ErrInvalidCIDR, `"printer"`},
		{"no length", "198.19.50.0", ErrInvalidCIDR, "198.19.50.0"},
		{"bad length", "198.19.50.0/33", ErrInvalidCIDR, "/33"},
		{"host bits", "198.19.50.1/24", ErrNotNetwork, "did you mean 198.19.50.0/24"},
		{"mesh inside", "100.64.10.0/24", ErrMeshRange, "100.64.10.0/24"},
		{"mesh cover", "100.0.0.0/8", ErrMeshRange, "100.0.0.0/8"},
		{"mesh edge", "100.127.255.0/24", ErrMeshRange, ""},
		{"exit", "0.0.0.0/0", ErrExitRoute, "--advertise-exit-node"},
		{"overlap", "198.19.0.0/16,198.19.50.0/24", ErrOverlap, "198.19.0.0/16"},
		{"duplicate", "198.19.50.0/24,198.19.50.0/24", ErrOverlap, ""},
		{"loopback", "127.0.0.0/8", ErrUnroutable, ""},
		{"multicast", "224.0.0.0/24", ErrUnroutable, ""},
		{"link local", "169.254.0.0/16", ErrUnroutable, ""},
		{"ipv6", "fd00::/64", ErrIPv6, ""},
		{"too many", strings.Repeat("198.19.1.0/24,", MaxAdvertised) + "198.19.2.0/24", ErrTooManyRoutes, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := ParseAdvertised(tc.in)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("ParseAdvertised(%q): %v", tc.in, err)
				}
				if n := strings.Count(tc.in, "/"); len(ps) != n {
					t.Fatalf("got %v, want %d prefixes", ps, n)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("ParseAdvertised(%q) = %v, want %v", tc.in, err, tc.want)
			}
			if ps != nil {
				t.Fatalf("returned prefixes %v with an error", ps)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not mention %q", err, tc.msg)
			}
		})
	}
}

func TestValidateJustOutsideMesh(t *testing.T) {
	ok := []netip.Prefix{netip.MustParsePrefix("100.63.255.0/24"), netip.MustParsePrefix("100.128.0.0/24")}
	if err := Validate(ok); err != nil {
		t.Fatalf("neighbours of the mesh range rejected: %v", err)
	}
	if err := Validate([]netip.Prefix{{}}); !errors.Is(err, ErrInvalidCIDR) {
		t.Fatalf("zero prefix: %v", err)
	}
}

func FuzzParseAdvertised(f *testing.F) {
	for _, s := range []string{"198.19.50.0/24", "198.19.0.0/16,198.19.50.0/24", "100.64.0.0/10", "0.0.0.0/0", "x", "1.2.3.4/32, ::/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParseAdvertised(s)
		if err != nil {
			return
		}
		if err := Validate(ps); err != nil {
			t.Fatalf("ParseAdvertised accepted %q but Validate rejects %v: %v", s, ps, err)
		}
		for i, p := range ps {
			if p.Overlaps(MeshRange) || p.Masked() != p {
				t.Fatalf("accepted bad prefix %v", p)
			}
			for _, q := range ps[:i] {
				if p.Overlaps(q) {
					t.Fatalf("accepted overlap %v %v", p, q)
				}
			}
		}
	})
}
