package coordinator_test

import (
	"context"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/netmap"
)

// TestConsoleRoutes: the routes page and the machines page show what a
// router advertises; approving it there (with the CSRF token only) changes
// what `routes list` answers, is audited, and reaches a peer; unapproving
// takes it back; an exit node is approved from the machines page.
func TestConsoleRoutes(t *testing.T) {
	s := startConsole(t)
	ctx := context.Background()
	k := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	router := s.Register(t, k, "router")
	client := s.Register(t, k, "client")
	watch(t, router, netmap.MapRequest{})
	wc := watch(t, client, netmap.MapRequest{})
	advertise(t, router, []netip.Prefix{lan}, &trueVal)
	b := newBrowser(t, s)
	csrf := b.signIn(s, "")

	_, body, _ := b.do("GET", "/routes", nil)
	if !strings.Contains(body, `<tr data-node="router" data-prefix="198.19.50.0/24">`) || !strings.Contains(body, "awaiting approval") ||
		!strings.Contains(body, `data-prefix="0.0.0.0/0"`) {
		t.Fatalf("routes page before approval: %s", body)
	}
	_, body, _ = b.do("GET", "/machines", nil)
	for _, frag := range []string{"<code>198.19.50.0/24</code> awaiting approval", "offered, awaiting approval", "Approve 198.19.50.0/24", "Approve exit node"} {
		if !strings.Contains(body, frag) {
			t.Errorf("machines page lacks %q", frag)
		}
	}

	approve := url.Values{"node": {"router"}, "prefix": {lan.String()}}
	if code, _, _ := b.do("POST", "/routes/approve", approve); code != http.StatusForbidden {
		t.Errorf("approve without the CSRF token: HTTP %d", code)
	}
	if r, _ := routeRow(s, "router", lan.String()); r.Approved {
		t.Fatal("approved by a form without the CSRF token")
	}
	approve.Set("csrf", csrf)
	code, _, resp := b.do("POST", "/routes/approve", approve)
	if code != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/routes?done=") {
		t.Fatalf("approve: HTTP %d to %q", code, resp.Header.Get("Location"))
	}
	if r, _ := routeRow(s, "router", lan.String()); !r.Approved || !r.Primary {
		t.Fatalf("after approving in the console: %+v", r)
	}
	wc.waitFor("client gets the approved route", func(nm *netmap.NetworkMap) bool {
		p, ok := nm.PeerByName("router")
		return ok && len(p.Routes) == 1 && p.Routes[0] == lan
	})
	_, body, _ = b.do("GET", resp.Header.Get("Location"), nil)
	if !strings.Contains(body, "router: 198.19.50.0/24 approved") || !strings.Contains(body, `<span class="online">primary</span>`) ||
		!strings.Contains(body, `action="/routes/unapprove"`) {
		t.Fatalf("routes page after approval: %s", body)
	}

	// The exit node, from the machines page: back to the machines page.
	code, _, resp = b.do("POST", "/routes/approve", url.Values{"csrf": {csrf}, "node": {"router"}, "prefix": {"0.0.0.0/0"}, "back": {"machines"}})
	if code != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/machines?done=") {
		t.Fatalf("approve the exit node: HTTP %d to %q", code, resp.Header.Get("Location"))
	}
	if r, _ := routeRow(s, "router", "0.0.0.0/0"); !r.Approved {
		t.Fatalf("exit node after approval: %+v", r)
	}
	_, body, _ = b.do("GET", resp.Header.Get("Location"), nil)
	if !strings.Contains(body, "offered, approved") || !strings.Contains(body, "<code>198.19.50.0/24</code> approved") || strings.Contains(body, "Approve exit node") {
		t.Fatalf("machines page after approving: %s", body)
	}

	// A route that is not advertised: the error, in the CLI's words.
	code, _, resp = b.do("POST", "/routes/approve", url.Values{"csrf": {csrf}, "node": {"router"}, "prefix": {lan2.String()}})
	if code != http.StatusSeeOther || !strings.Contains(resp.Header.Get("Location"), "error=") {
		t.Fatalf("approve an unadvertised route: HTTP %d to %q", code, resp.Header.Get("Location"))
	}
	if _, body, _ = b.do("GET", resp.Header.Get("Location"), nil); !strings.Contains(body, "router does not advertise 198.19.60.0/24") {
		t.Fatalf("error shown: %s", body)
	}
	if code, _, _ := b.do("POST", "/routes/approve", url.Values{"csrf": {csrf}, "node": {"nobody"}, "prefix": {lan.String()}}); code != http.StatusNotFound {
		t.Errorf("approve on a missing machine: HTTP %d", code)
	}
	if code, _, _ := b.do("POST", "/routes/bogus", url.Values{"csrf": {csrf}, "node": {"router"}, "prefix": {lan.String()}}); code != http.StatusNotFound {
		t.Errorf("unknown route action: HTTP %d", code)
	}

	if code, _, _ := b.do("POST", "/routes/unapprove", url.Values{"csrf": {csrf}, "node": {"router"}, "prefix": {lan.String()}}); code != http.StatusSeeOther {
		t.Fatalf("unapprove: HTTP %d", code)
	}
	if r, _ := routeRow(s, "router", lan.String()); r.Approved {
		t.Fatalf("after unapproving: %+v", r)
	}
	wc.waitFor("client loses the route", func(nm *netmap.NetworkMap) bool {
		p, ok := nm.PeerByName("router")
		return ok && len(p.Routes) == 0
	})
	log, err := s.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range log[:3] {
		got = append(got, e.Actor+" "+e.Action+" "+e.Target)
	}
	want := "console:admin@ routes unapprove router 198.19.50.0/24|console:admin@ routes approve router 0.0.0.0/0|console:admin@ routes approve router 198.19.50.0/24"
	if strings.Join(got, "|") != want {
		t.Fatalf("audit log starts %q, want %q", got, want)
	}
}

