package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/policy"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// Limits on what a node reports about itself.
const (
	maxHostname  = 256 // longer hostnames are refused, not truncated
	maxOS        = 64
	maxEndpoints = 32 // interfaces + STUN + port mapping stay far below this
	maxRegionLen = 32 // matches admit.MaxRegionLen
	maxNameLen   = 63 // one DNS label
)

func (srv *Server) handleRegister(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r, MaxRequestBody)
	if err != nil {
		srv.m.registrations.WithLabelValues(resultBadRequest).Inc()
		srv.fail(w, r, err)
		return
	}
	resp, result, err := srv.register(r, body)
	srv.m.registrations.WithLabelValues(result).Inc()
	if err != nil {
		srv.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// register handles one registration and returns the result label for metrics.
func (srv *Server) register(r *http.Request, body []byte) (*netmap.RegisterResponse, string, error) {
	var req netmap.RegisterRequest
	if err := decodeJSON(body, &req); err != nil {
		return nil, resultBadRequest, err
	}
	if req.Version < netmap.MinCapabilityVersion {
		return nil, resultBadRequest, errorf(http.StatusBadRequest, "client version %d is too old; this coordinator needs %d or newer", req.Version, netmap.MinCapabilityVersion)
	}
	if req.NodeKey.IsZero() {
		return nil, resultBadRequest, errorf(http.StatusBadRequest, "node_key is missing")
	}
	if req.DiscoKey.IsZero() {
		return nil, resultBadRequest, errorf(http.StatusBadRequest, "disco_key is missing")
	}
	if len(req.Hostname) > maxHostname || len(req.OS) > maxOS {
		return nil, resultBadRequest, errorf(http.StatusBadRequest, "hostname longer than %d bytes or os longer than %d", maxHostname, maxOS)
	}
	// Proof of possession of the key being registered. The credential is
	// checked first, with lookups only: a registered live node key, or an
	// auth key the store knows and that can still register. Only then is
	// the proof opened and its nonce recorded (replay.go), so requests
	// with a bogus credential cost no X25519 and take no replay slot.
	pubText, sealed, err := netmap.ParseProof(r.Header.Get(netmap.ProofHeader))
	if err != nil {
		return nil, resultBadRequest, errorf(http.StatusUnauthorized, "%v", err)
	}
	if pubText != req.NodeKey.String() {
		return nil, resultBadRequest, errorf(http.StatusUnauthorized, "proof of possession made with another key than node_key")
	}
	now := srv.now()
	st := srv.st
	st.mu.RLock()
	existing := st.byKey[req.NodeKey]
	var live bool
	var shared key.SharedKey
	if existing != nil {
		live, shared = !existing.expired(now), existing.shared
	}
	st.mu.RUnlock()
	if live {
		// Already registered: idempotent, no key use. The node key itself
		// is the credential.
		if err := srv.checkProof(&shared, sealed, r, body, now); err != nil {
			return nil, resultBadRequest, err
		}
		st.mu.RLock()
		node := existing.toNetmap()
		st.mu.RUnlock()
		return &netmap.RegisterResponse{Node: node}, resultExisting, nil
	}
	secret, err := parseAuthSecret(req.AuthKey)
	if err != nil {
		return nil, resultBadKey, errorf(http.StatusUnauthorized, "auth key: %v", err)
	}
	if res, err := srv.checkAuthKey(r.Context(), secret, now); err != nil {
		// With replicas, the key may have been used up by this very node
		// through another replica (whose answer was lost when it died):
		// then the node is in the store, and registering is idempotent.
		if res == resultUsedKey && existing == nil && srv.shared != nil {
			if n := srv.nodeFromStore(r.Context(), req.NodeKey); n != nil {
				st.mu.RLock()
				shared, live, node := n.shared, !n.expired(now), n.toNetmap()
				st.mu.RUnlock()
				if live {
					if err := srv.checkProof(&shared, sealed, r, body, now); err != nil {
						return nil, resultBadRequest, err
					}
					return &netmap.RegisterResponse{Node: node}, resultExisting, nil
				}
			}
		}
		return nil, res, err
	}
	if existing == nil {
		shared = key.Precompute(srv.coordPriv, req.NodeKey)
	}
	if err := srv.checkProof(&shared, sealed, r, body, now); err != nil {
		return nil, resultBadRequest, err
	}

	rec := store.Node{
		NodeKey:   req.NodeKey.String(),
		DiscoKey:  req.DiscoKey.String(),
		Hostname:  req.Hostname,
		OS:        req.OS,
		Created:   now,
		KeyExpiry: now.Add(srv.cfg.KeyExpiry),
		LastSeen:  now,
	}
	if existing != nil {
		// An expired node re-authenticates: same ID, name and address.
		existing.writeMu.Lock()
		defer existing.writeMu.Unlock()
		st.mu.RLock()
		old := existing.rec
		st.mu.RUnlock()
		rec.ID, rec.Name, rec.IP, rec.Created = old.ID, old.Name, old.IP, old.Created
		rec.AdvertisedRoutes, rec.ApprovedRoutes = old.AdvertisedRoutes, old.ApprovedRoutes
	}
	var err2 error
	if existing != nil {
		_, err2 = srv.store.RegisterNode(r.Context(), secret.Hash(), now, &rec)
	} else {
		for attempt := 1; ; attempt++ {
			release, ok := st.reserve(&rec, req.Hostname)
			if !ok {
				return nil, resultError, errorf(http.StatusServiceUnavailable, "no free mesh address left in %s", meshPrefix)
			}
			_, err2 = srv.store.RegisterNode(r.Context(), secret.Hash(), now, &rec)
			conflict := errors.Is(err2, store.ErrConflict)
			if err2 == nil {
				defer release(false, false)
				break
			}
			// With replicas, another one may have taken the name or the
			// address between our pick and our commit: remember which as
			// taken and pick again.
			var ce *store.ConflictError
			col := ""
			if errors.As(err2, &ce) {
				col = ce.Column
			}
			release(srv.shared != nil && col == "ip", srv.shared != nil && col == "name")
			if !conflict || srv.shared == nil || attempt >= maxRegisterAttempts {
				break
			}
			st.mu.RLock()
			other := st.byKey[req.NodeKey]
			var node netmap.Node
			if other != nil {
				node = other.toNetmap()
			}
			st.mu.RUnlock()
			if other != nil { // registered through another replica meanwhile
				return &netmap.RegisterResponse{Node: node}, resultExisting, nil
			}
		}
	}
	if err := err2; err != nil {
		switch {
		case errors.Is(err, store.ErrNotFound):
			return nil, resultBadKey, errorf(http.StatusUnauthorized, "auth key not recognised")
		case errors.Is(err, store.ErrKeyUsed):
			return nil, resultUsedKey, errorf(http.StatusUnauthorized, "auth key already used (it is single-use; create a --reusable one for many nodes)")
		case errors.Is(err, store.ErrKeyExpired):
			return nil, resultExpiredKey, errorf(http.StatusUnauthorized, "auth key expired")
		case errors.Is(err, store.ErrKeyRevoked):
			return nil, resultRevokedKey, errorf(http.StatusUnauthorized, "auth key revoked")
		case errors.Is(err, store.ErrConflict):
			return nil, resultError, errorf(http.StatusConflict, "node name, key or address already taken; retry")
		}
		return nil, resultError, err
	}

	var n *nodeState
	if existing == nil {
		var err error
		if n, err = srv.newNodeState(rec); err != nil { // X25519 outside the lock
			return nil, resultError, err
		}
	}
	// Registered again (an expired node re-authenticating, or a deleted
	// node's key registered anew): relays may serve it again.
	srv.unrevoke(r.Context(), req.NodeKey)
	st.mu.Lock()
	defer st.mu.Unlock()
	if existing != nil {
		existing.rec = rec
		existing.discoKey = req.DiscoKey
		existing.expiredSent = false
		st.unindexLocked(existing)
		st.indexLocked(existing)
		st.changedLocked(existing, now, true)
		return &netmap.RegisterResponse{Node: existing.toNetmap()}, resultOK, nil
	}
	st.addLocked(n)
	st.changedLocked(n, now, true)
	srv.log.Info("node registered", "node", rec.Name, "ip", rec.IP.String(), "key", req.NodeKey.ShortString())
	return &netmap.RegisterResponse{Node: n.toNetmap()}, resultOK, nil
}

// checkAuthKey refuses an auth key that cannot register a node: unknown,
// expired or used up. RegisterNode checks again in its transaction; this
// is the cheap early check.
func (srv *Server) checkAuthKey(ctx context.Context, secret netmap.Secret, now time.Time) (string, error) {
	k, err := srv.store.AuthKeyByHash(ctx, secret.Hash())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return resultBadKey, errorf(http.StatusUnauthorized, "auth key not recognised")
	case err != nil:
		return resultError, err
	case !k.Revoked.IsZero():
		return resultRevokedKey, errorf(http.StatusUnauthorized, "auth key revoked")
	case !k.Expires.IsZero() && !now.Before(k.Expires):
		return resultExpiredKey, errorf(http.StatusUnauthorized, "auth key expired")
	case !k.Reusable && k.Uses > 0:
		return resultUsedKey, errorf(http.StatusUnauthorized, "auth key already used (it is single-use; create a --reusable one for many nodes)")
	}
	return "", nil
}

