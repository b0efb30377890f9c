package coordinator_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/coordinator/store/pgtest"
	"github.com/wiremesh/wiremesh/tlspin"
)

// browser is an HTTPS client with its own cookie jar that does not follow
// redirects, so tests see every answer.
type browser struct {
	t    *testing.T
	hc   *http.Client
	base string
}

func newBrowser(t *testing.T, s *coordtest.Server) *browser {
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{TLSClientConfig: tlspin.ClientConfig(s.Pin(), "", "http/1.1")}
	t.Cleanup(tr.CloseIdleConnections)
	return &browser{t: t, base: s.WebURL(), hc: &http.Client{Jar: jar, Transport: tr, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *browser) do(method, path string, form url.Values) (int, string, *http.Response) {
	b.t.Helper()
	u := path
	if !strings.HasPrefix(path, "https://") {
		u = b.base + path
	}
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out), resp
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// signIn opens a fresh `web login` link for user and returns the page's
// CSRF token.
func (b *browser) signIn(s *coordtest.Server, user string) string {
	b.t.Helper()
	link, err := s.WebSignIn(context.Background(), user)
	if err != nil {
		b.t.Fatal(err)
	}
	if code, body, _ := b.do("GET", link, nil); code != http.StatusSeeOther {
		b.t.Fatalf("sign-in link: HTTP %d: %s", code, body)
	}
	_, body, _ := b.do("GET", "/machines", nil)
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		b.t.Fatalf("no CSRF token on the machines page: %s", body)
	}
	return m[1]
}

func startConsole(t *testing.T, opts ...func(*coordinator.Config)) *coordtest.Server {
	return coordtest.Start(t, append([]func(*coordinator.Config){func(c *coordinator.Config) { c.WebListen = "127.0.0.1:0" }}, opts...)...)
}

// TestConsoleNeedsSession: no page, API or form answers without a session.
func TestConsoleNeedsSession(t *testing.T) {
	s := startConsole(t)
	b := newBrowser(t, s)
	for _, p := range []string{"/", "/machines", "/api/machines", "/relays", "/keys", "/dns", "/routes", "/acl", "/audit", "/login/abc", "/nope"} {
		code, body, _ := b.do("GET", p, nil)
		if code != http.StatusUnauthorized || strings.Contains(body, "csrf") {
			t.Errorf("GET %s without a session: HTTP %d", p, code)
		}
	}
	for _, p := range []string{"/signout", "/machines/a/delete", "/keys", "/keys/1/revoke", "/users", "/users/alice@example.com/delete", "/sessions/abc/revoke", "/dns", "/routes/approve", "/routes/unapprove", "/acl", "/login/abc"} {
		if code, _, _ := b.do("POST", p, url.Values{"csrf": {"x"}}); code != http.StatusUnauthorized {
			t.Errorf("POST %s without a session: HTTP %d", p, code)
		}
	}
	// A made-up cookie is no session either.
	u, _ := url.Parse(s.WebURL())
	b.hc.Jar.SetCookies(u, []*http.Cookie{{Name: "wm_session", Value: "forged"}})
	if code, _, _ := b.do("GET", "/machines", nil); code != http.StatusUnauthorized {
		t.Errorf("forged session cookie: HTTP %d", code)
	}
}

// TestConsoleSignInLinkOnce: a link signs in once, sets the cookie as
// promised, and a used, expired or unknown link gets a clear page.
func TestConsoleSignInLinkOnce(t *testing.T) {
	var skew atomic.Int64
	s := startConsole(t, func(c *coordinator.Config) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	link, err := s.WebSignIn(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, s)
	code, _, resp := b.do("GET", link, nil)
	if code != http.StatusSeeOther || resp.Header.Get("Location") != "/machines" {
		t.Fatalf("first use: HTTP %d to %q", code, resp.Header.Get("Location"))
	}
	cookie := resp.Header.Get("Set-Cookie")
	for _, want := range []string{"wm_session=", "HttpOnly", "Secure", "SameSite=Strict", "Max-Age=43200", "Path=/"} {
		if !strings.Contains(cookie, want) {
			t.Errorf("session cookie %q lacks %s", cookie, want)
		}
	}
	if code, body, _ := b.do("GET", "/machines", nil); code != http.StatusOK || !strings.Contains(body, "admin@ (admin)") {
		t.Fatalf("machines after sign-in: HTTP %d", code)
	}
	other := newBrowser(t, s)
	if code, body, _ := other.do("GET", link, nil); code != http.StatusGone || !strings.Contains(body, "already used") {
		t.Fatalf("second use: HTTP %d: %s", code, body)
	}
	if code, _, _ := other.do("GET", "/machines", nil); code != http.StatusUnauthorized {
		t.Fatalf("second use signed in: HTTP %d", code)
	}
	if code, body, _ := other.do("GET", "/signin/bogus", nil); code != http.StatusNotFound || !strings.Contains(body, "not valid") {
		t.Fatalf("unknown link: HTTP %d: %s", code, body)
	}
	old, _ := s.WebSignIn(context.Background(), "")
	skew.Store(int64(coordinator.SignInLifetime))
	if code, body, _ := other.do("GET", old, nil); code != http.StatusGone || !strings.Contains(body, "expired") {
		t.Fatalf("expired link: HTTP %d: %s", code, body)
	}
	// The session outlives the link but not its 12 hours.
	if code, _, _ := b.do("GET", "/machines", nil); code != http.StatusOK {
		t.Fatalf("session after 10 min: HTTP %d", code)
	}
	skew.Store(int64(coordinator.SessionLifetime))
	if code, _, _ := b.do("GET", "/machines", nil); code != http.StatusUnauthorized {
		t.Fatalf("session after 12 h: HTTP %d", code)
	}
	if _, err := s.WebSignIn(context.Background(), "nobody@example.com"); err == nil {
		t.Fatal("link for a user who does not exist")
	}
	for res, want := range map[string]float64{"ok": 1, "used": 1, "unknown": 1, "expired": 1} {
		if got := resultCount(t, s, "coordinator_web_signins_total", res); got != want {
			t.Errorf("coordinator_web_signins_total{result=%q} = %v, want %v", res, got, want)
		}
	}
}

// TestConsoleCSRFAndSignOut: a form without the session's CSRF token
// changes nothing; with it, the change is made and audited; signing out
// ends the session.
func TestConsoleCSRFAndSignOut(t *testing.T) {
	s := startConsole(t)
	s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true}), "victim")
	b := newBrowser(t, s)
	csrf := b.signIn(s, "")
	for name, form := range map[string]url.Values{"none": {}, "wrong": {"csrf": {"x" + csrf}}} {
		if code, _, _ := b.do("POST", "/machines/victim/delete", form); code != http.StatusForbidden {
			t.Errorf("delete with %s CSRF token: HTTP %d", name, code)
		}
	}
	if len(s.Nodes()) != 1 {
		t.Fatal("a form without the CSRF token deleted the node")
	}
	if code, _, _ := b.do("POST", "/machines/victim/rename", url.Values{"csrf": {csrf}, "to": {"laptop"}}); code != http.StatusSeeOther {
		t.Fatalf("rename: HTTP %d", code)
	}
	if code, _, _ := b.do("POST", "/machines/laptop/delete", url.Values{"csrf": {csrf}}); code != http.StatusSeeOther {
		t.Fatalf("delete with the token: HTTP %d", code)
	}
	if n := s.Nodes(); len(n) != 0 {
		t.Fatalf("nodes after delete: %+v", n)
	}
	log, err := s.AuditLog(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range log {
		got = append(got, e.Actor+" "+e.Action+" "+e.Target)
	}
	want := []string{"console:admin@ nodes delete laptop", "console:admin@ nodes rename victim -> laptop", "console:admin@ web sign in admin@"}
	if len(got) < 3 || strings.Join(got[:3], "|") != strings.Join(want, "|") {
		t.Fatalf("audit log %q, want it to start with %q", got, want)
	}
	if code, _, _ := b.do("POST", "/signout", url.Values{"csrf": {csrf}}); code != http.StatusOK {
		t.Fatalf("sign out: HTTP %d", code)
	}
	if code, _, _ := b.do("GET", "/machines", nil); code != http.StatusUnauthorized {
		t.Fatalf("after sign-out: HTTP %d", code)
	}
}

