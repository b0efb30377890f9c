package coordinator

import (
	"net/netip"
	"testing"

	"github.com/wiremesh/wiremesh/meshnode/routes"
)

// FuzzParseApproval: whatever an admin types, parseApproval either
// refuses it or returns 0.0.0.0/0 or a route the node side would accept.
func FuzzParseApproval(f *testing.F) {
	for _, s := range []string{"198.19.50.0/24", "0.0.0.0/0", "198.19.50.1/24", "100.64.0.0/10", "fd00::/8", "banana", "", "1.2.3.4", "::ffff:198.19.50.0/120"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parseApproval(s)
		if err != nil {
			return
		}
		if p == routes.ExitPrefix {
			return
		}
		if err := routes.Validate([]netip.Prefix{p}); err != nil || p.Masked() != p {
			t.Fatalf("parseApproval(%q) = %s, which Validate refuses: %v", s, p, err)
		}
	})
}
