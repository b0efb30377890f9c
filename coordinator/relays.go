package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/tlspin"
)

// The relay fleet. An operator creates a join key per region (relaykey
// create); a relay joins with it (POST relay/join), proving possession of
// its relay key, and gets the admission keys, its region's mesh secret and
// the region's other relays. It then heartbeats with its relay key alone.
// A relay silent for netmap.RelayDownAfter intervals is marked down; its
// next heartbeat marks it up. Every state change reaches every node as a
// relay-map delta. Relays from --relay-map are static: always in the map,
// never heartbeating.

type relayState struct {
	rec     store.Relay
	key     key.RelayPublic
	shared  key.SharedKey
	state   string
	clients int
}

type relayFleet struct {
	srv *Server

	mu      sync.Mutex
	regions map[string]store.Region
	relays  map[key.RelayPublic]*relayState
	static  netmap.RelayMap

	cached        atomic.Pointer[netmap.RelayMap] // nil: rebuild
	warnedRegions atomic.Bool
}

func newRelayFleet(srv *Server, snap *store.Snapshot) (*relayFleet, error) {
	f := &relayFleet{srv: srv, regions: map[string]store.Region{}, relays: map[key.RelayPublic]*relayState{}}
	for _, r := range snap.Regions {
		f.regions[r.Code] = r
	}
	now := srv.now()
	for _, r := range snap.Relays {
		k, err := key.ParseRelayPublic(r.Key)
		if err != nil {
			return nil, fmt.Errorf("stored relay %s: %w", r.Name, err)
		}
		rs := &relayState{rec: r, key: k, shared: key.Precompute(srv.coordPriv, k), state: storedState(r)}
		if now.Sub(r.LastHeartbeat) > f.deadline() {
			rs.state = netmap.RelayDown
		}
		f.relays[k] = rs
	}
	if srv.cfg.RelayMapFile != "" {
		b, err := os.ReadFile(srv.cfg.RelayMapFile)
		if err != nil {
			return nil, fmt.Errorf("--relay-map: %w", err)
		}
		m, err := ParseRelayMap(b)
		if err != nil {
			return nil, fmt.Errorf("--relay-map %s: %w", srv.cfg.RelayMapFile, err)
		}
		f.static = m
	}
	return f, nil
}

// storedState is a stored relay's state; rows from before states were
// stored are up until the liveness job says otherwise.
func storedState(r store.Relay) string {
	if r.State == "" {
		return netmap.RelayUp
	}
	return r.State
}

// syncRelay applies a relay record another replica stored (a join, a
// heartbeat, a state change).
func (f *relayFleet) syncRelay(r store.Relay) {
	k, err := key.ParseRelayPublic(r.Key)
	if err != nil {
		f.srv.log.Warn("stored relay", "relay", r.Name, "err", err)
		return
	}
	f.mu.Lock()
	rs, ok := f.relays[k]
	changed := false
	if !ok {
		rs = &relayState{rec: r, key: k, shared: key.Precompute(f.srv.coordPriv, k), state: storedState(r)}
		f.relays[k] = rs
		changed = true
	} else {
		changed = rs.rec.Name != r.Name || rs.rec.Addr != r.Addr || rs.rec.Pin != r.Pin || rs.rec.Region != r.Region || rs.state != storedState(r)
		rs.rec, rs.state = r, storedState(r)
	}
	if changed {
		f.changedLocked()
	}
	f.mu.Unlock()
	if changed {
		f.srv.broadcastRelayMap()
	}
}

// syncRegion applies a region another replica stored.
func (f *relayFleet) syncRegion(r store.Region) {
	f.mu.Lock()
	old, ok := f.regions[r.Code]
	changed := !ok || old != r
	f.regions[r.Code] = r
	if changed {
		f.changedLocked()
	}
	f.mu.Unlock()
	if changed {
		f.srv.broadcastRelayMap()
	}
}

func (f *relayFleet) deadline() time.Duration {
	return netmap.RelayDownAfter * f.srv.cfg.HeartbeatInterval
}

