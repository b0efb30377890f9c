package policy

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
)

const sample = `{
	// comments and trailing commas are HuJSON
	"groups":    {"group:ops": ["alice", "tag:admin"]},
	"tagOwners": {"tag:web": ["group:ops"], "tag:admin": [], "tag:db": []},
	"hosts":     {"dbhost": "100.64.0.9", "lab": "198.18.0.0/15"},
	"acls": [
		{"action": "accept", "src": ["group:ops"], "dst": ["tag:web:22,80-81", "dbhost:*"]},
		{"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]},
		{"action": "accept", "src": ["lab"], "dst": ["bob:443"]},
	],
	"tests": [
		{"src": "alice", "accept": ["tag:web:22", "tag:web:81", "dbhost:1"], "deny": ["tag:web:443", "tag:db:5432"]},
		{"src": "tag:web", "accept": ["tag:db:5432"], "deny": ["tag:db:22"]},
		{"src": "198.18.1.1", "accept": ["bob:443"]},
	],
}`

func TestParseAndTests(t *testing.T) {
	p, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.RunTests(nil); err != nil {
		t.Fatal(err)
	}
	alice := Principal{Name: "alice", IP: netip.MustParseAddr("100.64.0.1")}
	web := Principal{Name: "w1", Tags: []string{"tag:web"}, IP: netip.MustParseAddr("100.64.0.2")}
	db := Principal{Name: "d1", Tags: []string{"tag:db"}, IP: netip.MustParseAddr("100.64.0.9")}
	cases := []struct {
		name     string
		src, dst Principal
		port     uint16
		want     bool
	}{
		{"group member to tag port", alice, web, 80, true},
		{"group member to tag other port", alice, web, 8080, false},
		{"host alias matches by IP", alice, db, 1234, true},
		{"tag to tag", web, db, 5432, true},
		{"reverse direction not allowed", db, web, 22, false},
	}
	for _, c := range cases {
		if got := p.Allows(c.src, c.dst, c.port); got != c.want {
			t.Errorf("%s: Allows = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestFailingTestRejected(t *testing.T) {
	text := strings.Replace(sample, `"deny": ["tag:db:22"]`, `"deny": ["tag:db:5432"]`, 1)
	p, err := Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	err = p.RunTests(nil)
	if !errors.Is(err, ErrTestFailed) || !strings.Contains(err.Error(), "should be denied") {
		t.Fatalf("RunTests = %v, want a failing deny test", err)
	}
}

func TestTestsUseRegisteredNodes(t *testing.T) {
	p, err := Parse([]byte(`{"tagOwners": {"tag:web": []},
		"acls": [{"action": "accept", "src": ["tag:web"], "dst": ["*:80"]}],
		"tests": [{"src": "n1", "accept": ["n2:80"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.RunTests(nil); err == nil {
		t.Fatal("untagged unknown node passed a test that needs tag:web")
	}
	lookup := func(name string) (Principal, bool) {
		return Principal{Name: name, Tags: []string{"tag:web"}}, name == "n1"
	}
	if err := p.RunTests(lookup); err != nil {
		t.Fatalf("registered tagged node: %v", err)
	}
}

func TestInvalid(t *testing.T) {
	cases := map[string]string{
		"not json":        `{`,
		"unknown field":   `{"acls": [], "bogus": 1}`,
		"bad action":      `{"acls": [{"action": "drop", "src": ["*"], "dst": ["*:*"]}]}`,
		"undeclared tag":  `{"acls": [{"action": "accept", "src": ["tag:x"], "dst": ["*:*"]}]}`,
		"unknown group":   `{"acls": [{"action": "accept", "src": ["group:x"], "dst": ["*:*"]}]}`,
		"no ports":        `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*"]}]}`,
		"bad port":        `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:70000"]}]}`,
		"backwards range": `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:9-1"]}]}`,
		"bad cidr":        `{"acls": [{"action": "accept", "src": ["10.0.0.0/99"], "dst": ["*:*"]}]}`,
		"bad name":        `{"acls": [{"action": "accept", "src": ["Bad_Name"], "dst": ["*:*"]}]}`,
		"empty src":       `{"acls": [{"action": "accept", "src": [], "dst": ["*:*"]}]}`,
		"nested group":    `{"groups": {"group:a": ["group:b"], "group:b": []}, "acls": []}`,
		"autogroup":       `{"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["*:*"]}]}`,
		"bad test dst":    `{"acls": [], "tests": [{"src": "a", "accept": ["b"]}]}`,
		"trailing data":   `{"acls": []} {}`,
		"bad user":        `{"acls": [{"action": "accept", "src": ["Alice@example.com"], "dst": ["*:*"]}]}`,
		"bad user domain": `{"acls": [{"action": "accept", "src": ["*"], "dst": ["alice@-x.com:22"]}]}`,
	}
	for name, text := range cases {
		if _, err := Parse([]byte(text)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Parse = %v, want ErrInvalid", name, err)
		}
	}
}

func TestAllowAll(t *testing.T) {
	p := AllowAll()
	if !p.Allows(Principal{Name: "a"}, Principal{Name: "b"}, 1) {
		t.Fatal("AllowAll denies")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`))
	f.Add([]byte(`{"hosts": {"h": "1.2.3.0/24"}, "acls": [{"action": "accept", "src": ["h"], "dst": ["h:1-2,3"]}]}`))
	f.Add([]byte(routesPolicy))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err == nil {
			err = p.RunTests(nil)
			p.Check("a", "tag:x", 80, nil)
		} else if !errors.Is(err, ErrInvalid) {
			t.Fatalf("error does not wrap ErrInvalid: %v", err)
		}
		if line := ErrorLine(b, err); line < 0 || line > bytes.Count(b, []byte("\n"))+1 {
			t.Fatalf("ErrorLine %d outside the text's %d lines (error %v)", line, bytes.Count(b, []byte("\n"))+1, err)
		}
		if p == nil {
			return
		}
		a := Principal{Name: "a", IP: netip.MustParseAddr("100.64.0.1"), Tags: []string{"tag:x"}}
		p.Allows(a, Principal{Tags: []string{"tag:x"}}, 80)
		for _, r := range []netip.Prefix{netip.MustParsePrefix("198.19.50.0/24"), netip.MustParsePrefix("0.0.0.0/0")} {
			p.AutoApproves(r, a)
			p.MayUseRoute(a, r)
		}
	})
}

// TestUserSelectors: users select the nodes they own, in groups, src and
// dst; a node of another user, or of none, is not selected.
func TestUserSelectors(t *testing.T) {
	text := `{
		"groups": {"group:eng": ["alice@example.com", "bob@example.com"]},
		"tagOwners": {"tag:srv": []},
		"acls": [
			{"action": "accept", "src": ["group:eng"], "dst": ["tag:srv:22"]},
			{"action": "accept", "src": ["carol@example.com"], "dst": ["alice@example.com:8080"]},
		],
		"tests": [
			{"src": "alice@example.com", "accept": ["tag:srv:22"], "deny": ["tag:srv:80", "bob@example.com:8080"]},
			{"src": "carol@example.com", "accept": ["alice@example.com:8080"], "deny": ["tag:srv:22", "bob@example.com:8080"]},
			{"src": "admin@", "deny": ["tag:srv:22"]},
		],
	}`
	p, err := Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.RunTests(nil); err != nil {
		t.Fatal(err)
	}
	ip := netip.MustParseAddr
	alice := Principal{Name: "laptop", User: "alice@example.com", IP: ip("100.64.0.1")}
	bob := Principal{Name: "desk", User: "bob@example.com", IP: ip("100.64.0.2")}
	carol := Principal{Name: "phone", User: "carol@example.com", IP: ip("100.64.0.3")}
	srv := Principal{Name: "srv", Tags: []string{"tag:srv"}, IP: ip("100.64.0.4")}
	admin := Principal{Name: "box", User: "admin@", IP: ip("100.64.0.5")}
	cases := []struct {
		name     string
		src, dst Principal
		port     uint16
		want     bool
	}{
		{"user in group to tag", alice, srv, 22, true},
		{"other user in group to tag", bob, srv, 22, true},
		{"user outside group to tag", carol, srv, 22, false},
		{"admin outside group", admin, srv, 22, false},
		{"user src to user dst", carol, alice, 8080, true},
		{"user src to other user", carol, bob, 8080, false},
		{"user dst, wrong port", carol, alice, 22, false},
		{"unowned node is no user", Principal{Name: "x", IP: ip("100.64.0.6")}, srv, 22, false},
	}
	for _, c := range cases {
		if got := p.Allows(c.src, c.dst, c.port); got != c.want {
			t.Errorf("%s: Allows = %v, want %v", c.name, got, c.want)
		}
	}
	for _, u := range []string{"admin@", "alice@example.com", "a.b+c_d-e@x.io"} {
		if !ValidUser(u) {
			t.Errorf("ValidUser(%q) = false", u)
		}
	}
	for _, u := range []string{"", "@", "alice", "@example.com", "Alice@x", "a@b..c", "a b@x", strings.Repeat("a", 130) + "@x"} {
		if ValidUser(u) {
			t.Errorf("ValidUser(%q) = true", u)
		}
	}
}

// TestExpansionBounded: a policy of a few tens of KB whose group
// references multiply out to millions of selectors is refused with a clear
// error, before it is expanded.
func TestExpansionBounded(t *testing.T) {
	var members, refs, dsts []string
	for i := range 1000 {
		members = append(members, fmt.Sprintf("%q", fmt.Sprintf("n%d", i)))
	}
	for range 1000 {
		refs = append(refs, `"group:g"`)
		dsts = append(dsts, `"group:g:*"`)
	}
	doc := `{"groups": {"group:g": [` + strings.Join(members, ",") + `]},
		"acls": [{"action": "accept", "src": [` + strings.Join(refs, ",") + `], "dst": [` + strings.Join(dsts, ",") + `]}]}`
	if len(doc) > 40<<10 {
		t.Fatalf("test policy is %d bytes; meant to be small", len(doc))
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := Parse([]byte(doc))
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrInvalid) || !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "selectors") {
		t.Fatalf("Parse: %v, want a too-large error", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 64<<20 {
		t.Errorf("refusing the policy allocated %d MB", got>>20)
	}
	// A policy just under the bound still compiles.
	ok := `{"groups": {"group:g": [` + strings.Join(members, ",") + `]},
		"acls": [{"action": "accept", "src": ["group:g"], "dst": ["group:g:*"]}]}`
	if _, err := Parse([]byte(ok)); err != nil {
		t.Fatalf("ordinary group policy: %v", err)
	}
}