// TestConsoleUserScoping: a user sees and changes only their own machines
// and keys, and admin pages refuse them.
func TestConsoleUserScoping(t *testing.T) {
	s := startConsole(t)
	ctx := context.Background()
	for _, u := range []string{"alice@example.com", "bob@example.com"} {
		if err := s.CreateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{User: "alice@example.com"}), "alice-laptop")
	bobKey, err := s.CreateAuthKey(ctx, coordinator.AuthKeyRequest{User: "bob@example.com", Reusable: true})
	if err != nil {
		t.Fatal(err)
	}
	bob := s.Register(t, bobKey.Key, "bob-secret-server")
	b := newBrowser(t, s)
	csrf := b.signIn(s, "alice@example.com")
	for _, p := range []string{"/machines", "/api/machines", "/keys"} {
		code, body, _ := b.do("GET", p, nil)
		if code != http.StatusOK || !strings.Contains(body, "alice") {
			t.Errorf("%s as alice: HTTP %d", p, code)
		}
		for _, leak := range []string{"bob", bob.Self.Addresses[0].Addr().String()} {
			if strings.Contains(body, leak) {
				t.Errorf("%s shows alice %q", p, leak)
			}
		}
	}
	for _, op := range []string{"delete", "expire", "rename"} {
		code, body, _ := b.do("POST", "/machines/bob-secret-server/"+op, url.Values{"csrf": {csrf}, "to": {"x"}})
		if code != http.StatusNotFound || !strings.Contains(body, "no such machine") {
			t.Errorf("alice %s bob's machine: HTTP %d", op, code)
		}
		if code, body, _ = b.do("POST", "/machines/no-such-node/"+op, url.Values{"csrf": {csrf}, "to": {"x"}}); code != http.StatusNotFound || !strings.Contains(body, "no such machine") {
			t.Errorf("alice %s a missing machine: HTTP %d (must look the same)", op, code)
		}
	}
	if code, _, _ := b.do("POST", "/keys/"+strconv.FormatInt(bobKey.ID, 10)+"/revoke", url.Values{"csrf": {csrf}}); code != http.StatusNotFound {
		t.Errorf("alice revokes bob's key: HTTP %d", code)
	}
	keys, _ := s.AuthKeys(ctx)
	for _, k := range keys {
		if k.ID == bobKey.ID && !k.Revoked.IsZero() {
			t.Error("bob's key was revoked by alice")
		}
	}
	if len(s.Nodes()) != 2 {
		t.Error("alice changed bob's machine")
	}
	for _, p := range []string{"/relays", "/acl", "/audit"} {
		if code, _, _ := b.do("GET", p, nil); code != http.StatusForbidden {
			t.Errorf("%s as alice: HTTP %d", p, code)
		}
	}
	if code, _, _ := b.do("POST", "/acl", url.Values{"csrf": {csrf}, "policy": {"{}"}}); code != http.StatusForbidden {
		t.Errorf("policy save as alice: HTTP %d", code)
	}
	// A key alice makes is hers, whatever the form says.
	code, body, _ := b.do("POST", "/keys", url.Values{"csrf": {csrf}, "user": {"bob@example.com"}, "tags": {"tag:x"}})
	if code != http.StatusOK || !strings.Contains(body, "shown only this once") {
		t.Fatalf("alice creates a key: HTTP %d", code)
	}
	keys, _ = s.AuthKeys(ctx)
	if k := keys[len(keys)-1]; k.User != "alice@example.com" || len(k.Tags) != 0 {
		t.Fatalf("alice's new key: %+v", k)
	}
}

