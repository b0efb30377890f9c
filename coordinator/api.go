package coordinator

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// API paths. They are part of the coordinator protocol (netmap package).
const (
	PathInfo      = "/coord/v1/info"
	PathRegister  = "/coord/v1/register"
	PathMap       = "/coord/v1/map"
	PathUpdate    = "/coord/v1/update"
	PathRelayJoin = "/coord/v1/relay/join"
	PathRelayBeat = "/coord/v1/relay/heartbeat"
	PathLogin     = "/coord/v1/login"
	PathLoginWait = "/coord/v1/login/wait"
	PathRelayRevs = "/coord/v1/relay/revocations"
)

// Handler returns the API handler (TLS is the listener's business).
func (srv *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	route(mux, "GET", PathInfo, srv.handleInfo)
	route(mux, "POST", PathRegister, srv.handleRegister)
	route(mux, "POST", PathMap, srv.handleMap)
	route(mux, "POST", PathUpdate, srv.handleUpdate)
	route(mux, "POST", PathRelayJoin, srv.handleRelayJoin)
	route(mux, "POST", PathRelayBeat, srv.handleRelayHeartbeat)
	route(mux, "POST", PathLogin, srv.handleLogin)
	route(mux, "POST", PathLoginWait, srv.handleLoginWait)
	route(mux, "POST", PathRelayRevs, srv.handleRelayRevocations)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return withBodyDeadline(srv.cfg.BodyTimeout, mux)
}

// route registers h for method on path, answering other methods with a
// JSON 405 (ServeMux's own 405 is plain text).
func route(mux *http.ServeMux, method, path string, h http.HandlerFunc) {
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			w.Header().Set("Allow", method)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s wants %s, not %s", path, method, r.Method))
			return
		}
		h(w, r)
	})
}

// apiError is an error with the HTTP status it maps to and, for errors
// clients branch on, a stable netmap.ErrorCode.
type apiError struct {
	code   int
	reason netmap.ErrorCode
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) error {
	return &apiError{code: code, msg: fmt.Sprintf(format, args...)}
}

// Errors for a node key the coordinator no longer accepts. Clients match
// them by code (coordclient.ErrNodeUnknown, ErrNodeExpired) and back off.
func errNodeUnknown(nk key.NodePublic) error {
	return &apiError{code: http.StatusUnauthorized, reason: netmap.CodeNodeUnknown,
		msg: fmt.Sprintf("node key %s is not registered (deleted?); register again with an auth key", nk.ShortString())}
}

func errNodeExpired() error {
	return &apiError{code: http.StatusUnauthorized, reason: netmap.CodeNodeExpired,
		msg: "node key expired; register again with an auth key"}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, netmap.ErrorResponse{Error: msg})
}

// fail writes err as a JSON error: its own status for an apiError, else 500
// with a generic message (details go to the log only).
func (srv *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		writeJSON(w, ae.code, netmap.ErrorResponse{Error: ae.msg, Code: ae.reason})
		return
	}
	if errors.Is(err, store.ErrUnavailable) {
		// Streams stay up and the mesh keeps working; only changes wait.
		srv.m.storeErrors.WithLabelValues("unavailable").Inc()
		srv.log.Warn("request failed: database unavailable", "path", r.URL.Path, "err", err)
		writeError(w, http.StatusServiceUnavailable, "coordinator database unavailable; retry shortly")
		return
	}
	srv.m.storeErrors.WithLabelValues("other").Inc()
	srv.log.Error("request failed", "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, "internal error; see the coordinator log")
}

// readBody reads the whole body, at most limit bytes, and then lifts the
// body deadline withBodyDeadline set: what follows (a stream, a long poll)
// only writes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errorf(http.StatusRequestEntityTooLarge, "request body larger than %d bytes", limit)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, errorf(http.StatusRequestTimeout, "request body did not arrive in time")
		}
		return nil, errorf(http.StatusBadRequest, "read request body: %v", err)
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
	return b, nil
}

// decodeJSON decodes one JSON value; trailing data is an error.
func decodeJSON(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(v); err != nil {
		return errorf(http.StatusBadRequest, "malformed JSON: %v", err)
	}
	if dec.More() {
		return errorf(http.StatusBadRequest, "malformed JSON: data after the object")
	}
	return nil
}

func (srv *Server) handleInfo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, netmap.ServerInfo{
		Version:   netmap.CurrentCapabilityVersion,
		Key:       srv.coordPub,
		AdmitKeys: []key.SigningPublic{srv.signPub},
	})
}

