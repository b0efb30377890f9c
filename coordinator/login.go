package coordinator

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// Interactive login, the coordinator's side (the wire flow is described in
// netmap/login.go):
//
//	node                      coordinator                    console user
//	POST /coord/v1/login ───► login row: hash(code), node key,
//	  (proof of node key)      hostname, OS, expires in 10 min
//	◄── URL /login/CODE ─────
//	prints the URL ──────────────────────────────────────────► opens it, signed in
//	POST /coord/v1/login/wait                                 sees hostname and OS,
//	  (proof, long poll) ───►  reads the row every second     approves (CSRF form)
//	                           approve: a single-use auth key for the user,
//	                           sealed to the node key, stored in the row
//	◄── approved + sealed key
//	opens it, registers with it as with any auth key
//
// Rows live in the store, so the node and the browser may reach different
// replicas. Only the code's hash is stored.

// Interactive login limits.
const (
	// LoginLifetime is how long a login URL waits for approval.
	LoginLifetime = 10 * time.Minute
	// loginPollWindow is how long one wait request is held before it is
	// answered "pending" (the client asks again): well under the
	// client's and proxies' request limits.
	loginPollWindow = 25 * time.Second
	// loginPollInterval is how often a held wait reads its row: the delay
	// between approval and registration.
	loginPollInterval = time.Second
	// maxPendingLogins bounds the logins waiting at once, over every
	// replica: each costs a row and, while polled, a read per second.
	// Unauthenticated callers can start logins (they only prove they hold
	// a node key), so this is what bounds them.
	maxPendingLogins = 256
	// loginCodeBytes is the code's entropy (128 bits): it is the URL's
	// only secret.
	loginCodeBytes = 16
)