// ParseRelayMap parses and checks a static relay map file (JSON, the
// netmap.RelayMap form).
func ParseRelayMap(b []byte) (netmap.RelayMap, error) {
	var m netmap.RelayMap
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("malformed relay map: %w", err)
	}
	seen := map[string]bool{}
	for i := range m.Regions {
		r := &m.Regions[i]
		if !validLabel(r.Code) || len(r.Code) > maxRegionLen {
			return m, fmt.Errorf("region %q: code must be a short DNS label", r.Code)
		}
		if seen[r.Code] {
			return m, fmt.Errorf("region %q listed twice", r.Code)
		}
		seen[r.Code] = true
		for j := range r.Relays {
			rl := &r.Relays[j]
			if err := validAddr(rl.Addr); err != nil {
				return m, fmt.Errorf("region %s relay %q: %w", r.Code, rl.Name, err)
			}
			if !tlspin.ValidPin(rl.Pin) {
				return m, fmt.Errorf("region %s relay %q: pin %q is not a sha256/ pin", r.Code, rl.Name, rl.Pin)
			}
			if rl.Key.IsZero() {
				return m, fmt.Errorf("region %s relay %q: key is missing", r.Code, rl.Name)
			}
			rl.State, rl.Healthy = netmap.RelayStatic, true
		}
	}
	return m, nil
}

func validAddr(a string) error {
	h, p, err := net.SplitHostPort(a)
	if err != nil || h == "" {
		return fmt.Errorf("address %q is not host:port", a)
	}
	if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("address %q: bad port", a)
	}
	return nil
}

func validLabel(s string) bool {
	if len(s) == 0 || len(s) > maxNameLen || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// relayMap returns the current relay map (static and joined relays), cached
// until the fleet changes. Callers must not modify it.
func (f *relayFleet) relayMap() netmap.RelayMap {
	if m := f.cached.Load(); m != nil {
		return *m
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.buildLocked()
	f.cached.Store(&m)
	return m
}

func (f *relayFleet) buildLocked() netmap.RelayMap {
	byCode := map[string]*netmap.Region{}
	var out netmap.RelayMap
	for _, r := range f.static.Regions {
		rc := r
		rc.Relays = append([]netmap.Relay(nil), r.Relays...)
		byCode[r.Code] = &rc
	}
	for code, r := range f.regions {
		if _, ok := byCode[code]; !ok {
			byCode[code] = &netmap.Region{Code: code, Name: r.Name, Lat: r.Lat, Lon: r.Lon}
		}
	}
	for _, rs := range f.relays {
		reg, ok := byCode[rs.rec.Region]
		if !ok {
			reg = &netmap.Region{Code: rs.rec.Region}
			byCode[rs.rec.Region] = reg
		}
		reg.Relays = append(reg.Relays, rs.toNetmap())
	}
	for _, r := range byCode {
		if r.Relays == nil {
			r.Relays = []netmap.Relay{}
		}
		sort.Slice(r.Relays, func(i, j int) bool { return r.Relays[i].Name < r.Relays[j].Name })
		out.Regions = append(out.Regions, *r)
	}
	sort.Slice(out.Regions, func(i, j int) bool { return out.Regions[i].Code < out.Regions[j].Code })
	if out.Regions == nil {
		out.Regions = []netmap.Region{}
	}
	return out
}

func (rs *relayState) toNetmap() netmap.Relay {
	return netmap.Relay{Name: rs.rec.Name, Addr: rs.rec.Addr, Pin: rs.rec.Pin, Key: rs.key,
		State: rs.state, Healthy: rs.state == netmap.RelayUp || rs.state == netmap.RelayStatic}
}

// tokenRegions returns the region codes admission tokens are scoped to:
// every region of the relay map, sorted. With more than admit.MaxRegions
// regions, tokens are valid in any region (nil), and a warning is logged
// once.
func (f *relayFleet) tokenRegions() []string {
	m := f.relayMap()
	if len(m.Regions) > admit.MaxRegions {
		if f.warnedRegions.CompareAndSwap(false, true) {
			f.srv.log.Warn("more regions than an admission token can list; tokens are valid in every region", "regions", len(m.Regions), "max", admit.MaxRegions)
		}
		return nil
	}
	out := make([]string, 0, len(m.Regions))
	for _, r := range m.Regions {
		out = append(out, r.Code)
	}
	return out // relayMap sorts regions by code
}

// changedLocked drops the cached map; the caller broadcasts after unlocking.
func (f *relayFleet) changedLocked() { f.cached.Store(nil) }

// broadcast tells every streaming node that the relay map changed.
func (srv *Server) broadcastRelayMap() {
	now := srv.now()
	st := srv.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	for _, n := range st.nodes {
		if n.sess != nil {
			n.sess.mark(func(p *pending) { p.relayMap = true }, now)
		}
	}
}

// CreateJoinKey makes a relay join key for region, valid for
// DefaultJoinKeyExpiry, creating the region (with a fresh mesh secret) if
// it is new.
func (srv *Server) CreateJoinKey(ctx context.Context, region, name string) (string, error) {
	resp, err := srv.CreateRelayKey(ctx, RelayKeyRequest{Region: region, RegionName: name})
	return resp.Key, err
}

// CreateRelayKey makes a relay join key as req says.
func (srv *Server) CreateRelayKey(ctx context.Context, req RelayKeyRequest) (KeyResponse, error) {
	region, name := req.Region, req.RegionName
	if !validLabel(region) || len(region) > maxRegionLen {
		return KeyResponse{}, fmt.Errorf("--region %q: want a short DNS label such as nyc or eu-west", region)
	}
	expiry := DefaultJoinKeyExpiry
	if req.Expiry != "" {
		d, err := time.ParseDuration(req.Expiry)
		if err != nil || d < 0 {
			return KeyResponse{}, fmt.Errorf("--expiry %q: want a Go duration such as 720h (0: never)", req.Expiry)
		}
		expiry = d
	}
	f := srv.relays
	f.mu.Lock()
	r, ok := f.regions[region]
	if !ok {
		var s [32]byte
		rand.Read(s[:])
		r = store.Region{Code: region, MeshSecret: hex.EncodeToString(s[:])}
	}
	if name != "" {
		r.Name = name
	}
	sec := netmap.NewSecret()
	now := srv.now()
	jk := &store.JoinKey{Hash: sec.Hash(), Region: region, Created: now}
	if expiry > 0 {
		jk.Expires = now.Add(expiry)
	}
	if err := srv.store.CreateJoinKey(ctx, jk, r); err != nil {
		f.mu.Unlock()
		return KeyResponse{}, err
	}
	f.regions[region] = r
	f.changedLocked()
	f.mu.Unlock()
	if !ok {
		// A new region is in every node's relay map, and in the region
		// list of its next admission token.
		srv.broadcastRelayMap()
	}
	srv.audit(ctx, "relaykey create", "region "+region)
	return KeyResponse{Key: netmap.FormatJoinKey(sec, srv.pin), Expires: jk.Expires}, nil
}

// JoinKeys lists every relay join key (never their secrets).
func (srv *Server) JoinKeys(ctx context.Context) ([]JoinKeyInfo, error) {
	keys, err := srv.store.JoinKeys(ctx)
	if err != nil {
		return nil, err
	}
	now := srv.now()
	out := make([]JoinKeyInfo, 0, len(keys))
	for _, k := range keys {
		out = append(out, JoinKeyInfo{ID: k.ID, Region: k.Region, Created: k.Created, Expires: k.Expires,
			Expired: !k.Expires.IsZero() && !now.Before(k.Expires), Revoked: k.Revoked})
	}
	return out, nil
}

// RevokeJoinKey revokes join key id: relays can no longer join with it.
// Relays that joined with it stay (they authenticate with their relay
// keys).
func (srv *Server) RevokeJoinKey(ctx context.Context, id int64) error {
	if err := srv.store.RevokeJoinKey(ctx, id); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("join key %d: %w", id, err)
		}
		return err
	}
	srv.log.Info("join key revoked", "id", id)
	srv.audit(ctx, "relaykey revoke", fmt.Sprintf("key %d", id))
	return nil
}

