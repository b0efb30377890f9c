package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// Revocation: how a deleted or expired node is shut out of the relays.
//
// Relays admit a node on an admission token they verify offline, so
// deleting the node at the coordinator does not, by itself, stop a relay
// from serving it. Each delete, expire (by command or because the key
// expiry passed) therefore records a revocation: the node key and Until,
// the latest expiry of any token the coordinator may have issued it (now +
// token lifetime + admit.ClockSkew; see revokeUntil for tokens of the
// binary before an upgrade). Relays long-poll POST
// /coord/v1/relay/revocations (netmap.RelayRevocationsRequest); a new
// revocation answers every waiting poll at once with the full list in
// force, and the relay closes the node's sessions and refuses its tokens
// until Until. After Until every such token has expired anyway, so the
// entry is dropped: the list holds only nodes revoked within the last
// token lifetime (one hour by default), and never more than
// maxRevocations. A node that registers again (an expired node
// re-authenticating, or the key registered anew) has its revocation lifted.
//
// The list is durable (store.SetRevocation), with its sequence number, so
// a restarted coordinator still answers relays with what is in force.

// maxRevocations bounds the list. Reaching it takes 65,536 deletions
// within one token lifetime (ephemeral CI nodes, say); then the entry
// closest to its Until is dropped first, since its tokens die soonest.
// The full list in a poll answer is then about 6 MB.
const maxRevocations = 1 << 16

type revocations struct {
	mu      sync.Mutex
	seq     uint64
	until   map[key.NodePublic]time.Time
	changed chan struct{} // closed and replaced on every change
}

func newRevocations(snap *store.Snapshot) (*revocations, error) {
	r := &revocations{seq: snap.RevocationSeq, until: map[key.NodePublic]time.Time{}, changed: make(chan struct{})}
	for _, rv := range snap.Revocations {
		k, err := key.ParseNodePublic(rv.NodeKey)
		if err != nil {
			return nil, fmt.Errorf("stored revocation %q: %w", rv.NodeKey, err)
		}
		r.until[k] = rv.Until
	}
	return r, nil
}

// list returns the sequence, the revocations in force at now (sorted by
// key text, for stable answers) and a channel closed at the next change.
func (r *revocations) list(now time.Time) (uint64, []netmap.RevokedNode, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]netmap.RevokedNode, 0, len(r.until))
	for k, u := range r.until {
		if now.After(u) {
			delete(r.until, k)
			continue
		}
		out = append(out, netmap.RevokedNode{Key: k, Until: u})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key.String() < out[j].Key.String() })
	return r.seq, out, r.changed
}

// set records (until non-zero) or lifts a revocation and returns the new
// sequence number, whether anything changed, and whether another entry was
// dropped to make room; the caller publishes and stores.
func (r *revocations) set(k key.NodePublic, until time.Time) (seq uint64, changed, evicted bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if until.IsZero() {
		if _, ok := r.until[k]; !ok {
			return r.seq, false, false
		}
		delete(r.until, k)
	} else {
		if old, ok := r.until[k]; ok && old.After(until) {
			until = old
		}
		if _, ok := r.until[k]; !ok && len(r.until) >= maxRevocations {
			var victim key.NodePublic
			var first time.Time
			for vk, u := range r.until {
				if first.IsZero() || u.Before(first) {
					victim, first = vk, u
				}
			}
			delete(r.until, victim)
			evicted = true
		}
		r.until[k] = until
	}
	r.seq++
	return r.seq, true, evicted
}

// publish wakes every waiting poll.
func (r *revocations) publish() {
	r.mu.Lock()
	defer r.mu.Unlock()
	close(r.changed)
	r.changed = make(chan struct{})
}

// legacyTokenLifetime is how long tokens lasted before version 2 (12 h):
// a coordinator upgraded from such a version may have issued them until it
// started, so for that long after start revocations cover them too.
const legacyTokenLifetime = 12 * time.Hour

// revokeUntil is the latest expiry of a token issued to a node up to now:
// now plus the token lifetime, or, in the first 12 hours after start, the
// expiry of a 12-hour token issued by the previous binary just before
// start, whichever is later; plus the clock skew relays allow.
func (srv *Server) revokeUntil(now time.Time) time.Time {
	until := now.Add(srv.cfg.TokenLifetime)
	if legacy := srv.started.Add(legacyTokenLifetime); legacy.After(until) {
		until = legacy
	}
	return until.Add(admit.ClockSkew)
}

// revoke records that relays must shut nk out, durably, and wakes the
// relays' polls. why is for the log.
func (srv *Server) revoke(ctx context.Context, nk key.NodePublic, why string) error {
	now := srv.now()
	until := srv.revokeUntil(now)
	seq, _, evicted := srv.revs.set(nk, until)
	if evicted {
		srv.m.revocationsEvicted.Inc()
		srv.log.Warn("revocation list full; dropped the entry closest to its expiry", "max", maxRevocations)
	}
	srv.revs.publish() // relays learn it even if the store write fails
	srv.log.Info("node revoked at relays", "key", nk.ShortString(), "why", why, "until", until, "seq", seq)
	if err := srv.store.SetRevocation(ctx, store.Revocation{NodeKey: nk.String(), Until: until}, seq, now); err != nil {
		return err
	}
	return nil
}

// unrevoke lifts nk's revocation (it registered again).
func (srv *Server) unrevoke(ctx context.Context, nk key.NodePublic) {
	seq, changed, _ := srv.revs.set(nk, time.Time{})
	if !changed {
		return
	}
	srv.revs.publish()
	if err := srv.store.SetRevocation(ctx, store.Revocation{NodeKey: nk.String()}, seq, srv.now()); err != nil {
		srv.log.Warn("store lifted revocation", "key", nk.ShortString(), "err", err)
	}
}

func (srv *Server) handleRelayRevocations(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r, MaxRequestBody)
	if err != nil {
		srv.fail(w, r, err)
		return
	}
	if _, err := srv.authRelay(r, body); err != nil {
		srv.fail(w, r, err)
		return
	}
	var req netmap.RelayRevocationsRequest
	if err := decodeJSON(body, &req); err != nil {
		srv.fail(w, r, err)
		return
	}
	timer := time.NewTimer(srv.cfg.RevocationPollTimeout)
	defer timer.Stop()
	for {
		seq, list, changed := srv.revs.list(srv.now())
		// A relay ahead of us (our database was reset) gets the list at
		// once too, so it resynchronises on our sequence.
		if seq != req.After {
			writeJSON(w, http.StatusOK, netmap.RelayRevocations{Seq: seq, Revoked: list})
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			writeJSON(w, http.StatusOK, netmap.RelayRevocations{Seq: seq, Revoked: list})
			return
		case <-r.Context().Done():
			return
		}
	}
}