func hashSecret(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

func newCode() string {
	b := make([]byte, loginCodeBytes)
	rand.Read(b)
	return encodeToken(b)
}

// readLoginRequest reads a body and checks the proof of possession of the
// node key it names (the login endpoints have no other credential).
func (srv *Server) readLoginProof(w http.ResponseWriter, r *http.Request, nk func(body []byte) (key.NodePublic, error)) ([]byte, key.NodePublic, error) {
	body, err := readBody(w, r, MaxRequestBody)
	if err != nil {
		return nil, key.NodePublic{}, err
	}
	pubText, sealed, err := netmap.ParseProof(r.Header.Get(netmap.ProofHeader))
	if err != nil {
		return nil, key.NodePublic{}, errorf(http.StatusUnauthorized, "%v", err)
	}
	pub, err := key.ParseNodePublic(pubText)
	if err != nil {
		return nil, key.NodePublic{}, errorf(http.StatusUnauthorized, "proof of possession: %v", err)
	}
	if nk != nil {
		want, err := nk(body)
		if err != nil {
			return nil, key.NodePublic{}, err
		}
		if want != pub {
			return nil, key.NodePublic{}, errorf(http.StatusUnauthorized, "proof of possession made with another key than node_key")
		}
	}
	shared := key.Precompute(srv.coordPriv, pub)
	if err := srv.checkProof(&shared, sealed, r, body, srv.now()); err != nil {
		return nil, key.NodePublic{}, err
	}
	return body, pub, nil
}

func (srv *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	var req netmap.LoginRequest
	_, _, err := srv.readLoginProof(w, r, func(body []byte) (key.NodePublic, error) {
		if err := decodeJSON(body, &req); err != nil {
			return key.NodePublic{}, err
		}
		if req.NodeKey.IsZero() {
			return key.NodePublic{}, errorf(http.StatusBadRequest, "node_key is missing")
		}
		return req.NodeKey, nil
	})
	if err != nil {
		srv.fail(w, r, err)
		return
	}
	if len(req.Hostname) > maxHostname || len(req.OS) > maxOS {
		srv.fail(w, r, errorf(http.StatusBadRequest, "hostname longer than %d bytes or os longer than %d", maxHostname, maxOS))
		return
	}
	base := srv.WebURL()
	if base == "" {
		srv.fail(w, r, errorf(http.StatusServiceUnavailable, "interactive login needs the web console: start the coordinator with --web-listen, or use --authkey"))
		return
	}
	srv.st.mu.RLock()
	n := srv.st.byKey[req.NodeKey]
	live := n != nil && !n.expired(srv.now())
	srv.st.mu.RUnlock()
	if live {
		srv.fail(w, r, errorf(http.StatusConflict, "this node key is already registered; no login needed"))
		return
	}
	now := srv.now()
	code := newCode()
	l := store.Login{CodeHash: hashSecret(code), NodeKey: req.NodeKey.String(), Hostname: req.Hostname, OS: req.OS,
		Created: now, Expires: now.Add(srv.cfg.LoginLifetime)}
	if err := srv.store.CreateLogin(r.Context(), l, maxPendingLogins, now); err != nil {
		if errors.Is(err, store.ErrLoginLimit) {
			srv.m.logins.WithLabelValues("limited").Inc()
			err = errorf(http.StatusServiceUnavailable, "too many logins are waiting for approval; retry later or use --authkey")
		}
		srv.fail(w, r, err)
		return
	}
	srv.m.logins.WithLabelValues("started").Inc()
	srv.log.Info("interactive login started", "hostname", req.Hostname, "key", req.NodeKey.ShortString())
	writeJSON(w, http.StatusOK, netmap.LoginResponse{URL: base + "/login/" + code, Code: code, Expires: l.Expires})
}

func (srv *Server) handleLoginWait(w http.ResponseWriter, r *http.Request) {
	body, pub, err := srv.readLoginProof(w, r, nil)
	if err != nil {
		srv.fail(w, r, err)
		return
	}
	var req netmap.LoginWaitRequest
	if err := decodeJSON(body, &req); err != nil {
		srv.fail(w, r, err)
		return
	}
	hash := hashSecret(req.Code)
	deadline := time.NewTimer(loginPollWindow)
	defer deadline.Stop()
	tick := time.NewTicker(loginPollInterval)
	defer tick.Stop()
	for {
		l, err := srv.store.Login(r.Context(), hash)
		switch {
		case errors.Is(err, store.ErrNotFound):
			srv.fail(w, r, loginExpired())
			return
		case err != nil:
			srv.fail(w, r, err)
			return
		case l.NodeKey != pub.String():
			// The code belongs to another node key: answer as if unknown.
			srv.fail(w, r, loginExpired())
			return
		case !l.Approved.IsZero():
			writeJSON(w, http.StatusOK, netmap.LoginWaitResponse{Status: netmap.LoginApproved, User: l.ApprovedBy, SealedAuthKey: l.Sealed})
			return
		case !srv.now().Before(l.Expires):
			srv.m.logins.WithLabelValues("expired").Inc()
			srv.fail(w, r, loginExpired())
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-deadline.C:
			writeJSON(w, http.StatusOK, netmap.LoginWaitResponse{Status: netmap.LoginPending})
			return
		case <-tick.C:
		}
	}
}

// loginExpired is the 410 a node gets for an expired (or unknown) login;
// its code tells the node to stop.
func loginExpired() error {
	return &apiError{code: http.StatusGone, reason: netmap.CodeLoginExpired,
		msg: "the login link expired before anyone approved it (links last 10 minutes); start the node again for a new one"}
}

// LoginInfo is what the approval page shows about a waiting node.
type LoginInfo struct {
	Hostname string
	OS       string
	NodeKey  string
	Expires  time.Time
}

// Errors of the approval page.
var (
	ErrLoginUnknown = errors.New("this login link is unknown or has expired")
	ErrLoginDone    = errors.New("this login link was already approved")
)

// PendingLogin returns the node waiting on code.
func (srv *Server) PendingLogin(ctx context.Context, code string) (LoginInfo, error) {
	l, err := srv.store.Login(ctx, hashSecret(code))
	switch {
	case errors.Is(err, store.ErrNotFound):
		return LoginInfo{}, ErrLoginUnknown
	case err != nil:
		return LoginInfo{}, err
	case !l.Approved.IsZero():
		return LoginInfo{}, ErrLoginDone
	case !srv.now().Before(l.Expires):
		return LoginInfo{}, ErrLoginUnknown
	}
	return LoginInfo{Hostname: l.Hostname, OS: l.OS, NodeKey: l.NodeKey, Expires: l.Expires}, nil
}

// ApproveLogin approves the login with code for user: the waiting node is
// given a single-use auth key of user's, valid for LoginLifetime, sealed to
// its node key.
func (srv *Server) ApproveLogin(ctx context.Context, code, user string) error {
	info, err := srv.PendingLogin(ctx, code)
	if err != nil {
		return err
	}
	nk, err := key.ParseNodePublic(info.NodeKey)
	if err != nil {
		return fmt.Errorf("stored login: %w", err)
	}
	now := srv.now()
	sec := netmap.NewSecret()
	k := &store.AuthKey{Hash: sec.Hash(), User: user, Created: now, Expires: now.Add(LoginLifetime)}
	if err := srv.store.CreateAuthKey(ctx, k); err != nil {
		return fmt.Errorf("auth key for the login: %w", err)
	}
	sealed := key.Seal(srv.coordPriv, nk, []byte(netmap.FormatAuthKey(sec, srv.pin)))
	switch err := srv.store.ApproveLogin(ctx, hashSecret(code), user, sealed, now); {
	case errors.Is(err, store.ErrKeyUsed):
		srv.store.RevokeAuthKey(ctx, k.ID, now)
		return ErrLoginDone
	case errors.Is(err, store.ErrKeyExpired), errors.Is(err, store.ErrNotFound):
		srv.store.RevokeAuthKey(ctx, k.ID, now)
		return ErrLoginUnknown
	case err != nil:
		return err
	}
	srv.m.logins.WithLabelValues("approved").Inc()
	srv.log.Info("interactive login approved", "hostname", info.Hostname, "user", user)
	srv.audit(ctx, "login approve", fmt.Sprintf("%s (%s) as %s", info.Hostname, nk.ShortString(), user))
	return nil
}