// TestConsolePolicyEditor: a bad policy shows the line at fault and leaves
// the policy in force; the checker answers from the compiled policy.
func TestConsolePolicyEditor(t *testing.T) {
	s := startConsole(t)
	good := `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}`
	if err := s.SetPolicy(context.Background(), []byte(good)); err != nil {
		t.Fatal(err)
	}
	s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true}), "a")
	s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true}), "b")
	b := newBrowser(t, s)
	csrf := b.signIn(s, "")
	bad := "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:22\"]},\n  ],\n  \"tests\": [\n    {\"src\": \"a\", \"accept\": [\"b:80\"]},\n  ],\n}"
	code, body, _ := b.do("POST", "/acl", url.Values{"csrf": {csrf}, "policy": {bad}})
	if code != http.StatusBadRequest || !strings.Contains(body, "policy in force is unchanged") || !strings.Contains(body, `data-error-line="6"`) ||
		!strings.Contains(body, `bad-line"><span class="ln">6</span>`) {
		t.Fatalf("bad policy: HTTP %d: %s", code, body)
	}
	if s.Policy() != good {
		t.Fatalf("policy changed by a failing save: %s", s.Policy())
	}
	_, body, _ = b.do("GET", "/acl?src=a&dst=b&port=22", nil)
	if !strings.Contains(body, "Yes: a may reach b on port 22") {
		t.Fatalf("checker on port 22: %s", body)
	}
	_, body, _ = b.do("GET", "/acl?src=a&dst=b&port=80", nil)
	if !strings.Contains(body, "No: the policy in force does not let a reach b on port 80") {
		t.Fatalf("checker on port 80: %s", body)
	}
	ok := strings.Replace(bad, "b:80", "b:22", 1)
	if code, _, _ := b.do("POST", "/acl", url.Values{"csrf": {csrf}, "policy": {ok}}); code != http.StatusSeeOther || s.Policy() != ok {
		t.Fatalf("good policy: HTTP %d, policy %q", code, s.Policy())
	}
}

