package store

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"
)

// testWeb checks sign-in links (used once, on any connection), sessions,
// interactive logins (limit, approval once, expiry), the audit log and the
// sweep of expired rows.
func testWeb(t *testing.T, e engine) {
	ctx := context.Background()
	loc := e.fresh(t)
	s := mustOpen(t, e, loc)
	defer s.Close()
	now := time.UnixMilli(time.Now().UnixMilli())

	link := WebToken{Hash: "link", Kind: TokenSignIn, User: AdminUser, Admin: true, Created: now, Expires: now.Add(10 * time.Minute)}
	if err := s.CreateWebToken(ctx, link); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateWebToken(ctx, link); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate token: %v", err)
	}
	if _, err := s.WebToken(ctx, "link", TokenSession, now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a sign-in link read as a session: %v", err)
	}
	// Many concurrent uses: exactly one wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, used := 0, 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := s.UseSignIn(ctx, "link", now)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
				if got.User != AdminUser || !got.Admin {
					t.Errorf("used link: %+v", got)
				}
			case errors.Is(err, ErrKeyUsed):
				used++
			default:
				t.Errorf("use link: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || used != 7 {
		t.Fatalf("concurrent uses of one link: %d won, %d refused as used", wins, used)
	}
	if _, err := s.UseSignIn(ctx, "nope", now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown link: %v", err)
	}
	old := WebToken{Hash: "old", Kind: TokenSignIn, User: "u@x", Created: now, Expires: now.Add(time.Minute)}
	if err := s.CreateWebToken(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UseSignIn(ctx, "old", now.Add(time.Minute)); !errors.Is(err, ErrKeyExpired) {
		t.Fatalf("expired link: %v", err)
	}

	sess := WebToken{Hash: "sess", Kind: TokenSession, User: "u@x", CSRF: "csrf", Created: now, Expires: now.Add(12 * time.Hour)}
	if err := s.CreateWebToken(ctx, sess); err != nil {
		t.Fatal(err)
	}
	got, err := s.WebToken(ctx, "sess", TokenSession, now)
	if err != nil || got != sess {
		t.Fatalf("session: %+v, %v; want %+v", got, err, sess)
	}
	if _, err := s.WebToken(ctx, "sess", TokenSession, now.Add(12*time.Hour)); !errors.Is(err, ErrKeyExpired) {
		t.Fatalf("expired session: %v", err)
	}
	if err := s.CreateUser(ctx, User{Name: "u@x", Created: now}); err != nil {
		t.Fatal(err)
	}
	gone := WebToken{Hash: "gone", Kind: TokenSession, User: "u@x", CSRF: "c", Created: now, Expires: now.Add(time.Hour)}
	if err := s.CreateWebToken(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeleteUser(ctx, "u@x", false, now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WebToken(ctx, "gone", TokenSession, now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("session of a deleted user: %v", err)
	}
	sess.User = AdminUser
	if err := s.CreateWebToken(ctx, sess); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteWebToken(ctx, "sess"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WebToken(ctx, "sess", TokenSession, now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("session after sign-out: %v", err)
	}
	// Listing: live sessions only (no links, nothing expired), newest first.
	s1 := WebToken{Hash: "s1", Kind: TokenSession, User: AdminUser, Admin: true, CSRF: "c1", Created: now, Expires: now.Add(time.Hour)}
	s2 := WebToken{Hash: "s2", Kind: TokenSession, User: "v@x", CSRF: "c2", Created: now.Add(time.Millisecond), Expires: now.Add(time.Hour)}
	dead := WebToken{Hash: "s3", Kind: TokenSession, User: "v@x", CSRF: "c3", Created: now.Add(2 * time.Millisecond), Expires: now}
	for _, tok := range []WebToken{s1, s2, dead} {
		if err := s.CreateWebToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.WebSessions(ctx, now, 10); err != nil || !reflect.DeepEqual(got, []WebToken{s2, s1}) {
		t.Fatalf("sessions: %+v, %v; want s2, s1", got, err)
	}
	if got, err := s.WebSessions(ctx, now, 1); err != nil || !reflect.DeepEqual(got, []WebToken{s2}) {
		t.Fatalf("sessions, limit 1: %+v, %v; want s2", got, err)
	}
	for _, h := range []string{"s1", "s2", "s3"} {
		if err := s.DeleteWebToken(ctx, h); err != nil {
			t.Fatal(err)
		}
	}

	l := Login{CodeHash: "c1", NodeKey: "nodekey:01", Hostname: "laptop", OS: "linux", Created: now, Expires: now.Add(10 * time.Minute)}
	if err := s.CreateLogin(ctx, l, 2, now); err != nil {
		t.Fatal(err)
	}
	l2 := l
	l2.CodeHash = "c2"
	if err := s.CreateLogin(ctx, l2, 2, now); err != nil {
		t.Fatal(err)
	}
	l3 := l
	l3.CodeHash = "c3"
	if err := s.CreateLogin(ctx, l3, 2, now); !errors.Is(err, ErrLoginLimit) {
		t.Fatalf("login past the limit: %v", err)
	}
	if err := s.ApproveLogin(ctx, "c1", "u@x", []byte{0, 1, 2, 255}, now); err != nil {
		t.Fatal(err)
	}
	if err := s.ApproveLogin(ctx, "c1", "v@x", []byte{9}, now); !errors.Is(err, ErrKeyUsed) {
		t.Fatalf("second approval: %v", err)
	}
	if err := s.ApproveLogin(ctx, "c2", "u@x", []byte{9}, now.Add(10*time.Minute)); !errors.Is(err, ErrKeyExpired) {
		t.Fatalf("approval after expiry: %v", err)
	}
	if err := s.ApproveLogin(ctx, "zz", "u@x", nil, now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("approval of an unknown code: %v", err)
	}
	// An approved login no longer counts against the limit.
	if err := s.CreateLogin(ctx, l3, 2, now); err != nil {
		t.Fatal(err)
	}

	for i, a := range []string{"nodes delete", "policy set"} {
		e := &AuditEntry{Time: now.Add(time.Duration(i) * time.Second), Actor: "cli", Action: a, Target: "x"}
		if err := s.AddAudit(ctx, e); err != nil || e.ID == 0 {
			t.Fatalf("audit: id %d, %v", e.ID, err)
		}
	}

	// Everything survives a reopen.
	s.Close()
	s = mustOpen(t, e, loc)
	gl, err := s.Login(ctx, "c1")
	if err != nil || gl.ApprovedBy != "u@x" || !bytes.Equal(gl.Sealed, []byte{0, 1, 2, 255}) || gl.Hostname != "laptop" || !gl.Expires.Equal(l.Expires) {
		t.Fatalf("approved login after reopen: %+v, %v", gl, err)
	}
	if gl, err := s.Login(ctx, "c2"); err != nil || gl.Sealed != nil || !gl.Approved.IsZero() {
		t.Fatalf("waiting login after reopen: %+v, %v", gl, err)
	}
	log, err := s.Audit(ctx, 10)
	if err != nil || len(log) != 2 || log[0].Action != "policy set" || log[1].Action != "nodes delete" || !log[1].Time.Equal(now) {
		t.Fatalf("audit log (newest first): %+v, %v", log, err)
	}
	if log, _ := s.Audit(ctx, 1); len(log) != 1 {
		t.Fatalf("audit limit 1: %d entries", len(log))
	}
	n, err := s.SweepWeb(ctx, now.Add(11*time.Minute))
	if err != nil || n != 4 { // link, c1, c2, c3 ("old" went with its user)
		t.Fatalf("sweep: %d rows, %v", n, err)
	}
	if _, err := s.Login(ctx, "c1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("login after sweep: %v", err)
	}
	s.Close()
}

// testRename checks RenameNode: the new name sticks, a taken one is a
// name conflict, an unknown node is ErrNotFound.
func testRename(t *testing.T, e engine) {
	ctx := context.Background()
	s := mustOpen(t, e, e.fresh(t))
	defer s.Close()
	now := time.Now().Truncate(time.Millisecond)
	if err := s.CreateAuthKey(ctx, &AuthKey{Hash: "k", Reusable: true, Created: now, User: AdminUser}); err != nil {
		t.Fatal(err)
	}
	a, b := testNode("a", "100.64.0.1", now), testNode("b", "100.64.0.2", now)
	for _, n := range []*Node{a, b} {
		if _, err := s.RegisterNode(ctx, "k", now, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RenameNode(ctx, a.ID, "laptop"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Node(ctx, a.ID); err != nil || got.Name != "laptop" {
		t.Fatalf("renamed node: %+v, %v", got, err)
	}
	var ce *ConflictError
	if err := s.RenameNode(ctx, b.ID, "laptop"); !errors.As(err, &ce) || ce.Column != "name" {
		t.Fatalf("rename to a taken name: %v", err)
	}
	if err := s.RenameNode(ctx, 999, "x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rename of an unknown node: %v", err)
	}
}