// authNode checks the request's proof against a registered node and returns
// it. The body must already be read.
func (srv *Server) authNode(r *http.Request, body []byte) (*nodeState, error) {
	pubText, sealed, err := netmap.ParseProof(r.Header.Get(netmap.ProofHeader))
	if err != nil {
		srv.m.authFailures.WithLabelValues("malformed").Inc()
		return nil, errorf(http.StatusUnauthorized, "%v", err)
	}
	nk, err := key.ParseNodePublic(pubText)
	if err != nil {
		srv.m.authFailures.WithLabelValues("malformed").Inc()
		return nil, errorf(http.StatusUnauthorized, "proof of possession: %v", err)
	}
	now := srv.now()
	srv.st.mu.RLock()
	n := srv.st.byKey[nk]
	var shared key.SharedKey
	var expired bool
	if n != nil {
		shared, expired = n.shared, n.expired(now)
	}
	srv.st.mu.RUnlock()
	if n == nil && srv.shared != nil {
		n, shared, expired = srv.authFromStore(r, nk, now)
	}
	if n == nil {
		srv.m.authFailures.WithLabelValues("unknown_node").Inc()
		return nil, errNodeUnknown(nk)
	}
	if err := srv.checkProof(&shared, sealed, r, body, now); err != nil {
		return nil, err
	}
	if expired {
		srv.m.authFailures.WithLabelValues("expired").Inc()
		return nil, errNodeExpired()
	}
	return n, nil
}

// authFromStore looks for a node this replica has not heard of yet
// (registered through another replica a moment ago) in the store: a
// lookup by key, like the in-memory one; the proof is checked after, as
// for any node.
func (srv *Server) authFromStore(r *http.Request, nk key.NodePublic, now time.Time) (*nodeState, key.SharedKey, bool) {
	n := srv.nodeFromStore(r.Context(), nk)
	if n == nil {
		return nil, key.SharedKey{}, false
	}
	srv.st.mu.RLock()
	defer srv.st.mu.RUnlock()
	return n, n.shared, n.expired(now)
}

// nodeFromStore loads a node this replica has not heard of yet from the
// store, or returns nil.
func (srv *Server) nodeFromStore(ctx context.Context, nk key.NodePublic) *nodeState {
	rec, err := srv.store.NodeByKey(ctx, nk.String())
	if err != nil {
		return nil
	}
	srv.syncNode(ctx, netmap.NodeID(rec.ID))
	srv.st.mu.RLock()
	defer srv.st.mu.RUnlock()
	return srv.st.byKey[nk]
}

func (srv *Server) checkProof(shared *key.SharedKey, sealed []byte, r *http.Request, body []byte, now time.Time) error {
	nonce, err := netmap.OpenProof(shared, sealed, r.Method, r.URL.Path, body, now)
	if err != nil {
		srv.m.authFailures.WithLabelValues(proofReason(err)).Inc()
		return errorf(http.StatusUnauthorized, "%v", err)
	}
	if err := srv.replay.add(nonce, sourceAddr(r), now); err != nil {
		srv.m.authFailures.WithLabelValues("replay").Inc()
		return err
	}
	return nil
}

func proofReason(err error) string {
	switch {
	case errors.Is(err, netmap.ErrProofStale):
		return "stale"
	case errors.Is(err, netmap.ErrProofMismatch):
		return "mismatch"
	}
	return "invalid"
}

// readNodeRequest reads a size-limited body, authenticates the node by its
// proof of possession over that body, and decodes the body into v. On any
// failure it has already answered with a JSON error and returns nil.
func (srv *Server) readNodeRequest(w http.ResponseWriter, r *http.Request, v any) *nodeState {
	body, err := readBody(w, r, MaxRequestBody)
	if err != nil {
		srv.fail(w, r, err)
		return nil
	}
	n, err := srv.authNode(r, body)
	if err != nil {
		srv.fail(w, r, err)
		return nil
	}
	if err := decodeJSON(body, v); err != nil {
		srv.fail(w, r, err)
		return nil
	}
	return n
}