func (srv *Server) handleRelayJoin(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r, MaxRequestBody)
	if err != nil {
		srv.fail(w, r, err)
		return
	}
	resp, err := srv.relayJoin(r, body)
	if err != nil {
		srv.m.relayEvents.WithLabelValues("join_refused").Inc()
		srv.fail(w, r, err)
		return
	}
	srv.m.relayEvents.WithLabelValues("join").Inc()
	writeJSON(w, http.StatusOK, resp)
}

func (srv *Server) relayJoin(r *http.Request, body []byte) (*netmap.RelayJoinResponse, error) {
	var req netmap.RelayJoinRequest
	if err := decodeJSON(body, &req); err != nil {
		return nil, err
	}
	auth := r.Header.Get("Authorization")
	jkText, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok {
		return nil, errorf(http.StatusUnauthorized, "missing join key (Authorization: Bearer <join key>)")
	}
	var sec netmap.Secret
	var err error
	if strings.HasPrefix(jkText, netmap.JoinKeyPrefix) {
		sec, _, err = netmap.ParseJoinKey(jkText)
	} else {
		sec, err = netmap.ParseSecret(jkText)
	}
	if err != nil {
		return nil, errorf(http.StatusUnauthorized, "join key: %v", err)
	}
	if req.Key.IsZero() {
		return nil, errorf(http.StatusBadRequest, "key (the relay's relaykey:) is missing")
	}
	if err := validAddr(req.PublicAddr); err != nil {
		return nil, errorf(http.StatusBadRequest, "public_addr: %v", err)
	}
	if !tlspin.ValidPin(req.Pin) {
		return nil, errorf(http.StatusBadRequest, "pin %q is not a sha256/ certificate pin", req.Pin)
	}
	if req.Name != "" && !validLabel(req.Name) {
		return nil, errorf(http.StatusBadRequest, "name %q: want a DNS label", req.Name)
	}
	pubText, sealed, err := netmap.ParseProof(r.Header.Get(netmap.ProofHeader))
	if err != nil {
		return nil, errorf(http.StatusUnauthorized, "%v", err)
	}
	if pubText != req.Key.String() {
		return nil, errorf(http.StatusUnauthorized, "proof of possession made with another key than the relay key")
	}
	// The join key is checked (a lookup) before the proof is opened and
	// its nonce recorded: a bogus join key costs no X25519 and takes no
	// replay slot (replay.go).
	now := srv.now()
	jk, err := srv.store.JoinKeyByHash(r.Context(), sec.Hash())
	if errors.Is(err, store.ErrNotFound) {
		return nil, errorf(http.StatusUnauthorized, "join key not recognised")
	}
	if err != nil {
		return nil, err
	}
	if jk.Revoked {
		return nil, errorf(http.StatusUnauthorized, "join key revoked")
	}
	if !jk.Expires.IsZero() && !now.Before(jk.Expires) {
		return nil, errorf(http.StatusUnauthorized, "join key expired")
	}
	if req.Region != jk.Region {
		return nil, errorf(http.StatusForbidden, "join key is for region %q, relay asked for %q", jk.Region, req.Region)
	}
	shared := key.Precompute(srv.coordPriv, req.Key)
	if err := srv.checkProof(&shared, sealed, r, body, now); err != nil {
		return nil, err
	}
	name := req.Name
	if name == "" {
		name = jk.Region + "-" + req.Key.UAPI()[:8]
	}
	f := srv.relays
	f.mu.Lock()
	rec := store.Relay{Name: name, Region: jk.Region, Addr: req.PublicAddr, Pin: req.Pin, Key: req.Key.String(), Joined: now, LastHeartbeat: now, State: netmap.RelayUp}
	if old, ok := f.relays[req.Key]; ok {
		rec.Joined = old.rec.Joined
	}
	for k, other := range f.relays {
		if other.rec.Name == name && k != req.Key {
			f.mu.Unlock()
			return nil, errorf(http.StatusConflict, "relay name %q is taken by another relay key", name)
		}
	}
	if err := srv.store.PutRelay(r.Context(), rec); err != nil {
		f.mu.Unlock()
		if errors.Is(err, store.ErrConflict) {
			return nil, errorf(http.StatusConflict, "relay name %q is taken", name)
		}
		return nil, err
	}
	f.relays[req.Key] = &relayState{rec: rec, key: req.Key, shared: shared, state: netmap.RelayUp}
	f.changedLocked()
	resp := f.responseLocked(f.relays[req.Key])
	f.mu.Unlock()
	srv.broadcastRelayMap()
	srv.log.Info("relay joined", "relay", name, "region", jk.Region, "addr", req.PublicAddr)
	return resp, nil
}

