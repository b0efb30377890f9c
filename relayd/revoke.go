package relayd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/relayproto"
)

// Revocation: the coordinator tells relays which node keys it deleted or
// expired (netmap.RelayRevocations, a long poll), and a relay
//
//  1. closes every session of a revoked key at once: its QUIC or TCP
//     connection, its fast path with it, and, through the MeshGone its
//     departure sends, its entry at every regional mesh peer (which also
//     ignore MeshPresent for keys they have revoked);
//  2. refuses that key's hellos (relayproto.ReasonRevoked) until the
//     entry's Until, after which every token the coordinator may have
//     issued it has expired anyway;
//  3. keeps the set in --state-dir/revoked.json, so a relay restarted
//     while the coordinator is down still refuses them.
//
// Each answer is the full list in force and replaces the set. One goroutine
// (FollowRevocations, started by a joined relay) polls; an answer arrives
// as soon as the coordinator records a revocation, so a session closes
// within one round trip of it (BENCHMARKS.md).

// Revocation bounds and timing.
const (
	// maxRevoked bounds the set. A fleet deleting more than 65,536 nodes
	// within one token lifetime is beyond what this relay is sized for;
	// past it the entries expiring soonest are forgotten first (their
	// tokens are the closest to expiring on their own).
	maxRevoked = 1 << 16
	// revBackoffMin and revBackoffMax bound the jittered backoff after a
	// failed poll: quick enough to meet the 2 s goal after a blip, slow
	// enough not to hammer a coordinator that is down.
	revBackoffMin = 250 * time.Millisecond
	revBackoffMax = 30 * time.Second
	// revNotFoundWait is the pause after a 404: the coordinator predates
	// revocation polls, and will not grow them in less than minutes.
	revNotFoundWait = 5 * time.Minute
)

const revokedFile = "revoked.json"

// RevocationSource is where FollowRevocations polls from; a
// *coordclient.RelayClient is one.
type RevocationSource interface {
	Revocations(ctx context.Context, after uint64) (*netmap.RelayRevocations, error)
}

// revokedSet is the revoked keys with the time until which each is refused.
type revokedSet struct {
	mu sync.RWMutex
	m  map[key.NodePublic]time.Time
}

// revoked reports whether k is refused at now.
func (s *Server) revoked(k key.NodePublic, now time.Time) bool {
	s.revokedKeys.mu.RLock()
	until, ok := s.revokedKeys.m[k]
	s.revokedKeys.mu.RUnlock()
	return ok && now.Before(until)
}

// Revoked returns the revocations in force, soonest to expire first.
func (s *Server) Revoked() []netmap.RevokedNode {
	s.revokedKeys.mu.RLock()
	defer s.revokedKeys.mu.RUnlock()
	out := make([]netmap.RevokedNode, 0, len(s.revokedKeys.m))
	for k, u := range s.revokedKeys.m {
		out = append(out, netmap.RevokedNode{Key: k, Until: u})
	}
	slices.SortFunc(out, func(a, b netmap.RevokedNode) int { return a.Until.Compare(b.Until) })
	return out
}

// boundRevoked keeps the entries of list still in force at now, at most
// maxRevoked of them (the latest to expire), keyed by node key.
func boundRevoked(list []netmap.RevokedNode, now time.Time) map[key.NodePublic]time.Time {
	live := make([]netmap.RevokedNode, 0, min(len(list), maxRevoked))
	for _, r := range list {
		if r.Until.After(now) && !r.Key.IsZero() {
			live = append(live, r)
		}
	}
	if len(live) > maxRevoked {
		slices.SortFunc(live, func(a, b netmap.RevokedNode) int { return b.Until.Compare(a.Until) })
		live = live[:maxRevoked]
	}
	m := make(map[key.NodePublic]time.Time, len(live))
	for _, r := range live {
		if u, ok := m[r.Key]; !ok || r.Until.After(u) {
			m[r.Key] = r.Until
		}
	}
	return m
}