// parseAuthSecret accepts the full auth key text or just its secret.
func parseAuthSecret(s string) (netmap.Secret, error) {
	if s == "" {
		return netmap.Secret{}, errors.New("missing")
	}
	if strings.HasPrefix(s, netmap.AuthKeyPrefix) {
		sec, _, err := netmap.ParseAuthKey(s)
		return sec, err
	}
	return netmap.ParseSecret(s)
}

// sanitizeName turns a hostname into a DNS label: lower case, runs of
// other characters as one '-', at most maxNameLen-6 bytes so a "-NNNNN"
// suffix still fits.
func sanitizeName(h string) string {
	if i := strings.IndexByte(h, '.'); i > 0 {
		h = h[:i] // first label of an FQDN
	}
	var b strings.Builder
	dash := false
	for _, c := range strings.ToLower(h) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' {
			b.WriteRune(c)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
		if b.Len() >= maxNameLen-6 {
			break
		}
	}
	s := strings.Trim(b.String(), "-")
	if s == "" {
		s = "node"
	}
	return s
}

// maxRegisterAttempts bounds how often a registration picks a new name and
// address after another replica took its pick: more than two replicas
// racing for one address several times in a row is not plausible.
const maxRegisterAttempts = 8

// reserve picks a free name and address for rec and holds them, so that
// concurrent registrations (group-committed together by the store) never
// pick the same. release gives them back; takenElsewhere keeps them
// marked as used (another replica has them, and will announce them).
func (st *state) reserve(rec *store.Node, hostname string) (release func(ipElsewhere, nameElsewhere bool), ok bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	rec.ID = 0
	rec.Name = st.uniqueNameLocked(sanitizeName(hostname))
	ip, ok := st.nextIPLocked()
	if !ok {
		return nil, false
	}
	rec.IP = ip
	st.reservedNames[rec.Name] = struct{}{}
	st.usedIPs[ip] = 0
	st.ipCursor = ip
	name := rec.Name
	return func(ipElsewhere, nameElsewhere bool) {
		st.mu.Lock()
		defer st.mu.Unlock()
		delete(st.reservedNames, name)
		if nameElsewhere {
			if _, known := st.byName[name]; !known {
				st.takenNames[name] = struct{}{}
			}
		}
		if st.usedIPs[ip] != 0 {
			return // taken by the node, or known to be taken
		}
		if ipElsewhere {
			st.usedIPs[ip] = takenElsewhereID
			st.jumpCursorLocked()
		} else {
			delete(st.usedIPs, ip)
		}
	}, true
}

