package policy

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

const routesPolicy = `{
	"tagOwners": {"tag:router": [], "tag:exit": [], "tag:dev": []},
	"hosts": {"lan": "198.19.50.0/24"},
	"autoApprovers": {
		"routes": {"198.19.0.0/16": ["tag:router"], "198.18.7.0/24": ["alice@example.com"]},
		"exitNode": ["tag:exit"],
	},
	"acls": [
		{"action": "accept", "src": ["tag:dev"], "dst": ["lan:80"]},
		{"action": "accept", "src": ["alice@example.com"], "dst": ["autogroup:internet:443"]},
	],
	"tests": [
		{"src": "tag:dev", "accept": ["198.19.50.9:80"], "deny": ["198.19.50.9:22"]},
	],
}`

func mustParse(t *testing.T, text string) *Policy {
	t.Helper()
	p, err := Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAutoApprovers(t *testing.T) {
	p := mustParse(t, routesPolicy)
	if err := p.RunTests(nil); err != nil {
		t.Fatal(err)
	}
	router := Principal{Name: "r1", Tags: []string{"tag:router"}}
	exit := Principal{Name: "x1", Tags: []string{"tag:exit"}}
	alice := Principal{Name: "a1", User: "alice@example.com"}
	pfx := netip.MustParsePrefix
	cases := []struct {
		route netip.Prefix
		who   Principal
		want  bool
	}{
		{pfx("198.19.0.0/16"), router, true},
		{pfx("198.19.50.0/24"), router, true}, // sub-prefix covered
		{pfx("198.19.50.128/25"), router, true},
		{pfx("198.18.0.0/15"), router, false}, // wider than the approver
		{pfx("198.18.7.0/24"), router, false}, // someone else's prefix
		{pfx("198.18.7.0/24"), alice, true},
		{pfx("0.0.0.0/0"), router, false},
		{pfx("0.0.0.0/0"), exit, true},
		{pfx("198.19.50.0/24"), exit, false},
	}
	for _, c := range cases {
		if got := p.AutoApproves(c.route, c.who); got != c.want {
			t.Errorf("AutoApproves(%s, %s) = %v, want %v", c.route, c.who.Name, got, c.want)
		}
	}
	if AllowAll().AutoApproves(pfx("198.19.50.0/24"), router) {
		t.Error("AllowAll auto-approves")
	}
}

func TestAutoApproversBadInput(t *testing.T) {
	base := `{"tagOwners": {"tag:r": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}], "autoApprovers": %s}`
	cases := []struct{ aa, want string }{
		{`{"routes": {"nope": ["tag:r"]}}`, `"nope" is not an IPv4 CIDR`},
		{`{"routes": {"fd00::/8": ["tag:r"]}}`, `is not an IPv4 CIDR`},
		{`{"routes": {"198.19.50.1/24": ["tag:r"]}}`, `host bits set (did you mean 198.19.50.0/24?)`},
		{`{"routes": {"0.0.0.0/0": ["tag:r"]}}`, `is an exit node: use exitNode`},
		{`{"routes": {"100.64.5.0/24": ["tag:r"]}}`, `overlaps the mesh range 100.64.0.0/10`},
		{`{"routes": {"198.19.50.0/24": ["tag:undeclared"]}}`, `tag tag:undeclared is not declared`},
		{`{"routes": {"198.19.50.0/24": ["autogroup:internet"]}}`, `autogroup:internet is only a dst`},
		{`{"exitNode": ["group:none"]}`, `group group:none is not defined`},
		{`{"bogus": []}`, `unknown field`},
	}
	for _, c := range cases {
		_, err := Parse([]byte(strings.Replace(base, "%s", c.aa, 1)))
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one containing %q", c.aa, err, c.want)
		}
	}
}