func (srv *Server) handleUpdate(w http.ResponseWriter, r *http.Request) {
	var req netmap.UpdateRequest
	n := srv.readNodeRequest(w, r, &req)
	if n == nil {
		return
	}
	if err := validateReport(req.Endpoints, req.HomeRelay); err != nil {
		srv.fail(w, r, err)
		return
	}
	if err := validateAdvertised(req.AdvertisedRoutes); err != nil {
		srv.fail(w, r, err)
		return
	}
	if err := srv.applyReport(r.Context(), n, nil, req.Endpoints, req.HomeRelay, req.Netcheck); err != nil {
		srv.fail(w, r, err)
		return
	}
	if err := srv.applyAdvertised(r.Context(), n, req.AdvertisedRoutes, req.ExitNode); err != nil {
		srv.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// handleMap serves a node's netmap stream.
func (srv *Server) handleMap(w http.ResponseWriter, r *http.Request) {
	var req netmap.MapRequest
	n := srv.readNodeRequest(w, r, &req)
	if n == nil {
		return
	}
	if req.Version < netmap.MinCapabilityVersion {
		srv.fail(w, r, errorf(http.StatusBadRequest, "client version %d is too old; this coordinator needs %d or newer", req.Version, netmap.MinCapabilityVersion))
		return
	}
	if err := validateReport(&req.Endpoints, &req.HomeRelay); err != nil {
		srv.fail(w, r, err)
		return
	}
	var dk *key.DiscoPublic
	if !req.DiscoKey.IsZero() {
		dk = &req.DiscoKey
	}
	// Empty endpoints or home relay mean "not known yet": keep the last
	// reported ones rather than hiding a restarting node from its peers.
	var eps *[]netip.AddrPort
	if len(req.Endpoints) > 0 {
		eps = &req.Endpoints
	}
	var home *string
	if req.HomeRelay != "" {
		home = &req.HomeRelay
	}
	if err := srv.applyReport(r.Context(), n, dk, eps, home, req.Netcheck); err != nil {
		if !errors.Is(err, store.ErrUnavailable) {
			srv.fail(w, r, err)
			return
		}
		// The database is away: serve the stream from memory anyway (the
		// node's peers and keys are all there); its report is lost, and
		// its next update carries it again.
		srv.log.Warn("map stream without storing the node's report: database unavailable", "node", n.rec.Name, "err", err)
	}

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	s := newSession(n, cancel)
	if err := srv.openSession(s); err != nil {
		srv.fail(w, r, err)
		return
	}
	defer srv.closeSession(s)
	w.Header().Set("Content-Type", "application/x-wiremesh-frames")
	w.WriteHeader(http.StatusOK)
	if err := srv.runStream(ctx, s, w); err != nil && !errors.Is(err, context.Canceled) {
		srv.log.Debug("map stream ended", "node", n.rec.Name, "err", err)
	}
}

// openSession attaches s to its node, unless the node was deleted or
// expired since the request was authenticated.
func (srv *Server) openSession(s *session) error {
	now := srv.now()
	st := srv.st
	st.mu.Lock()
	n := s.node
	if st.nodes[n.id] != n {
		st.mu.Unlock()
		return errNodeUnknown(n.nodeKey)
	}
	if n.expired(now) {
		st.mu.Unlock()
		return errNodeExpired()
	}
	old := n.sess
	wasOnline := n.online()
	n.sess = s
	if old != nil {
		old.cancel() // a node has one stream; the newest wins
	} else if !wasOnline {
		st.onlineChangedLocked(n, now)
	}
	st.mu.Unlock()
	srv.m.streams.Inc()
	srv.rep.streamChanged(n.id, true)
	return nil
}

func (srv *Server) closeSession(s *session) {
	srv.m.streams.Dec()
	n := s.node
	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	now := srv.now()
	st := srv.st
	st.mu.Lock()
	if n.sess != s {
		st.mu.Unlock()
		return // replaced by a newer stream
	}
	n.sess = nil
	n.rec.LastSeen = now
	rec := n.rec
	_, live := st.nodes[n.id]
	if live && !n.expired(now) && !n.online() {
		st.onlineChangedLocked(n, now)
	}
	st.mu.Unlock()
	srv.rep.streamChanged(n.id, false)
	if live {
		// last_seen is informational: a failed write loses only it.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.store.UpdateNode(ctx, &rec); err != nil && !errors.Is(err, store.ErrNotFound) {
			srv.log.Warn("store last seen", "node", rec.Name, "err", err)
		}
	}
}

func parseLeaf(c tls.Certificate) (*x509.Certificate, error) {
	if len(c.Certificate) == 0 {
		return nil, errors.New("tls certificate: empty chain")
	}
	return x509.ParseCertificate(c.Certificate[0])
}
