package coordinator_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// joinRelay joins a fresh relay to region and returns its client.
func joinRelay(t *testing.T, s *coordtest.Server, region string) (*coordclient.RelayClient, key.RelayPrivate) {
	t.Helper()
	jk, err := s.CreateJoinKey(t.Context(), region, "")
	if err != nil {
		t.Fatal(err)
	}
	priv := key.NewRelay()
	rc, _, err := coordclient.JoinRelay(t.Context(), s.URL(), jk, priv, netmap.RelayJoinRequest{Region: region, PublicAddr: "198.18.0.1:443", Pin: testPin(t)})
	if err != nil {
		t.Fatal(err)
	}
	return rc, priv
}

// poll starts a revocation poll and returns where its answer arrives.
func poll(rc *coordclient.RelayClient, after uint64) <-chan *netmap.RelayRevocations {
	ch := make(chan *netmap.RelayRevocations, 1)
	go func() {
		resp, err := rc.Revocations(context.Background(), after)
		if err != nil {
			resp = &netmap.RelayRevocations{Seq: ^uint64(0)}
		}
		ch <- resp
	}()
	return ch
}

func await(t *testing.T, ch <-chan *netmap.RelayRevocations, what string) *netmap.RelayRevocations {
	t.Helper()
	select {
	case r := <-ch:
		if r.Seq == ^uint64(0) {
			t.Fatalf("%s: poll failed", what)
		}
		return r
	case <-time.After(waitTimeout):
		t.Fatalf("%s: poll not answered", what)
	}
	return nil
}

func listed(r *netmap.RelayRevocations, k key.NodePublic) bool {
	for _, rv := range r.Revoked {
		if rv.Key.Equal(k) {
			return true
		}
	}
	return false
}

// TestRevocationsLongPoll: a relay's poll is answered as soon as a node is
// deleted or expired, with the full list in force; a node that registers
// again is lifted; peers drop the node as a delta; the node's own requests
// get node_unknown or node_expired.
func TestRevocationsLongPoll(t *testing.T) {
	s := coordtest.Start(t)
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	a, b, c := s.Register(t, ak, "a"), s.Register(t, ak, "b"), s.Register(t, ak, "c")
	rc, _ := joinRelay(t, s, "nyc")
	wa := watch(t, a, netmap.MapRequest{})
	wa.waitFor("b and c", func(nm *netmap.NetworkMap) bool { return len(nm.Peers) == 2 })
	wc := watch(t, c, netmap.MapRequest{})
	wc.waitFor("c's first map", func(nm *netmap.NetworkMap) bool { return true })

	waiting := poll(rc, 0)
	start := time.Now()
	if err := s.DeleteNode(t.Context(), "c"); err != nil {
		t.Fatal(err)
	}
	r1 := await(t, waiting, "poll during delete")
	relayLag := time.Since(start)
	wa.waitFor("c dropped by its peer", func(nm *netmap.NetworkMap) bool { _, ok := nm.PeerByName("c"); return !ok })
	peerLag := time.Since(start)
	t.Logf("delete -> relay poll answered %v, peer delta %v", relayLag, peerLag)
	if r1.Seq == 0 || len(r1.Revoked) != 1 || !listed(r1, c.Key.Public()) {
		t.Fatalf("after delete: %+v", r1)
	}
	// Just after start, a 12-hour token from before the upgrade to 1-hour
	// tokens may still be out there: the revocation covers it.
	if until := r1.Revoked[0].Until; until.Before(time.Now().Add(12 * time.Hour)) {
		t.Errorf("revoked until %v: before the latest token expiry", until)
	}
	wc.waitEnd()
	if err := c.Client.Update(t.Context(), netmap.UpdateRequest{}); !errors.Is(err, coordclient.ErrNodeUnknown) {
		t.Errorf("deleted node's update: %v, want ErrNodeUnknown", err)
	}
	if _, err := c.Client.OpenStream(t.Context(), netmap.MapRequest{Version: netmap.CurrentCapabilityVersion}); !errors.Is(err, coordclient.ErrNodeUnknown) {
		t.Errorf("deleted node's stream: %v, want ErrNodeUnknown", err)
	}

	// Expire b: the next poll has both.
	waiting = poll(rc, r1.Seq)
	if err := s.ExpireNode(t.Context(), "b"); err != nil {
		t.Fatal(err)
	}
	r2 := await(t, waiting, "poll during expire")
	if r2.Seq <= r1.Seq || len(r2.Revoked) != 2 || !listed(r2, b.Key.Public()) || !listed(r2, c.Key.Public()) {
		t.Fatalf("after expire: %+v", r2)
	}
	if err := b.Client.Update(t.Context(), netmap.UpdateRequest{}); !errors.Is(err, coordclient.ErrNodeExpired) {
		t.Errorf("expired node's update: %v, want ErrNodeExpired", err)
	}
	// A poll that is behind gets the list at once.
	if r := await(t, poll(rc, r1.Seq), "poll behind"); r.Seq != r2.Seq || len(r.Revoked) != 2 {
		t.Fatalf("poll behind: %+v", r)
	}

	// b registers again: its revocation is lifted.
	waiting = poll(rc, r2.Seq)
	if _, err := b.Client.Register(t.Context(), ak, b.Disco.Public(), "b", "linux"); err != nil {
		t.Fatal(err)
	}
	r3 := await(t, waiting, "poll during re-register")
	if len(r3.Revoked) != 1 || listed(r3, b.Key.Public()) {
		t.Fatalf("after b re-registered: %+v", r3)
	}

	// Only joined relays may poll: a node's proof is refused.
	body := []byte(`{"after":0}`)
	shared := key.Precompute(a.Key, s.Info.Key)
	if code := postProven(t, s.HTTP, s, coordinator.PathRelayRevs, body, &shared, a.Key.Public().String(), nil); code != http.StatusUnauthorized {
		t.Errorf("revocations polled with a node key: HTTP %d", code)
	}
	stranger := key.NewRelay()
	rshared := key.Precompute(stranger, s.Info.Key)
	if code := postProven(t, s.HTTP, s, coordinator.PathRelayRevs, body, &rshared, stranger.Public().String(), nil); code != http.StatusUnauthorized {
		t.Errorf("revocations polled by a relay that never joined: HTTP %d", code)
	}
}