// uniqueNameLocked returns base, or base-2, base-3, ... whichever is
// neither taken nor reserved by a registration in flight.
func (st *state) uniqueNameLocked(base string) string {
	free := func(n string) bool {
		_, taken := st.byName[n]
		_, reserved := st.reservedNames[n]
		_, elsewhere := st.takenNames[n]
		return !taken && !reserved && !elsewhere
	}
	if free(base) {
		return base
	}
	for i := 2; ; i++ {
		if n := base + "-" + strconv.Itoa(i); free(n) {
			return n
		}
	}
}

func validateReport(eps *[]netip.AddrPort, home *string) error {
	if eps != nil {
		if len(*eps) > maxEndpoints {
			return errorf(http.StatusBadRequest, "at most %d endpoints, got %d", maxEndpoints, len(*eps))
		}
		for _, e := range *eps {
			if !e.IsValid() || e.Port() == 0 {
				return errorf(http.StatusBadRequest, "endpoint %q is not ip:port", e.String())
			}
		}
	}
	if home != nil && len(*home) > maxRegionLen {
		return errorf(http.StatusBadRequest, "home_relay longer than %d bytes", maxRegionLen)
	}
	return nil
}

// applyReport records what a node says about itself and, when peers can see
// the difference, fans it out. Nil arguments are unchanged.
func (srv *Server) applyReport(ctx context.Context, n *nodeState, disco *key.DiscoPublic, eps *[]netip.AddrPort, home *string, nc *netmap.Netcheck) error {
	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	st := srv.st
	st.mu.RLock()
	rec := n.rec
	oldDisco := n.discoKey
	st.mu.RUnlock()
	visible := false
	if disco != nil && *disco != oldDisco {
		rec.DiscoKey = disco.String()
		visible = true
	}
	if eps != nil && !slices.Equal(*eps, rec.Endpoints) {
		rec.Endpoints = slices.Clone(*eps)
		visible = true
	}
	if home != nil && *home != rec.HomeRelay {
		rec.HomeRelay = *home
		visible = true
	}
	changed := visible
	if nc != nil {
		b, _ := json.Marshal(nc)
		if !bytes.Equal(b, rec.Netcheck) {
			rec.Netcheck = b
			changed = true
		}
	}
	if !changed {
		return nil
	}
	if err := srv.store.UpdateNode(ctx, &rec); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return errNodeUnknown(n.nodeKey)
		}
		return err
	}
	now := srv.now()
	st.mu.Lock()
	defer st.mu.Unlock()
	n.rec = rec
	if disco != nil {
		n.discoKey = *disco
	}
	if _, live := st.nodes[n.id]; visible && live {
		st.changedLocked(n, now, false)
	}
	return nil
}