func (f *relayFleet) responseLocked(rs *relayState) *netmap.RelayJoinResponse {
	m := f.buildLocked()
	resp := &netmap.RelayJoinResponse{
		Name:              rs.rec.Name,
		AdmitKeys:         []key.SigningPublic{f.srv.signPub},
		MeshSecret:        f.regions[rs.rec.Region].MeshSecret,
		HeartbeatInterval: netmap.Duration(f.srv.cfg.HeartbeatInterval),
	}
	for _, r := range m.Regions {
		if r.Code == rs.rec.Region {
			resp.Region = r
		}
	}
	return resp
}

func (srv *Server) handleRelayHeartbeat(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r, MaxRequestBody)
	if err != nil {
		srv.fail(w, r, err)
		return
	}
	resp, err := srv.relayHeartbeat(r, body)
	if err != nil {
		srv.fail(w, r, err)
		return
	}
	srv.m.relayEvents.WithLabelValues("heartbeat").Inc()
	writeJSON(w, http.StatusOK, resp)
}

func (srv *Server) relayHeartbeat(r *http.Request, body []byte) (*netmap.RelayJoinResponse, error) {
	rs, err := srv.authRelay(r, body)
	if err != nil {
		return nil, err
	}
	now := srv.now()
	var hb netmap.RelayHeartbeat
	if err := decodeJSON(body, &hb); err != nil {
		return nil, err
	}
	state := netmap.RelayUp
	switch {
	case hb.Draining:
		state = netmap.RelayDraining
	case hb.Overloaded:
		state = netmap.RelayOverloaded
	}
	f := srv.relays
	f.mu.Lock()
	if err != nil {
		return nil, errorf(http.StatusUnauthorized, "%v", err)
	}
	rs.rec.LastHeartbeat = now
	rs.rec.State = state
	rs.clients = hb.Clients
	changed := rs.state != state
	if changed {
		srv.log.Info("relay state", "relay", rs.rec.Name, "from", rs.state, "to", state)
		rs.state = state
		f.changedLocked()
	}
	rec := rs.rec
	resp := f.responseLocked(rs)
	f.mu.Unlock()
	if err := srv.store.PutRelay(r.Context(), rec); err != nil {
		return nil, err
	}
	if changed {
		srv.m.relayEvents.WithLabelValues("state_change").Inc()
		srv.broadcastRelayMap()
	}
	return resp, nil
}