// TestRevocationsIdleAndDurable: an idle poll is answered after the poll
// timeout with the list unchanged, and the list survives a restart with
// its sequence number.
func TestRevocationsIdleAndDurable(t *testing.T) {
	dir := t.TempDir()
	opts := func(c *coordinator.Config) { c.StateDir, c.RevocationPollTimeout = dir, 50*time.Millisecond }
	s := coordtest.Start(t, opts)
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	gone := s.Register(t, ak, "gone")
	rc, priv := joinRelay(t, s, "nyc")
	if r := await(t, poll(rc, 0), "idle poll"); r.Seq != 0 || len(r.Revoked) != 0 {
		t.Fatalf("idle poll: %+v", r)
	}
	if err := s.DeleteNode(t.Context(), "gone"); err != nil {
		t.Fatal(err)
	}
	r1 := await(t, poll(rc, 0), "after delete")
	if r := await(t, poll(rc, r1.Seq), "idle poll after delete"); r.Seq != r1.Seq || !listed(r, gone.Key.Public()) {
		t.Fatalf("idle poll after delete: %+v", r)
	}
	s.Stop()
	s2 := coordtest.Start(t, opts)
	rc2, err := coordclient.NewRelayClient(t.Context(), s2.URL(), s2.Pin(), priv)
	if err != nil {
		t.Fatal(err)
	}
	if r := await(t, poll(rc2, 0), "after restart"); r.Seq != r1.Seq || !listed(r, gone.Key.Public()) {
		t.Fatalf("after restart: %+v, want seq %d with the deleted node", r, r1.Seq)
	}
}

// TestRevocationOnKeyExpiry: when a node's key expiry passes (the clock is
// injected and moved on, by less than the proof window so that requests
// still verify), the sweep revokes it at the relays.
func TestRevocationOnKeyExpiry(t *testing.T) {
	var offset atomic.Int64
	s := coordtest.Start(t, func(c *coordinator.Config) {
		c.KeyExpiry = time.Minute
		c.SweepInterval = 10 * time.Millisecond
		c.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	})
	n := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "n")
	rc, _ := joinRelay(t, s, "nyc")
	if r := await(t, poll(rc, 1<<40), "before expiry"); r.Seq != 0 || len(r.Revoked) != 0 {
		t.Fatalf("before expiry: %+v", r)
	}
	waiting := poll(rc, 0)
	offset.Store(int64(90 * time.Second))
	r := await(t, waiting, "poll across the key expiry")
	if !listed(r, n.Key.Public()) {
		t.Fatalf("after key expiry: %+v", r)
	}
	if err := n.Client.Update(t.Context(), netmap.UpdateRequest{}); !errors.Is(err, coordclient.ErrNodeExpired) {
		t.Errorf("expired node's update: %v, want ErrNodeExpired", err)
	}
}

