package coordinator_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/coordinator"
)

// sessionOf returns the ID of user's newest session.
func sessionOf(t *testing.T, s interface {
	WebSessions(context.Context) ([]coordinator.SessionInfo, error)
}, user string) string {
	t.Helper()
	ss, err := s.WebSessions(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, si := range ss {
		if si.User == user {
			return si.ID
		}
	}
	t.Fatalf("no session of %s in %+v", user, ss)
	return ""
}

// TestConsoleSessions: an admin lists and ends any session, a user only
// their own (another's answers as a missing one); ending the session in
// use signs out; every end needs the CSRF token and is audited.
func TestConsoleSessions(t *testing.T) {
	s := startConsole(t)
	ctx := context.Background()
	if err := s.CreateUser(ctx, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	admin := newBrowser(t, s)
	adminCSRF := admin.signIn(s, "")
	adminID := sessionOf(t, s, "admin@")
	phone := newBrowser(t, s)
	phone.signIn(s, "alice@example.com")
	phoneID := sessionOf(t, s, "alice@example.com")
	laptop := newBrowser(t, s)
	aliceCSRF := laptop.signIn(s, "alice@example.com")

	_, body, _ := admin.do("GET", "/keys", nil)
	if strings.Count(body, `<tr data-session="`) != 3 || strings.Count(body, "this browser") != 1 || !strings.Contains(body, `<tr data-session="`+adminID[:8]+`">`) {
		t.Fatalf("admin's sessions list: %s", body)
	}
	_, body, _ = laptop.do("GET", "/keys", nil)
	if strings.Count(body, `<tr data-session="`) != 2 || strings.Contains(body, adminID[:8]) {
		t.Fatalf("alice's sessions list: %s", body)
	}

	if code, body, _ := laptop.do("POST", "/sessions/"+adminID+"/revoke", url.Values{"csrf": {aliceCSRF}}); code != http.StatusNotFound || !strings.Contains(body, "no such session") {
		t.Fatalf("alice ends admin's session: HTTP %d", code)
	}
	if code, _, _ := laptop.do("POST", "/sessions/"+strings.Repeat("0", 64)+"/revoke", url.Values{"csrf": {aliceCSRF}}); code != http.StatusNotFound {
		t.Fatalf("a missing session: HTTP %d", code)
	}
	if code, _, _ := laptop.do("POST", "/sessions/short/revoke", url.Values{"csrf": {aliceCSRF}}); code != http.StatusNotFound {
		t.Fatalf("a malformed session ID: HTTP %d", code)
	}
	if code, _, _ := admin.do("GET", "/machines", nil); code != http.StatusOK {
		t.Fatalf("admin signed out by alice: HTTP %d", code)
	}
	if code, _, _ := laptop.do("POST", "/sessions/"+phoneID+"/revoke", url.Values{}); code != http.StatusForbidden {
		t.Fatalf("end a session without the CSRF token: HTTP %d", code)
	}
	if code, _, _ := laptop.do("POST", "/sessions/"+phoneID+"/revoke", url.Values{"csrf": {aliceCSRF}}); code != http.StatusSeeOther {
		t.Fatalf("alice ends her phone's session: HTTP %d", code)
	}
	if code, _, _ := phone.do("GET", "/machines", nil); code != http.StatusUnauthorized {
		t.Fatalf("the ended session still works: HTTP %d", code)
	}
	laptopID := sessionOf(t, s, "alice@example.com")
	if code, _, _ := admin.do("POST", "/sessions/"+laptopID+"/revoke", url.Values{"csrf": {adminCSRF}}); code != http.StatusSeeOther {
		t.Fatalf("admin ends alice's session: HTTP %d", code)
	}
	if code, _, _ := laptop.do("GET", "/machines", nil); code != http.StatusUnauthorized {
		t.Fatalf("alice's session after the admin ended it: HTTP %d", code)
	}
	code, body, resp := admin.do("POST", "/sessions/"+adminID+"/revoke", url.Values{"csrf": {adminCSRF}})
	if code != http.StatusOK || !strings.Contains(body, "you are signed out") || !strings.Contains(resp.Header.Get("Set-Cookie"), "Max-Age=0") {
		t.Fatalf("admin ends their own session: HTTP %d %q: %s", code, resp.Header.Get("Set-Cookie"), body)
	}
	if code, _, _ := admin.do("GET", "/machines", nil); code != http.StatusUnauthorized {
		t.Fatalf("after ending the session in use: HTTP %d", code)
	}
	log, err := s.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"admin@ (session " + adminID[:8] + ")", "alice@example.com (session " + laptopID[:8] + ")", "alice@example.com (session " + phoneID[:8] + ")"}
	for i, w := range want {
		if log[i].Action != "web session revoke" || log[i].Target != w {
			t.Errorf("audit entry %d: %+v, want web session revoke %s", i, log[i], w)
		}
	}
}

// TestConsoleUserDelete: an admin deletes a user (with their machines
// only when asked), which ends the user's sessions; admin@ and missing
// users are refused; a user cannot delete anyone.
func TestConsoleUserDelete(t *testing.T) {
	s := startConsole(t)
	ctx := context.Background()
	for _, u := range []string{"alice@example.com", "bob@example.com"} {
		if err := s.CreateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{User: "bob@example.com"}), "bob-laptop")
	bob := newBrowser(t, s)
	bob.signIn(s, "bob@example.com")
	alice := newBrowser(t, s)
	aliceCSRF := alice.signIn(s, "alice@example.com")
	admin := newBrowser(t, s)
	csrf := admin.signIn(s, "")

	if code, _, _ := alice.do("POST", "/users/bob@example.com/delete", url.Values{"csrf": {aliceCSRF}, "force": {"1"}}); code != http.StatusForbidden {
		t.Errorf("alice deletes bob: HTTP %d", code)
	}
	_, body, _ := admin.do("GET", "/keys", nil)
	if !strings.Contains(body, `action="/users/bob@example.com/delete"`) || !strings.Contains(body, "and its 1 machine(s)") || strings.Contains(body, `action="/users/admin@/delete"`) {
		t.Fatalf("users list: %s", body)
	}
	code, body, _ := admin.do("POST", "/users/bob@example.com/delete", url.Values{"csrf": {csrf}})
	if code != http.StatusBadRequest || !strings.Contains(body, "bob@example.com still owns machines") {
		t.Fatalf("delete a user with machines: HTTP %d: %s", code, body)
	}
	if len(s.Nodes()) != 1 {
		t.Fatal("bob's machine went without force")
	}
	if code, body, _ := admin.do("POST", "/users/admin@/delete", url.Values{"csrf": {csrf}}); code != http.StatusBadRequest || !strings.Contains(body, "built in") {
		t.Errorf("delete admin@: HTTP %d", code)
	}
	if code, body, _ := admin.do("POST", "/users/nobody@example.com/delete", url.Values{"csrf": {csrf}}); code != http.StatusNotFound || !strings.Contains(body, "There is no user nobody@example.com") {
		t.Errorf("delete a missing user: HTTP %d", code)
	}
	code, _, resp := admin.do("POST", "/users/bob@example.com/delete", url.Values{"csrf": {csrf}, "force": {"1"}})
	if code != http.StatusSeeOther || !strings.Contains(resp.Header.Get("Location"), "with+1+machine") {
		t.Fatalf("delete bob with his machines: HTTP %d to %q", code, resp.Header.Get("Location"))
	}
	if len(s.Nodes()) != 0 {
		t.Fatalf("bob's machine after deleting bob: %+v", s.Nodes())
	}
	users, _ := s.Users(ctx)
	for _, u := range users {
		if u.Name == "bob@example.com" {
			t.Fatal("bob still listed")
		}
	}
	if code, _, _ := bob.do("GET", "/machines", nil); code != http.StatusUnauthorized {
		t.Fatalf("a deleted user's session: HTTP %d", code)
	}
	log, _ := s.AuditLog(ctx)
	if log[0].Actor != "console:admin@" || log[0].Action != "users delete" {
		t.Fatalf("newest audit entry %+v", log[0])
	}
}
