//go:build lab

package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/coordinator/store/pgtest"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// seedSigningKey stores the world's signing key in the database before any
// replica starts, so the relays, which trust it by flag, admit the nodes.
func seedSigningKey(t testing.TB, db string, k key.SigningPrivate) {
	t.Helper()
	ctx := context.Background()
	s, err := store.OpenPostgres(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	text, _ := k.MarshalText()
	if _, err := s.Secret(ctx, coordinator.SecretSigningKey, func() ([]byte, error) { return text, nil }); err != nil {
		t.Fatal(err)
	}
}

// streams returns, for each node, the replica holding its stream as
// replica r sees it.
func (w *world) streams(r *replica) map[string]string {
	w.t.Helper()
	out, err := w.run("coordinator", "nodes", "list", "--json", "--state-dir", r.dir)
	if err != nil {
		return nil
	}
	var nodes []coordinator.NodeInfo
	json.Unmarshal([]byte(out), &nodes)
	m := map[string]string{}
	for _, n := range nodes {
		m[n.Name] = n.Replica
	}
	return m
}

func (w *world) waitStreams(r *replica, what string, cond func(map[string]string) bool) map[string]string {
	w.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m := w.streams(r)
		if cond(m) {
			return m
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%s never happened: %v", what, m)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func peers(n int) func(localapi.Status) bool {
	return func(st localapi.Status) bool { return st.Coordinator.Connected && len(st.Peers) == n }
}

// TestLabReplicas: two coordinator replicas on one PostgreSQL, nodes given
// both URLs. One replica is killed with SIGKILL: its nodes move to the
// other within 5 s, changes made there reach everyone, and new nodes
// register through it. The dead one restarts and takes streams again. Then
// the database goes away for 10 s: the streams stay up and the mesh keeps
// working, writes fail with a clear error, and everything recovers.
func TestLabReplicas(t *testing.T) {
	pg := pgtest.Start(t)
	w := newWorldWith(t, worldOpts{db: pg.NewDatabase(t), replicas: 2}, "nyc")
	r0, r1 := w.coords[0], w.coords[1]
	if w.coords[0].url == w.coords[1].url {
		t.Fatal("one URL for two replicas")
	}
	a := w.startNodeVia("a", hardNATHost(t, w, "a"), r0.url+","+r1.url)
	b := w.startNodeVia("b", hardNATHost(t, w, "b"), r1.url+","+r0.url)
	a.waitStatus("b as a peer", peers(1))
	b.waitStatus("a as a peer", peers(1))
	if err := a.ping(b.ip(), 3); err != nil {
		t.Fatal(err)
	}
	// a streams from r0 and b from r1, as their lists say.
	m := w.waitStreams(r1, "a and b on different replicas", func(m map[string]string) bool {
		return m["a"] != "" && m["b"] != "" && m["a"] != m["b"]
	})
	r1ID := m["b"]

	// kill -9 r0: a moves to r1 within 5 s.
	killed := time.Now()
	r0.cmd.Process.Kill()
	r0.cmd.Wait()
	w.waitStreams(r1, "a streaming from r1", func(m map[string]string) bool { return m["a"] == r1ID })
	moved := time.Since(killed)
	t.Logf("a moved to the surviving replica %v after kill -9", moved.Round(time.Millisecond))
	if moved > 5*time.Second {
		t.Errorf("a took %v to move, want at most 5 s", moved)
	}
	// A new node registers through the survivor (its list starts with the
	// dead one), and a change made there reaches the others.
	c := w.startNodeVia("c", hardNATHost(t, w, "c"), r0.url+","+r1.url)
	c.waitStatus("two peers", peers(2))
	a.waitStatus("c as a peer", peers(2))
	b.waitStatus("c as a peer", peers(2))
	if _, err := w.run("coordinator", "nodes", "delete", "c", "--state-dir", r1.dir); err != nil {
		t.Fatal(err)
	}
	a.waitStatus("c deleted through r1", peers(1))
	if err := a.ping(b.ip(), 2); err != nil {
		t.Fatal(err)
	}

	// r0 restarts and takes streams again: a node listing it first streams
	// from it, and the others (on r1) see that node.
	w.startReplica(r0)
	d := w.startNodeVia("d", hardNATHost(t, w, "d"), r0.url+","+r1.url)
	d.waitStatus("two peers", peers(2))
	w.waitStreams(r1, "d streaming from the restarted r0", func(m map[string]string) bool { return m["d"] != "" && m["d"] != r1ID })
	a.waitStatus("d as a peer", peers(2))
	if err := a.ping(d.ip(), 2); err != nil {
		t.Fatal(err)
	}

	// The database goes away for 10 s.
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	out, err := w.run("coordinator", "authkey", "create", "--state-dir", r1.dir)
	if err == nil || !strings.Contains(err.Error(), "database unavailable") {
		t.Errorf("authkey create with the database down: %v %q", err, out)
	}
	for time.Since(down) < 10*time.Second {
		for _, n := range []*node{a, b, d} {
			if st, err := n.status(); err != nil || !st.Coordinator.Connected || len(st.Peers) != 2 {
				t.Fatalf("%s during the outage: connected %v, %d peers, %v", n.name, st.Coordinator.Connected, len(st.Peers), err)
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := a.ping(b.ip(), 2); err != nil {
		t.Fatalf("mesh during the outage: %v", err)
	}
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	// Writes work again, on both replicas, and reach every stream.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err = w.run("coordinator", "authkey", "create", "--state-dir", r0.dir); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("authkey create after the database came back: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	e := w.startNodeVia("e", hardNATHost(t, w, "e"), r1.url+","+r0.url)
	e.waitStatus("three peers", peers(3))
	for _, n := range []*node{a, b, d} {
		n.waitStatus("e as a peer", peers(3))
	}
}

// TestLabUserPolicy: nodes owned by users, and a policy written in users:
// alice's node reaches the server, bob's does not, and deleting alice with
// --force takes her node off the mesh.
func TestLabUserPolicy(t *testing.T) {
	w := newWorld(t, "nyc")
	sd := []string{"--state-dir", w.coordDir}
	for _, u := range []string{"alice@example.com", "bob@example.com"} {
		if _, err := w.run("coordinator", append([]string{"users", "create", u}, sd...)...); err != nil {
			t.Fatal(err)
		}
	}
	keyFor := func(args ...string) string {
		out, err := w.run("coordinator", append(append([]string{"authkey", "create"}, args...), sd...)...)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		return lines[len(lines)-1]
	}
	policy := `{
		"tagOwners": {"tag:srv": []},
		"acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:srv:7000"]}],
		"tests": [{"src": "alice@example.com", "accept": ["tag:srv:7000"]}, {"src": "bob@example.com", "deny": ["tag:srv:7000"]}],
	}`
	pf := filepath.Join(t.TempDir(), "policy.hujson")
	os.WriteFile(pf, []byte(policy), 0o600)
	if _, err := w.run("coordinator", append([]string{"policy", "set", pf}, sd...)...); err != nil {
		t.Fatal(err)
	}
	start := func(name, key string) *node {
		h, err := w.l.AddHost(name, nil)
		if err != nil {
			t.Fatal(err)
		}
		n := &node{w: w, name: name, host: h, dir: t.TempDir()}
		n.args = []string{"run", "--coordinator", w.coordURL, "--authkey", key, "--hostname", name,
			"--state-dir", n.dir, "--log-level", "debug"}
		n.start()
		return n
	}
	srv := start("srv", keyFor("--tags", "tag:srv"))
	alice := start("alice", keyFor("--user", "alice@example.com"))
	bob := start("bob", keyFor("--user", "bob@example.com"))
	srv.waitStatus("alice as its only peer", func(st localapi.Status) bool {
		_, ok := peerOf(st, "alice")
		return ok && len(st.Peers) == 1
	})
	bob.waitStatus("no peers", func(st localapi.Status) bool { return st.Coordinator.Connected && len(st.Peers) == 0 })
	srvIP := srv.ip()
	ln, err := srv.host.Listen(netip.AddrPortFrom(srvIP, 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go greet(ln, "")
	deadline := time.Now().Add(20 * time.Second)
	for !canConnect(alice, netip.AddrPortFrom(srvIP, 7000), 2*time.Second) {
		if time.Now().After(deadline) {
			t.Fatal("alice cannot reach srv although the policy allows her")
		}
	}
	if canConnect(bob, netip.AddrPortFrom(srvIP, 7000), 3*time.Second) {
		t.Fatal("bob reached srv although the policy names only alice")
	}
	out, _ := w.run("coordinator", append([]string{"nodes", "list"}, sd...)...)
	if !strings.Contains(out, "alice@example.com") || !strings.Contains(out, "bob@example.com") {
		t.Errorf("nodes list does not show the users:\n%s", out)
	}
	if _, err := w.run("coordinator", append([]string{"users", "delete", "alice@example.com"}, sd...)...); err == nil {
		t.Fatal("deleted a user who owns a node without --force")
	}
	if _, err := w.run("coordinator", append([]string{"users", "delete", "alice@example.com", "--force"}, sd...)...); err != nil {
		t.Fatal(err)
	}
	srv.waitStatus("alice gone", func(st localapi.Status) bool { return len(st.Peers) == 0 })
}