// authRelay checks a request's proof against a joined relay and returns
// it. The body must already be read.
func (srv *Server) authRelay(r *http.Request, body []byte) (*relayState, error) {
	pubText, sealed, err := netmap.ParseProof(r.Header.Get(netmap.ProofHeader))
	if err != nil {
		return nil, errorf(http.StatusUnauthorized, "%v", err)
	}
	rk, err := key.ParseRelayPublic(pubText)
	if err != nil {
		return nil, errorf(http.StatusUnauthorized, "proof of possession: %v", err)
	}
	f := srv.relays
	f.mu.Lock()
	rs, ok := f.relays[rk]
	var shared key.SharedKey
	if ok {
		shared = rs.shared
	}
	f.mu.Unlock()
	if !ok {
		return nil, errorf(http.StatusUnauthorized, "relay key %s has not joined; join with a join key first", rk.ShortString())
	}
	if err := srv.checkProof(&shared, sealed, r, body, srv.now()); err != nil {
		return nil, err
	}
	return rs, nil
}

// sweep marks silent relays down and stores that, so other replicas
// follow. Only the jobs leader runs it.
func (f *relayFleet) sweep(ctx context.Context, now time.Time) {
	f.mu.Lock()
	var down []store.Relay
	for _, rs := range f.relays {
		if rs.state != netmap.RelayDown && now.Sub(rs.rec.LastHeartbeat) > f.deadline() {
			f.srv.log.Warn("relay silent; marking down", "relay", rs.rec.Name, "last_heartbeat", rs.rec.LastHeartbeat)
			rs.state = netmap.RelayDown
			rs.rec.State = netmap.RelayDown
			down = append(down, rs.rec)
		}
	}
	changed := len(down) > 0
	if changed {
		f.changedLocked()
	}
	f.mu.Unlock()
	for _, r := range down {
		if err := f.srv.store.PutRelay(ctx, r); err != nil {
			f.srv.log.Warn("store relay state", "relay", r.Name, "err", err)
		}
	}
	if changed {
		f.srv.m.relayEvents.WithLabelValues("state_change").Inc()
		f.srv.broadcastRelayMap()
	}
}

// RelayInfo is one row of `relays list`.
type RelayInfo struct {
	Name          string    `json:"name"`
	Region        string    `json:"region"`
	Addr          string    `json:"addr"`
	Pin           string    `json:"pin"`
	Key           string    `json:"key"`
	State         string    `json:"state"`
	Clients       int       `json:"clients"`
	LastHeartbeat time.Time `json:"last_heartbeat,omitzero"`
}

// Relays lists every relay, static ones included.
func (srv *Server) Relays() []RelayInfo {
	f := srv.relays
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []RelayInfo
	for _, r := range f.static.Regions {
		for _, rl := range r.Relays {
			out = append(out, RelayInfo{Name: rl.Name, Region: r.Code, Addr: rl.Addr, Pin: rl.Pin, Key: rl.Key.String(), State: rl.State})
		}
	}
	for _, rs := range f.relays {
		out = append(out, RelayInfo{Name: rs.rec.Name, Region: rs.rec.Region, Addr: rs.rec.Addr, Pin: rs.rec.Pin, Key: rs.rec.Key,
			State: rs.state, Clients: rs.clients, LastHeartbeat: rs.rec.LastHeartbeat})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Region+out[i].Name < out[j].Region+out[j].Name })
	return out
}