// SetRevoked replaces the revoked set with list (the coordinator's full
// list), closes every session of a key in it, forgets mesh rumours of those
// keys and saves the set in the state directory. Safe while serving.
func (s *Server) SetRevoked(list []netmap.RevokedNode) {
	m := boundRevoked(list, s.cfg.Now())
	s.revokedKeys.mu.Lock()
	changed := !mapsEqual(s.revokedKeys.m, m)
	s.revokedKeys.m = m
	s.revokedKeys.mu.Unlock()
	s.m.revoked.Set(float64(len(m)))
	var victims []*client
	s.mu.Lock()
	for k := range m {
		if c := s.mu.clients[k]; c != nil {
			victims = append(victims, c)
		}
		delete(s.mu.remote, k)
	}
	s.mu.Unlock()
	for _, c := range victims {
		s.log.Info("closing revoked node's session", "peer", c.key.ShortString())
		s.m.revokedClosed.Inc()
		c.close("node key revoked")
	}
	if changed {
		if err := s.saveRevoked(m); err != nil {
			s.log.Warn("saving revocations failed", "err", err)
		}
	}
}

func mapsEqual(a, b map[key.NodePublic]time.Time) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !w.Equal(v) {
			return false
		}
	}
	return true
}

// revokedState is revoked.json.
type revokedState struct {
	Revoked []netmap.RevokedNode `json:"revoked"`
}

func (s *Server) saveRevoked(m map[key.NodePublic]time.Time) error {
	st := revokedState{Revoked: make([]netmap.RevokedNode, 0, len(m))}
	for k, u := range m {
		st.Revoked = append(st.Revoked, netmap.RevokedNode{Key: k, Until: u})
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return key.WriteFileAtomic(filepath.Join(s.cfg.StateDir, revokedFile), b, 0o600)
}

// loadRevoked reads revoked.json, if any, into the set.
func (s *Server) loadRevoked() error {
	b, err := os.ReadFile(filepath.Join(s.cfg.StateDir, revokedFile))
	if errors.Is(err, os.ErrNotExist) {
		s.revokedKeys.m = map[key.NodePublic]time.Time{}
		return nil
	}
	if err != nil {
		return fmt.Errorf("relayd: %s: %w", revokedFile, err)
	}
	var st revokedState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("relayd: %s: %w", revokedFile, err)
	}
	s.revokedKeys.m = boundRevoked(st.Revoked, s.cfg.Now())
	s.m.revoked.Set(float64(len(s.revokedKeys.m)))
	return nil
}

// FollowRevocations long-polls src until ctx ends, applying every answer
// with SetRevoked. Failed polls back off with jitter (250 ms doubling to
// 30 s); a 404 (a coordinator without revocation polls) waits 5 minutes.
func (s *Server) FollowRevocations(ctx context.Context, src RevocationSource) {
	var after uint64
	backoff := revBackoffMin
	for ctx.Err() == nil {
		resp, err := src.Revocations(ctx, after)
		if err == nil {
			s.m.revocationPolls.WithLabelValues("ok").Inc()
			s.SetRevoked(resp.Revoked)
			after, backoff = resp.Seq, revBackoffMin
			continue
		}
		if ctx.Err() != nil {
			return
		}
		wait := backoff/2 + rand.N(backoff/2+1) // jitter: [b/2, b]
		var ae *coordclient.APIError
		if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
			s.m.revocationPolls.WithLabelValues("not_supported").Inc()
			s.log.Debug("coordinator has no revocation poll; retrying later", "err", err)
			wait = revNotFoundWait
		} else {
			s.m.revocationPolls.WithLabelValues("error").Inc()
			s.log.Debug("revocation poll failed", "err", err, "retry_in", wait)
			backoff = min(2*backoff, revBackoffMax)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// revokedRejection is the refusal of a revoked key's hello.
func revokedRejection() *rejection {
	return &rejection{relayproto.ReasonRevoked, "node key revoked by the coordinator"}
}
