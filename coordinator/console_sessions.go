package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/store"
)

// Console sessions and user deletion, on the users and keys page. An admin
// sees every live session and may end any; a user sees and ends their own.
// A session is named by the hash of its cookie, which is what the store
// keys it by: knowing it lets nobody in.

// maxSessionsShown bounds the sessions list.
const maxSessionsShown = 500

// SessionInfo is one live console session.
type SessionInfo struct {
	// ID is the SHA-256 of the session's cookie (hex).
	ID      string    `json:"id"`
	User    string    `json:"user"`
	Admin   bool      `json:"admin"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
}

// WebSessions lists the live console sessions, newest first (at most 500).
func (srv *Server) WebSessions(ctx context.Context) ([]SessionInfo, error) {
	toks, err := srv.store.WebSessions(ctx, srv.now(), maxSessionsShown)
	if err != nil {
		return nil, err
	}
	out := make([]SessionInfo, 0, len(toks))
	for _, t := range toks {
		out = append(out, SessionInfo{ID: t.Hash, User: t.User, Admin: t.Admin, Created: t.Created, Expires: t.Expires})
	}
	return out, nil
}

// webSessionID is how long a session ID is (hex SHA-256).
const webSessionID = 64

// webSessionRevoke ends a session: any for an admin, only their own for a
// user (another user's answers as a missing one). Ending the session in
// use signs the browser out.
func (srv *Server) webSessionRevoke(w http.ResponseWriter, r *http.Request, s *webSession) {
	id := r.PathValue("id")
	notFound := func() {
		srv.render(w, r, http.StatusNotFound, "message.html", s, pageData{Title: "Not found", Message: "There is no such session."})
	}
	if len(id) != webSessionID {
		notFound()
		return
	}
	t, err := srv.store.WebToken(r.Context(), id, store.TokenSession, srv.now())
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrKeyExpired) || (err == nil && !s.Admin && t.User != s.User) {
		notFound()
		return
	}
	if err == nil {
		err = srv.store.DeleteWebToken(r.Context(), id)
	}
	if err != nil {
		srv.log.Warn("console session revoke", "err", err)
		srv.render(w, r, http.StatusServiceUnavailable, "message.html", s, pageData{Title: "Sessions", Message: "The session could not be ended; see the coordinator's log."})
		return
	}
	srv.audit(r.Context(), "web session revoke", fmt.Sprintf("%s (session %s)", t.User, id[:8]))
	if id == s.hash {
		http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
		srv.render(w, r, http.StatusOK, "message.html", nil, pageData{Title: "Signed out", Message: "You ended the session you were using: you are signed out."})
		return
	}
	http.Redirect(w, r, "/keys?done="+urlQuery(fmt.Sprintf("session %s of %s ended", id[:8], t.User)), http.StatusSeeOther)
}

// webUserDelete deletes a user, revoking its keys and ending its
// sessions; a user who owns machines is refused unless the form says to
// delete them too.
func (srv *Server) webUserDelete(w http.ResponseWriter, r *http.Request, s *webSession) {
	name := r.PathValue("name")
	n, err := srv.DeleteUser(r.Context(), name, r.PostFormValue("force") != "")
	switch {
	case errors.Is(err, store.ErrNotFound):
		srv.showKeys(w, r, s, http.StatusNotFound, "", "", fmt.Sprintf("There is no user %s.", name))
		return
	case errors.Is(err, store.ErrUserHasNode):
		srv.showKeys(w, r, s, http.StatusBadRequest, "", "", fmt.Sprintf("%s still owns machines: delete them first, or tick \"and its machines\" to delete them with the user.", name))
		return
	case err != nil:
		srv.showKeys(w, r, s, http.StatusBadRequest, "", "", err.Error())
		return
	}
	done := "user " + name + " deleted"
	if n > 0 {
		done += fmt.Sprintf(" with %d machine(s)", n)
	}
	http.Redirect(w, r, "/keys?done="+urlQuery(done), http.StatusSeeOther)
}

// sessionRow is one session on the users and keys page.
type sessionRow struct {
	SessionInfo
	Short   string // the ID's first 8 characters
	Current bool   // the session of this request
}

// visibleSessions returns the sessions s may see.
func (srv *Server) visibleSessions(ctx context.Context, s *webSession) ([]sessionRow, error) {
	all, err := srv.WebSessions(ctx)
	if err != nil {
		return nil, err
	}
	var out []sessionRow
	for _, si := range all {
		if s.Admin || si.User == s.User {
			out = append(out, sessionRow{SessionInfo: si, Short: strings.ToLower(si.ID[:min(8, len(si.ID))]), Current: si.ID == s.hash})
		}
	}
	return out, nil
}