// TestConsoleRoutesUserScoping: a user sees only their own machines'
// routes and approves none, not even their own.
func TestConsoleRoutesUserScoping(t *testing.T) {
	s := startConsole(t)
	ctx := context.Background()
	if err := s.CreateUser(ctx, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	adminRouter := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "office-router")
	aliceRouter := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{User: "alice@example.com"}), "alice-pi")
	advertise(t, adminRouter, []netip.Prefix{lan2}, nil)
	advertise(t, aliceRouter, []netip.Prefix{lan}, nil)
	b := newBrowser(t, s)
	csrf := b.signIn(s, "alice@example.com")
	for _, p := range []string{"/routes", "/machines"} {
		code, body, _ := b.do("GET", p, nil)
		if code != http.StatusOK || !strings.Contains(body, "alice-pi") || !strings.Contains(body, lan.String()) {
			t.Errorf("%s as alice: HTTP %d: %s", p, code, body)
		}
		for _, leak := range []string{"office-router", lan2.String()} {
			if strings.Contains(body, leak) {
				t.Errorf("%s shows alice %q", p, leak)
			}
		}
		if strings.Contains(body, `action="/routes/approve"`) {
			t.Errorf("%s offers alice an approve button", p)
		}
	}
	for _, tc := range []struct{ node, prefix string }{{"office-router", lan2.String()}, {"alice-pi", lan.String()}} {
		for _, op := range []string{"approve", "unapprove"} {
			if code, _, _ := b.do("POST", "/routes/"+op, url.Values{"csrf": {csrf}, "node": {tc.node}, "prefix": {tc.prefix}}); code != http.StatusForbidden {
				t.Errorf("alice %ss %s on %s: HTTP %d", op, tc.prefix, tc.node, code)
			}
		}
	}
	for _, r := range s.Routes() {
		if r.Approved {
			t.Errorf("alice approved %+v", r)
		}
	}
}