// TestInteractiveLoginFlow: a node asks for a login, a signed-in user
// approves its URL, and the node registers as that user with the key the
// approval sealed to it. A login nobody approves expires.
func TestInteractiveLoginFlow(t *testing.T) {
	s := startConsole(t, func(c *coordinator.Config) { c.LoginLifetime = 3 * time.Second })
	ctx := context.Background()
	if err := s.CreateUser(ctx, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	n := s.NewClient()
	l, err := n.Client.Login(ctx, "alice-laptop", "linux")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(l.URL, s.WebURL()+"/login/") {
		t.Fatalf("login URL %q", l.URL)
	}
	b := newBrowser(t, s)
	csrf := b.signIn(s, "alice@example.com")
	code, body, _ := b.do("GET", l.URL, nil)
	if code != http.StatusOK || !strings.Contains(body, "alice-laptop") || !strings.Contains(body, "linux") {
		t.Fatalf("approval page: HTTP %d: %s", code, body)
	}
	if code, _, _ := b.do("POST", l.URL, url.Values{}); code != http.StatusForbidden {
		t.Fatalf("approval without CSRF token: HTTP %d", code)
	}
	// Another node key cannot wait on this code.
	thief := s.NewClient()
	if _, _, err := thief.Client.LoginWait(ctx, l.Code, thief.Key); !errors.Is(err, coordclient.ErrLoginExpired) {
		t.Fatalf("wait with another node key: %v", err)
	}
	if code, body, _ := b.do("POST", l.URL, url.Values{"csrf": {csrf}}); code != http.StatusOK || !strings.Contains(body, "approved") {
		t.Fatalf("approve: HTTP %d: %s", code, body)
	}
	if code, body, _ := b.do("POST", l.URL, url.Values{"csrf": {csrf}}); code != http.StatusGone || !strings.Contains(body, "already approved") {
		t.Fatalf("second approval: HTTP %d: %s", code, body)
	}
	authKey, user, err := n.Client.LoginWait(ctx, l.Code, n.Key)
	if err != nil || user != "alice@example.com" {
		t.Fatalf("wait: %q, %v", user, err)
	}
	resp, err := n.Client.Register(ctx, authKey, n.Disco.Public(), "alice-laptop", "linux")
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, ni := range s.Nodes() {
		found = found || (ni.Name == resp.Node.Name && ni.User == "alice@example.com")
	}
	if !found {
		t.Fatalf("registered node not alice's: %+v", s.Nodes())
	}
	if _, err := n.Client.Register(ctx, authKey, n.Disco.Public(), "again", "linux"); err != nil {
		t.Fatalf("registering again (idempotent): %v", err)
	}
	if _, err := s.NewClient().Client.Register(ctx, authKey, n.Disco.Public(), "other", "linux"); !coordclient.IsUnauthorized(err) {
		t.Fatalf("the login's key registered a second node: %v", err)
	}

	// Nobody approves this one: the wait ends with ErrLoginExpired.
	m := s.NewClient()
	l2, err := m.Client.Login(ctx, "forgotten", "linux")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Client.LoginWait(ctx, l2.Code, m.Key); !errors.Is(err, coordclient.ErrLoginExpired) {
		t.Fatalf("unapproved login: %v", err)
	}
	if code, body, _ := b.do("GET", l2.URL, nil); code != http.StatusGone || !strings.Contains(body, "unknown or has expired") {
		t.Fatalf("expired approval page: HTTP %d: %s", code, body)
	}
	for res, want := range map[string]float64{"started": 2, "approved": 1, "expired": 1} {
		if got := resultCount(t, s, "coordinator_interactive_logins_total", res); got != want {
			t.Errorf("coordinator_interactive_logins_total{result=%q} = %v, want %v", res, got, want)
		}
	}
}

// TestConsoleAcrossReplicas: with replicas on one PostgreSQL, a sign-in
// link made by one works once on any; a node waiting on one replica is
// approved through another's console; a rename reaches the other replica.
func TestConsoleAcrossReplicas(t *testing.T) {
	pg := pgtest.Start(t)
	dbURL := pg.NewDatabase(t)
	var rs []*coordtest.Server
	for range 2 {
		rs = append(rs, startConsole(t, func(c *coordinator.Config) { c.DB = dbURL; c.SweepInterval = 100 * time.Millisecond }))
	}
	a, b := rs[0], rs[1]
	ctx := context.Background()
	link, err := a.WebSignIn(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	onB := strings.Replace(link, a.WebURL(), b.WebURL(), 1)
	bb := newBrowser(t, b)
	if code, _, _ := bb.do("GET", onB, nil); code != http.StatusSeeOther {
		t.Fatalf("a's link on b: HTTP %d", code)
	}
	if code, _, _ := newBrowser(t, a).do("GET", link, nil); code != http.StatusGone {
		t.Fatalf("the link again on a: HTTP %d", code)
	}
	_, body, _ := bb.do("GET", "/machines", nil)
	csrf := csrfRE.FindStringSubmatch(body)[1]

	n := a.NewClient()
	l, err := n.Client.Login(ctx, "laptop", "linux")
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		key, user string
		err       error
	}
	waited := make(chan result, 1)
	go func() {
		k, u, err := n.Client.LoginWait(ctx, l.Code, n.Key)
		waited <- result{k, u, err}
	}()
	approveOnB := strings.Replace(l.URL, a.WebURL(), b.WebURL(), 1)
	if code, body, _ := bb.do("POST", approveOnB, url.Values{"csrf": {csrf}}); code != http.StatusOK {
		t.Fatalf("approve on b: HTTP %d: %s", code, body)
	}
	r := <-waited
	if r.err != nil || r.user != "admin@" {
		t.Fatalf("wait on a: %q, %v", r.user, r.err)
	}
	resp, err := n.Client.Register(ctx, r.key, n.Disco.Public(), "laptop", "linux")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "b knows the node", func() bool { return len(b.Nodes()) == 1 })
	if code, _, _ := bb.do("POST", "/machines/"+resp.Node.Name+"/rename", url.Values{"csrf": {csrf}, "to": {"renamed"}}); code != http.StatusSeeOther {
		t.Fatalf("rename on b: HTTP %d", code)
	}
	eventually(t, "a sees the rename", func() bool { ns := a.Nodes(); return len(ns) == 1 && ns[0].Name == "renamed" })
	if err := a.DeleteNode(ctx, "renamed"); err != nil {
		t.Fatalf("delete by the new name on a: %v", err)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s never happened", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// resultCount returns the value of the counter name with label result=res.
func resultCount(t *testing.T, s *coordtest.Server, name, res string) float64 {
	t.Helper()
	mfs, err := s.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == res {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{result=%q}", name, res)
	return 0
}

// TestConsoleKeyExpiryWarning: the machines page warns when a node key
// expires within 14 days, and says when it has expired.
func TestConsoleKeyExpiryWarning(t *testing.T) {
	var skew atomic.Int64
	s := startConsole(t, func(c *coordinator.Config) {
		c.KeyExpiry = 30 * 24 * time.Hour
		c.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "box")
	b := newBrowser(t, s)
	b.signIn(s, "")
	warn := regexp.MustCompile(`<span class="warn"[^>]*>expires in (\d+) days</span>`)
	if _, body, _ := b.do("GET", "/machines", nil); warn.MatchString(body) || !strings.Contains(body, ">in 29 days<") && !strings.Contains(body, ">in 30 days<") {
		t.Fatalf("30 days before expiry: %s", body)
	}
	skew.Store(int64(20 * 24 * time.Hour))
	b.signIn(s, "") // a fresh session: the clock moved on
	if _, body, _ := b.do("GET", "/machines", nil); !warn.MatchString(body) {
		t.Fatalf("10 days before expiry: no warning: %s", body)
	}
	skew.Store(int64(31 * 24 * time.Hour))
	b.signIn(s, "")
	if _, body, _ := b.do("GET", "/machines", nil); !strings.Contains(body, `<span class="bad">expired</span>`) {
		t.Fatalf("after expiry: %s", body)
	}
}
