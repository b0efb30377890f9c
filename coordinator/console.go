package coordinator

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/store"
)

// The web console, served by the coordinator itself on --web-listen over
// HTTPS with the coordinator's certificate (or --tls-cert): server-rendered
// pages (html/template, webui/), a little JavaScript (live status, filter
// box), everything embedded in the binary.
//
// Signing in: `coordinator web login [--user NAME]` makes a one-time link
// (/signin/TOKEN, 10 minutes, single use on every replica). Opening it
// makes a session: a random cookie (HttpOnly, Secure, SameSite=Strict,
// 12 h) whose hash is stored with the user, whether they are an admin,
// and a CSRF token that every state-changing form must carry. No page and
// no API answers without a session.
//
// Scoping: an admin (a link made without --user, or for admin@) sees and
// changes everything; any other user sees and changes only their own
// machines and keys, approves logins for themselves, sees the routes of
// their own machines and the DNS settings (which their machines receive
// anyway), and changes neither routes nor DNS. Another user's
// machine or key answers exactly as a missing one does.

//go:embed webui
var webFS embed.FS

// Console limits and lifetimes.
const (
	// SignInLifetime is how long a `web login` link stays usable.
	SignInLifetime = 10 * time.Minute
	// SessionLifetime is how long a console session lasts.
	SessionLifetime = 12 * time.Hour
	// sessionCookie names the session cookie.
	sessionCookie = "wm_session"
	// webTokenBytes is the entropy of link, session and CSRF secrets.
	webTokenBytes = 32
	// maxFormBody bounds a console form; the policy editor's is the
	// largest.
	maxFormBody = maxAdminBody + 4<<10
	// nearExpiry is when the machines page starts warning that a node key
	// expires soon.
	nearExpiry = 14 * 24 * time.Hour
)

// webSession is the signed-in user of one request.
type webSession struct {
	hash  string
	User  string
	Admin bool
	CSRF  string
}

func (s *webSession) actor() string { return "console:" + s.User }

func newWebSecret() string {
	b := make([]byte, webTokenBytes)
	rand.Read(b)
	return encodeToken(b)
}

// WebURL returns the console's base URL (--web-url, else derived from
// --web-listen), or "" without a console.
func (srv *Server) WebURL() string {
	if srv.cfg.WebURL != "" {
		return strings.TrimRight(srv.cfg.WebURL, "/")
	}
	if srv.webLn == nil {
		return ""
	}
	host, port, _ := net.SplitHostPort(srv.webLn.Addr().String())
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		host = "localhost"
		if u, err := url.Parse(srv.cfg.ServerURL); err == nil && u.Hostname() != "" {
			host = u.Hostname()
		}
	}
	return "https://" + net.JoinHostPort(host, port)
}

// ErrNoConsole is returned by WebSignIn when the server has no console.
var ErrNoConsole = errors.New("this coordinator serves no web console: start it with --web-listen ADDR")

// WebSignIn makes a one-time sign-in link, valid SignInLifetime: for an
// admin when user is empty (or admin@), else for that user.
func (srv *Server) WebSignIn(ctx context.Context, user string) (string, error) {
	base := srv.WebURL()
	if base == "" {
		return "", ErrNoConsole
	}
	admin := user == "" || user == store.AdminUser
	if user == "" {
		user = store.AdminUser
	}
	users, err := srv.store.Users(ctx)
	if err != nil {
		return "", err
	}
	found := false
	for _, u := range users {
		found = found || u.Name == user
	}
	if !found {
		return "", fmt.Errorf("--user %s: no such user; create it first with `coordinator users create %s`", user, user)
	}
	tok := newWebSecret()
	now := srv.now()
	if err := srv.store.CreateWebToken(ctx, store.WebToken{Hash: hashSecret(tok), Kind: store.TokenSignIn, User: user, Admin: admin,
		Created: now, Expires: now.Add(SignInLifetime)}); err != nil {
		return "", err
	}
	srv.audit(ctx, "web login", "link for "+user)
	return base + "/signin/" + tok, nil
}