func TestAutogroupInternetOnlyDst(t *testing.T) {
	for _, text := range []string{
		`{"acls": [{"action": "accept", "src": ["autogroup:internet"], "dst": ["*:*"]}]}`,
		`{"tagOwners": {"tag:x": ["autogroup:internet"]}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`,
		`{"groups": {"group:g": ["autogroup:internet"]}, "acls": [{"action": "accept", "src": ["*"], "dst": ["group:g:*"]}]}`,
		`{"acls": [{"action": "accept", "src": ["*"], "dst": ["autogroup:self:*"]}]}`,
	} {
		if _, err := Parse([]byte(text)); err == nil || !strings.Contains(err.Error(), "autogroup") {
			t.Errorf("%s: err = %v, want an autogroup error", text, err)
		}
	}
}

// TestRoutedDsts: a rule allowing port 80 on a routed prefix compiles, for
// the router of that prefix, into port 80 on the prefix and nothing for 22;
// a router of another prefix gets nothing.
func TestRoutedDsts(t *testing.T) {
	p := mustParse(t, routesPolicy)
	pfx := netip.MustParsePrefix
	lan := pfx("198.19.50.0/24")
	got := p.Rules[0].RoutedDsts([]netip.Prefix{lan, pfx("198.19.60.0/24")}, false)
	want := []RoutedDst{{lan, []PortRange{{80, 80}}}}
	if !slices.EqualFunc(got, want, func(a, b RoutedDst) bool { return a.Prefix == b.Prefix && slices.Equal(a.Ports, b.Ports) }) {
		t.Fatalf("RoutedDsts = %v, want %v", got, want)
	}
	// A router of a wider route forwards only the policy's part of it.
	if got := p.Rules[0].RoutedDsts([]netip.Prefix{pfx("198.19.0.0/16")}, false); len(got) != 1 || got[0].Prefix != lan {
		t.Fatalf("wider route: RoutedDsts = %v, want only %s", got, lan)
	}
	if got := p.Rules[0].RoutedDsts([]netip.Prefix{pfx("198.19.60.0/24")}, true); len(got) != 0 {
		t.Fatalf("other route: RoutedDsts = %v, want none", got)
	}
	// autogroup:internet only on an exit node.
	if got := p.Rules[1].RoutedDsts(nil, false); len(got) != 0 {
		t.Fatalf("internet without exit: %v", got)
	}
	got = p.Rules[1].RoutedDsts(nil, true)
	if len(got) != len(InternetPrefixes()) || !slices.Equal(got[0].Ports, []PortRange{{443, 443}}) {
		t.Fatalf("internet with exit: %v", got)
	}
	dev := Principal{Name: "d", Tags: []string{"tag:dev"}}
	alice := Principal{Name: "a", User: "alice@example.com"}
	for _, c := range []struct {
		who   Principal
		route netip.Prefix
		want  bool
	}{
		{dev, lan, true}, {dev, pfx("198.19.60.0/24"), false}, {dev, pfx("0.0.0.0/0"), false},
		{alice, lan, false}, {alice, pfx("0.0.0.0/0"), true},
	} {
		if got := p.MayUseRoute(c.who, c.route); got != c.want {
			t.Errorf("MayUseRoute(%s, %s) = %v, want %v", c.who.Name, c.route, got, c.want)
		}
	}
}

// TestInternetPrefixes: the prefixes cover every address but the mesh
// range's, without overlapping.
func TestInternetPrefixes(t *testing.T) {
	in := InternetPrefixes()
	for i, a := range in {
		if a.Overlaps(netip.MustParsePrefix("100.64.0.0/10")) {
			t.Fatalf("%s overlaps the mesh range", a)
		}
		for _, b := range in[:i] {
			if a.Overlaps(b) {
				t.Fatalf("%s overlaps %s", a, b)
			}
		}
	}
	// Sizes add up to 2^32 - 2^22.
	var sum uint64
	for _, a := range in {
		sum += 1 << (32 - a.Bits())
	}
	if sum != 1<<32-1<<22 {
		t.Fatalf("covered %d addresses, want %d", sum, uint64(1<<32-1<<22))
	}
	for _, ip := range []string{"0.0.0.1", "8.8.8.8", "100.63.255.255", "100.128.0.0", "255.255.255.255"} {
		if !slices.ContainsFunc(in, func(p netip.Prefix) bool { return p.Contains(netip.MustParseAddr(ip)) }) {
			t.Errorf("%s not covered", ip)
		}
	}
}