// deleteNode removes a node by name. onlyIfOffline refuses when it has a
// stream (ephemeral cleanup racing a reconnect).
func (srv *Server) deleteNode(ctx context.Context, name string, onlyIfOffline bool) error {
	st := srv.st
	st.mu.RLock()
	n := st.byName[name]
	st.mu.RUnlock()
	if n == nil {
		return fmt.Errorf("node %q: %w", name, store.ErrNotFound)
	}
	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	st.mu.RLock()
	online := n.online()
	st.mu.RUnlock()
	if onlyIfOffline && online {
		return nil
	}
	if err := srv.store.DeleteNode(ctx, n.rec.ID); err != nil {
		return err
	}
	now := srv.now()
	st.mu.Lock()
	if !n.expiredSent {
		st.removedLocked(n, now)
	}
	st.removeLocked(n)
	if n.sess != nil {
		n.sess.cancel()
	}
	st.mu.Unlock()
	if err := srv.revoke(ctx, n.nodeKey, "deleted"); err != nil {
		return fmt.Errorf("node %s deleted, but storing its revocation failed (relays have it until the coordinator restarts): %w", name, err)
	}
	return nil
}

// expireNode ends a node's key validity now: its peers drop it within one
// delta and its stream is closed; it must register again.
func (srv *Server) expireNode(ctx context.Context, name string) error {
	st := srv.st
	st.mu.RLock()
	n := st.byName[name]
	st.mu.RUnlock()
	if n == nil {
		return fmt.Errorf("node %q: %w", name, store.ErrNotFound)
	}
	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	now := srv.now()
	st.mu.RLock()
	rec := n.rec
	st.mu.RUnlock()
	rec.KeyExpiry = now
	if err := srv.store.UpdateNode(ctx, &rec); err != nil {
		return err
	}
	st.mu.Lock()
	if !n.expiredSent {
		st.removedLocked(n, now)
	}
	n.rec = rec
	n.expiredSent = true
	n.wire.Store(nil)
	if n.sess != nil {
		n.sess.cancel()
	}
	st.mu.Unlock()
	if err := srv.revoke(ctx, n.nodeKey, "expired"); err != nil {
		return fmt.Errorf("node %s expired, but storing its revocation failed (relays have it until the coordinator restarts): %w", name, err)
	}
	return nil
}