// webHandler returns the console's handler.
func (srv *Server) webHandler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(webFS, "webui/static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /signin/{token}", srv.webSignIn)
	mux.HandleFunc("GET /{$}", srv.page(func(w http.ResponseWriter, r *http.Request, s *webSession) {
		http.Redirect(w, r, "/machines", http.StatusSeeOther)
	}))
	mux.HandleFunc("POST /signout", srv.action(srv.webSignOut))
	mux.HandleFunc("GET /machines", srv.page(srv.webMachines))
	mux.HandleFunc("GET /api/machines", srv.page(srv.webMachinesJSON))
	mux.HandleFunc("POST /machines/{name}/{op}", srv.action(srv.webMachineAction))
	mux.HandleFunc("GET /relays", srv.page(srv.adminOnly(srv.webRelays)))
	mux.HandleFunc("GET /keys", srv.page(srv.webKeys))
	mux.HandleFunc("POST /keys", srv.action(srv.webKeyCreate))
	mux.HandleFunc("POST /keys/{id}/revoke", srv.action(srv.webKeyRevoke))
	mux.HandleFunc("POST /users", srv.action(srv.adminOnly(srv.webUserCreate)))
	mux.HandleFunc("POST /users/{name}/delete", srv.action(srv.adminOnly(srv.webUserDelete)))
	mux.HandleFunc("POST /sessions/{id}/revoke", srv.action(srv.webSessionRevoke))
	mux.HandleFunc("GET /dns", srv.page(srv.webDNS))
	mux.HandleFunc("POST /dns", srv.action(srv.adminOnly(srv.webDNSSave)))
	mux.HandleFunc("GET /routes", srv.page(srv.webRoutes))
	mux.HandleFunc("POST /routes/{op}", srv.action(srv.adminOnly(srv.webRouteAction)))
	mux.HandleFunc("GET /acl", srv.page(srv.adminOnly(srv.webACL)))
	mux.HandleFunc("POST /acl", srv.action(srv.adminOnly(srv.webACLSave)))
	mux.HandleFunc("GET /audit", srv.page(srv.adminOnly(srv.webAudit)))
	mux.HandleFunc("GET /login/{code}", srv.page(srv.webLoginPage))
	mux.HandleFunc("POST /login/{code}", srv.action(srv.webLoginApprove))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if _, ok := srv.session(r); !ok {
			srv.notSignedIn(w, r)
			return
		}
		srv.render(w, r, http.StatusNotFound, "message.html", nil, pageData{Title: "Not found", Message: "There is no such page."})
	})
	return securityHeaders(mux)
}

// securityHeaders adds the headers every console answer carries: no
// framing, no inline script, no referrer (links carry secrets), no caching.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// session returns the request's session, if its cookie names a live one.
func (srv *Server) session(r *http.Request) (*webSession, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" || len(c.Value) > 2*webTokenBytes {
		return nil, false
	}
	h := hashSecret(c.Value)
	t, err := srv.store.WebToken(r.Context(), h, store.TokenSession, srv.now())
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrKeyExpired) {
			srv.log.Warn("console session lookup failed", "err", err)
		}
		return nil, false
	}
	return &webSession{hash: h, User: t.User, Admin: t.Admin, CSRF: t.CSRF}, true
}

type sessionHandler func(w http.ResponseWriter, r *http.Request, s *webSession)

// page serves h to signed-in users only.
func (srv *Server) page(h sessionHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, ok := srv.session(r)
		if !ok {
			srv.notSignedIn(w, r)
			return
		}
		h(w, r.WithContext(withActor(r.Context(), s.actor())), s)
	}
}

// action serves a state-changing form: signed-in users only, and only
// with the session's CSRF token.
func (srv *Server) action(h sessionHandler) http.HandlerFunc {
	return srv.page(func(w http.ResponseWriter, r *http.Request, s *webSession) {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
		if err := r.ParseForm(); err != nil {
			srv.render(w, r, http.StatusBadRequest, "message.html", s, pageData{Title: "Bad request", Message: "The form could not be read."})
			return
		}
		got := r.PostFormValue("csrf")
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(s.CSRF)) != 1 {
			srv.render(w, r, http.StatusForbidden, "message.html", s, pageData{Title: "Request refused",
				Message: "This form did not carry a valid security token. Reload the page and try again."})
			return
		}
		h(w, r, s)
	})
}

// adminOnly refuses users who are not admins.
func (srv *Server) adminOnly(h sessionHandler) sessionHandler {
	return func(w http.ResponseWriter, r *http.Request, s *webSession) {
		if !s.Admin {
			srv.render(w, r, http.StatusForbidden, "message.html", s, pageData{Title: "Admins only", Message: "Only an admin can open this page."})
			return
		}
		h(w, r, s)
	}
}