// TestTokenScopedToRegions: admission tokens list the relay map's regions
// and expire within the token lifetime; a new region reaches streaming
// nodes as a fresh token.
func TestTokenScopedToRegions(t *testing.T) {
	s := coordtest.Start(t)
	n := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "n")
	joinRelay(t, s, "nyc")
	w := watch(t, n, netmap.MapRequest{})
	verify := func(nm *netmap.NetworkMap, region string) error {
		tok, err := base64.RawURLEncoding.DecodeString(nm.Admission.Token)
		if err != nil {
			return err
		}
		_, err = admit.Verify(tok, s.Info.AdmitKeys, n.Key.Public(), region, time.Now())
		return err
	}
	nm := w.waitFor("a token", func(nm *netmap.NetworkMap) bool { return nm.Admission.Token != "" })
	if err := verify(&nm, "nyc"); err != nil {
		t.Fatalf("token at nyc: %v", err)
	}
	if err := verify(&nm, "sin"); !errors.Is(err, admit.ErrWrongRegion) {
		t.Fatalf("token at sin, a region the coordinator does not have: %v", err)
	}
	if d := time.Until(nm.Admission.Expires); d > admit.DefaultLifetime {
		t.Fatalf("token valid for %v, more than %v", d, admit.DefaultLifetime)
	}
	joinRelay(t, s, "sin")
	w.waitFor("a token valid at sin", func(nm *netmap.NetworkMap) bool { return verify(nm, "sin") == nil })
}

// TestJoinKeyLifecycle: join keys expire (30 days by default) and can be
// revoked; either way relays can no longer join with them, and listing
// them never shows a secret.
func TestJoinKeyLifecycle(t *testing.T) {
	var offset atomic.Int64
	s := coordtest.Start(t, func(c *coordinator.Config) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	})
	ctx := t.Context()
	mk := func(expiry string) coordinator.KeyResponse {
		t.Helper()
		k, err := s.CreateRelayKey(ctx, coordinator.RelayKeyRequest{Region: "nyc", Expiry: expiry})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	join := func(jk string) error {
		_, _, err := coordclient.JoinRelay(ctx, s.URL(), jk, key.NewRelay(), netmap.RelayJoinRequest{Region: "nyc", PublicAddr: "198.18.0.1:443", Pin: testPin(t)})
		return err
	}
	def, short, never := mk(""), mk("1m"), mk("0")
	if d := time.Until(def.Expires); d < 29*24*time.Hour || d > 31*24*time.Hour {
		t.Errorf("default join key expiry in %v, want 30 days", d)
	}
	if !never.Expires.IsZero() {
		t.Errorf("--expiry 0 expires at %v", never.Expires)
	}
	keys, err := s.JoinKeys(ctx)
	if err != nil || len(keys) != 3 {
		t.Fatalf("JoinKeys: %+v %v", keys, err)
	}
	if err := s.RevokeJoinKey(ctx, keys[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := join(def.Key); !coordclient.IsUnauthorized(err) || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("join with a revoked key: %v", err)
	}
	if err := join(short.Key); err != nil {
		t.Errorf("join with a fresh key: %v", err)
	}
	offset.Store(int64(90 * time.Second)) // within the proof window
	if err := join(short.Key); !coordclient.IsUnauthorized(err) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("join with an expired key: %v", err)
	}
	if err := join(never.Key); err != nil {
		t.Errorf("join with a key that never expires: %v", err)
	}
	keys, _ = s.JoinKeys(ctx)
	if !keys[0].Revoked || !keys[1].Expired || keys[2].Expired || keys[2].Revoked {
		t.Errorf("listed: %+v", keys)
	}
	if err := s.RevokeJoinKey(ctx, 999); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoke a missing key: %v", err)
	}
}
