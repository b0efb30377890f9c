package relayd_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayd"
	"github.com/wiremesh/wiremesh/relayd/relaytest"
	"github.com/wiremesh/wiremesh/relayproto"
)

// fakeRevocations is a coordinator that serves only the info and the
// revocation long poll, over unencrypted HTTP/2 on loopback.
type fakeRevocations struct {
	mu       sync.Mutex
	seq      uint64
	list     []netmap.RevokedNode
	changed  chan struct{} // closed and replaced on every change
	recorded time.Time     // when the last revocation was recorded
	status   int           // if set, every poll answers this status
	polls    int
}

func startFakeRevocations(t *testing.T) (*fakeRevocations, *coordclient.RelayClient) {
	t.Helper()
	f := &fakeRevocations{changed: make(chan struct{})}
	coordKey := key.NewCoord().Public()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /coord/v1/info", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(netmap.ServerInfo{Version: netmap.CurrentCapabilityVersion, Key: coordKey})
	})
	mux.HandleFunc("POST /coord/v1/relay/revocations", func(w http.ResponseWriter, r *http.Request) {
		var req netmap.RelayRevocationsRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.polls++
		if f.status != 0 {
			f.mu.Unlock()
			http.Error(w, "no such endpoint", f.status)
			return
		}
		ch := f.changed
		seq := f.seq
		f.mu.Unlock()
		if seq <= req.After {
			select {
			case <-ch:
			case <-r.Context().Done():
				return
			case <-time.After(netmap.RevocationPollTimeout):
			}
		}
		f.mu.Lock()
		resp := netmap.RelayRevocations{Seq: f.seq, Revoked: append([]netmap.RevokedNode(nil), f.list...)}
		f.mu.Unlock()
		json.NewEncoder(w).Encode(resp)
	})
	srv := httptest.NewUnstartedServer(mux)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p
	srv.Start()
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	rc, err := coordclient.NewRelayClient(ctx, srv.URL, "", key.NewRelay())
	if err != nil {
		t.Fatal(err)
	}
	return f, rc
}

func (f *fakeRevocations) revoke(k key.NodePublic, until time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	f.list = append(f.list, netmap.RevokedNode{Key: k, Until: until})
	f.recorded = time.Now()
	close(f.changed)
	f.changed = make(chan struct{})
}

// TestRevocationClosesSessionAndPersists: a revocation the coordinator
// records closes the node's session (QUIC with a fast path, and TCP), its
// hellos are refused until Until, other nodes are untouched, and a relay
// restarted with the coordinator gone still refuses it.
func TestRevocationClosesSessionAndPersists(t *testing.T) {
	fake, rc := startFakeRevocations(t)
	r := relaytest.Start(t, func(c *relayd.Config) { c.ListenFast = "127.0.0.1:0" })
	ctx, cancel := context.WithCancel(context.Background())
	followDone := make(chan struct{})
	go func() { defer close(followDone); r.Server.FollowRevocations(ctx, rc) }()
	defer func() { cancel(); <-followDone }()

	victimKey, victim, _ := dial(t, r, true, func(c *relayclient.Config) { c.DisableTCP = true })
	ectx, ecancel := context.WithTimeout(context.Background(), testWait)
	defer ecancel()
	if err := victim.EnableFastPath(ectx); err != nil {
		t.Fatal(err)
	}
	tcpVictimKey, tcpVictim, _ := dial(t, r, true, func(c *relayclient.Config) { c.DisableQUIC = true })
	_, bystander, _ := dial(t, r, true, func(c *relayclient.Config) { c.DisableQUIC = true })
	waitUntil(t, "first poll", func() bool { fake.mu.Lock(); defer fake.mu.Unlock(); return fake.polls > 0 })

	fake.revoke(victimKey.Public(), time.Now().Add(time.Hour))
	fake.revoke(tcpVictimKey.Public(), time.Now().Add(time.Hour))
	for _, c := range []*relayclient.Conn{victim, tcpVictim} {
		select {
		case <-c.Done():
		case <-time.After(testWait):
			t.Fatalf("revoked node's %s session still open", c.Transport())
		}
	}
	fake.mu.Lock()
	t.Logf("revocation recorded → session closed: %v", time.Since(fake.recorded))
	fake.mu.Unlock()
	select {
	case <-bystander.Done():
		t.Fatal("a bystander was closed")
	default:
	}
	refused := func(r *relaytest.Relay, tcp bool) {
		t.Helper()
		cfg := r.ClientConfig(victimKey, true)
		cfg.DisableQUIC, cfg.DisableTCP = tcp, !tcp
		dctx, dcancel := context.WithTimeout(context.Background(), testWait)
		defer dcancel()
		c, err := relayclient.Dial(dctx, cfg)
		var rj relayproto.Reject
		if err == nil {
			c.Close()
			t.Fatalf("revoked node admitted (tcp=%v)", tcp)
		}
		if !errors.As(err, &rj) || rj.Reason != relayproto.ReasonRevoked {
			t.Fatalf("revoked node: %v, want a revoked rejection", err)
		}
	}
	refused(r, false)
	refused(r, true)
	if n := counter(t, r.Registry, "relayd_rejects_total", "reason", "revoked"); n < 2 {
		t.Fatalf("revoked rejects = %v", n)
	}

	// Restart with no coordinator: the saved set still refuses it.
	cancel()
	<-followDone
	r.Stop()
	r2 := relaytest.StartWith(t, r.Config, r.Signer)
	refused(r2, false)
	_, _, _ = dial(t, r2, true, nil) // others still get in
}