func (srv *Server) notSignedIn(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/api/") {
		writeError(w, http.StatusUnauthorized, "not signed in")
		return
	}
	srv.render(w, r, http.StatusUnauthorized, "message.html", nil, pageData{Title: "Not signed in",
		Message: "Sign in with a link from `coordinator web login` (run it on the coordinator's host)."})
}

func (srv *Server) webSignIn(w http.ResponseWriter, r *http.Request) {
	tok := r.PathValue("token")
	now := srv.now()
	t, err := srv.store.UseSignIn(r.Context(), hashSecret(tok), now)
	if err != nil {
		msg, code, result := "This sign-in link is not valid. Ask for a new one with `coordinator web login`.", http.StatusNotFound, "unknown"
		switch {
		case errors.Is(err, store.ErrKeyUsed):
			result = "used"
			msg, code = "This sign-in link was already used: each link signs in once. Ask for a new one with `coordinator web login`.", http.StatusGone
		case errors.Is(err, store.ErrKeyExpired):
			result = "expired"
			msg, code = "This sign-in link has expired: links last 10 minutes. Ask for a new one with `coordinator web login`.", http.StatusGone
		case !errors.Is(err, store.ErrNotFound):
			result = "error"
			srv.log.Warn("console sign-in failed", "err", err)
			msg, code = "Signing in failed; see the coordinator's log.", http.StatusServiceUnavailable
		}
		srv.m.webSignIns.WithLabelValues(result).Inc()
		srv.render(w, r, code, "message.html", nil, pageData{Title: "Sign-in failed", Message: msg})
		return
	}
	sess := newWebSecret()
	if err := srv.store.CreateWebToken(r.Context(), store.WebToken{Hash: hashSecret(sess), Kind: store.TokenSession, User: t.User, Admin: t.Admin,
		CSRF: newWebSecret(), Created: now, Expires: now.Add(SessionLifetime)}); err != nil {
		srv.log.Warn("console session", "err", err)
		srv.m.webSignIns.WithLabelValues("error").Inc()
		srv.render(w, r, http.StatusServiceUnavailable, "message.html", nil, pageData{Title: "Sign-in failed", Message: "Signing in failed; see the coordinator's log."})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: sess, Path: "/", MaxAge: int(SessionLifetime / time.Second),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	srv.m.webSignIns.WithLabelValues("ok").Inc()
	srv.audit(withActor(r.Context(), "console:"+t.User), "web sign in", t.User)
	http.Redirect(w, r, "/machines", http.StatusSeeOther)
}

func (srv *Server) webSignOut(w http.ResponseWriter, r *http.Request, s *webSession) {
	if err := srv.store.DeleteWebToken(r.Context(), s.hash); err != nil {
		srv.log.Warn("console sign-out", "err", err)
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	srv.audit(r.Context(), "web sign out", s.User)
	srv.render(w, r, http.StatusOK, "message.html", nil, pageData{Title: "Signed out", Message: "You are signed out."})
}

// pageData is what every template gets.
type pageData struct {
	Title   string
	Nav     string // the nav entry to mark
	Session *webSession
	Message string
	Error   string
	Notice  string
	Data    any
}

var templateFuncs = template.FuncMap{
	"since": func(t time.Time) string { return ago(time.Since(t)) },
	"until": func(t time.Time) string { return ago(time.Until(t)) },
	"rfc3339": func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	},
	"join": strings.Join,
}

// ago renders a duration in the largest sensible unit.
func ago(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h", int(d/time.Hour))
	}
	return fmt.Sprintf("%d days", int(d/(24*time.Hour)))
}

// loadTemplates parses every page with the layout.
func loadTemplates() (map[string]*template.Template, error) {
	pages, err := fs.Glob(webFS, "webui/*.html")
	if err != nil {
		return nil, err
	}
	out := map[string]*template.Template{}
	for _, p := range pages {
		name := strings.TrimPrefix(p, "webui/")
		if name == "layout.html" {
			continue
		}
		t, err := template.New(name).Funcs(templateFuncs).ParseFS(webFS, "webui/layout.html", p)
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", name, err)
		}
		out[name] = t
	}
	return out, nil
}

func (srv *Server) render(w http.ResponseWriter, r *http.Request, code int, name string, s *webSession, d pageData) {
	d.Session = s
	t := srv.webTmpl[name]
	if t == nil {
		srv.log.Error("console template missing", "name", name)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	if err := t.ExecuteTemplate(w, "layout", d); err != nil {
		srv.log.Warn("console page", "page", name, "err", err)
	}
}