// RenameNode gives a node a new name (a DNS label, unique). Peers learn
// it with their next delta; as names are policy selectors, every stream
// recomputes its peers and filter, as after a policy change.
func (srv *Server) RenameNode(ctx context.Context, name, to string) error {
	if !validLabel(to) || sanitizeName(to) != to {
		return fmt.Errorf("new name %q: want a DNS label (lower-case letters, digits and '-', at most %d)", to, maxNameLen)
	}
	st := srv.st
	st.mu.RLock()
	n := st.byName[name]
	_, taken := st.byName[to]
	_, takenElsewhere := st.takenNames[to]
	st.mu.RUnlock()
	if n == nil {
		return fmt.Errorf("node %q: %w", name, store.ErrNotFound)
	}
	if name == to {
		return nil
	}
	if taken || takenElsewhere {
		return fmt.Errorf("the name %s is taken", to)
	}
	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	if err := srv.store.RenameNode(ctx, n.rec.ID, to); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("the name %s is taken", to)
		}
		return err
	}
	now := srv.now()
	st.mu.Lock()
	if st.byName[name] == n {
		delete(st.byName, name)
	}
	n.rec.Name = to
	st.byName[to] = n
	st.unindexLocked(n)
	st.indexLocked(n)
	st.changedLocked(n, now, true)
	for _, o := range st.nodes {
		if o.sess != nil {
			o.sess.mark(func(pd *pending) { pd.recompute = true }, now)
		}
	}
	st.mu.Unlock()
	srv.log.Info("node renamed", "from", name, "to", to)
	srv.audit(ctx, "nodes rename", name+" -> "+to)
	return nil
}

// SetPolicy parses text, runs its tests against the registered nodes, and
// only if all pass stores it and applies it: every node with a stream gets
// a delta with its new peers and packet filter. A failing test leaves the
// old policy in force and returns an error wrapping policy.ErrTestFailed.
func (srv *Server) SetPolicy(ctx context.Context, text []byte) error {
	p, err := policy.Parse(text)
	if err != nil {
		return err
	}
	srv.policyMu.Lock()
	defer srv.policyMu.Unlock()
	st := srv.st
	st.mu.RLock()
	err = p.RunTests(st.lookupPrincipalLocked)
	st.mu.RUnlock()
	if err != nil {
		return err
	}
	if err := srv.store.SetPolicy(ctx, string(text), srv.now()); err != nil {
		return err
	}
	srv.installPolicy(p)
	srv.audit(ctx, "policy set", fmt.Sprintf("%d bytes", len(text)))
	return nil
}

// installPolicy puts p in force: every node with a stream recomputes its
// peers and filter. The caller holds policyMu.
func (srv *Server) installPolicy(p *policy.Policy) {
	now := srv.now()
	st := srv.st
	st.mu.Lock()
	defer st.mu.Unlock()
	st.setPolicyLocked(p)
	for _, n := range st.nodes {
		self := n.routesDirty
		n.routesDirty = false
		if n.sess != nil {
			n.sess.mark(func(pd *pending) { pd.recompute, pd.self = true, pd.self || self }, now)
		}
	}
}

// Policy returns the policy text in force (empty: none, all allowed).
func (srv *Server) Policy() string {
	srv.st.mu.RLock()
	defer srv.st.mu.RUnlock()
	return srv.st.policy.Text
}