// TestRevocationExpires: an entry past its Until is not enforced (every
// token of the node has expired by then), and an empty list clears the set.
func TestRevocationExpires(t *testing.T) {
	r := relaytest.Start(t, nil)
	nk := key.NewNode()
	r.Server.SetRevoked([]netmap.RevokedNode{{Key: nk.Public(), Until: time.Now().Add(-time.Second)}})
	if len(r.Server.Revoked()) != 0 {
		t.Fatal("expired revocation kept")
	}
	r.Server.SetRevoked([]netmap.RevokedNode{{Key: nk.Public(), Until: time.Now().Add(time.Hour)}})
	r.Server.SetRevoked(nil)
	cfg := r.ClientConfig(nk, true)
	dctx, dcancel := context.WithTimeout(context.Background(), testWait)
	defer dcancel()
	c, err := relayclient.Dial(dctx, cfg)
	if err != nil {
		t.Fatalf("node refused after its revocation was lifted: %v", err)
	}
	c.Close()
}

// TestRevocationPollTolerates404: against a coordinator without the
// endpoint the poller keeps the relay serving and does not spin.
func TestRevocationPollTolerates404(t *testing.T) {
	fake, rc := startFakeRevocations(t)
	fake.status = http.StatusNotFound
	r := relaytest.Start(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Server.FollowRevocations(ctx, rc) }()
	waitUntil(t, "404 counted", func() bool {
		return counter(t, r.Registry, "relayd_revocation_polls_total", "result", "not_supported") == 1
	})
	kb, _, sb := dial(t, r, true, nil)
	_, a, _ := dial(t, r, true, nil)
	sendUntil(t, sb, func() { a.Send(kb.Public(), []byte("still serving")) }, func() bool { return len(sb.pkts) > 0 })
	cancel()
	<-done
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if fake.polls != 1 {
		t.Fatalf("%d polls after a 404; the next belongs minutes later", fake.polls)
	}
}

// TestRevocationAcrossMesh: a relay that learns a revocation forgets that
// its mesh peer has the node, ignores the peer's further announcements of
// it, and the relay holding the session tells the mesh when it closes it.
func TestRevocationAcrossMesh(t *testing.T) {
	secret := []byte("region secret")
	r1 := relaytest.Start(t, func(c *relayd.Config) { c.MeshSecret = secret })
	r2 := relaytest.StartWith(t, relayd.Config{
		Region: relaytest.Region, Listen: "127.0.0.1:0", StateDir: t.TempDir(),
		Trusted: []key.SigningPublic{r1.Signer.Public()}, MeshSecret: secret,
		MeshWith: []string{r1.Server.Addr().String()},
	}, r1.Signer)
	r1.Server.SetMesh([]string{r2.Server.Addr().String()}, secret)
	waitUntil(t, "mesh links up", func() bool {
		return len(r1.Server.MeshPeers()) == 1 && len(r2.Server.MeshPeers()) == 1
	})
	ka, a, _ := dial(t, r1, true, nil)
	kb, b, sb := dial(t, r2, true, nil)
	sendUntil(t, sb, func() { a.Send(kb.Public(), []byte("a→b")) }, func() bool { return len(sb.pkts) > 0 })

	// Only r2 hears of it first: it must stop routing to a at r1.
	r2.Server.SetRevoked([]netmap.RevokedNode{{Key: ka.Public(), Until: time.Now().Add(time.Hour)}})
	before := counter(t, r2.Registry, "relayd_dropped_packets_total", "reason", "no_such_peer")
	b.Send(ka.Public(), []byte("to a revoked node"))
	waitUntil(t, "r2 refuses to route to the revoked node", func() bool {
		return counter(t, r2.Registry, "relayd_dropped_packets_total", "reason", "no_such_peer") > before
	})
	// r1 hears of it too: the session closes.
	r1.Server.SetRevoked([]netmap.RevokedNode{{Key: ka.Public(), Until: time.Now().Add(time.Hour)}})
	select {
	case <-a.Done():
	case <-time.After(testWait):
		t.Fatal("session of the revoked node still open at its relay")
	}
}
