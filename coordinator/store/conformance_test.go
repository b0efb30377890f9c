package store

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/store/pgtest"
)

// The conformance suite: every engine must pass every case the same way.

// engine makes fresh stores of one kind.
type engine struct {
	name string
	// fresh returns the location of a new, empty database.
	fresh func(t *testing.T) string
	open  func(ctx context.Context, loc string) (Store, error)
}

func engines(t *testing.T) []engine {
	pg := pgtest.Start(t)
	return []engine{
		{
			name:  "sqlite",
			fresh: func(t *testing.T) string { return filepath.Join(t.TempDir(), "c.db") },
			open: func(ctx context.Context, loc string) (Store, error) {
				s, err := OpenSQLite(ctx, loc)
				if err != nil {
					return nil, err
				}
				return s, nil
			},
		},
		{
			name:  "postgres",
			fresh: func(t *testing.T) string { return pg.NewDatabase(t) },
			open: func(ctx context.Context, loc string) (Store, error) {
				s, err := OpenPostgres(ctx, loc, nil)
				if err != nil {
					return nil, err
				}
				return s, nil
			},
		},
	}
}

func TestConformance(t *testing.T) {
	cases := []struct {
		name string
		fn   func(t *testing.T, e engine)
	}{
		{"RegisterAndReopen", testRegisterAndReopen},
		{"GroupCommit", testGroupCommit},
		{"Users", testUsers},
		{"AuthKeyLifecycle", testAuthKeyLifecycle},
		{"Readers", testReaders},
		{"Secret", testSecret},
		{"DNS", testDNS},
		{"Web", testWeb},
		{"Rename", testRename},
		{"Routes", testRoutes},
		{"RevocationsAndJoinKeys", testRevocationsAndJoinKeys},
		{"KillDuringRegistrations", testKillDuringRegistrations},
	}
	for _, e := range engines(t) {
		t.Run(e.name, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) { c.fn(t, e) })
			}
		})
	}
}

func mustOpen(t *testing.T, e engine, loc string) Store {
	t.Helper()
	s, err := e.open(context.Background(), loc)
	if err != nil {
		t.Fatalf("open %s: %v", e.name, err)
	}
	return s
}

func testNode(name, ip string, now time.Time) *Node {
	return &Node{Name: name, NodeKey: "nodekey:" + name, DiscoKey: "d", IP: netip.MustParseAddr(ip), Created: now, KeyExpiry: now.Add(time.Hour)}
}

func testRegisterAndReopen(t *testing.T, e engine) {
	ctx := context.Background()
	loc := e.fresh(t)
	s := mustOpen(t, e, loc)
	now := time.Now().Truncate(time.Millisecond)
	single := &AuthKey{Hash: "h1", Created: now, User: AdminUser}
	reuse := &AuthKey{Hash: "h2", Reusable: true, Ephemeral: true, Tags: []string{"tag:a"}, Created: now}
	expired := &AuthKey{Hash: "h3", Reusable: true, Expires: now.Add(-time.Second), Created: now, User: AdminUser}
	for _, k := range []*AuthKey{single, reuse, expired} {
		if err := s.CreateAuthKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateAuthKey(ctx, &AuthKey{Hash: "h1", Created: now}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate hash: %v", err)
	}
	a := testNode("a", "100.64.0.1", now)
	if _, err := s.RegisterNode(ctx, "h1", now, a); err != nil {
		t.Fatal(err)
	}
	if a.ID == 0 || a.User != AdminUser {
		t.Fatalf("registered node: id %d user %q", a.ID, a.User)
	}
	if _, err := s.RegisterNode(ctx, "h1", now, testNode("b", "100.64.0.2", now)); !errors.Is(err, ErrKeyUsed) {
		t.Fatalf("second use of single-use key: %v", err)
	}
	if _, err := s.RegisterNode(ctx, "h3", now, testNode("b", "100.64.0.2", now)); !errors.Is(err, ErrKeyExpired) {
		t.Fatalf("expired key: %v", err)
	}
	if _, err := s.RegisterNode(ctx, "nope", now, testNode("b", "100.64.0.2", now)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown key: %v", err)
	}
	for col, dup := range map[string]*Node{"name": {Name: "a", NodeKey: "nodekey:other", IP: netip.MustParseAddr("100.64.0.3")}, "node_key": {Name: "z", NodeKey: "nodekey:a", IP: netip.MustParseAddr("100.64.0.4")}, "ip": testNode("y", "100.64.0.1", now)} {
		_, err := s.RegisterNode(ctx, "h2", now, dup)
		var ce *ConflictError
		if !errors.Is(err, ErrConflict) || !errors.As(err, &ce) || ce.Column != col {
			t.Fatalf("duplicate %s: %v", col, err)
		}
		if dup.ID != 0 {
			t.Fatalf("refused registration kept ID %d", dup.ID)
		}
	}
	b := testNode("b", "100.64.0.2", now)
	if _, err := s.RegisterNode(ctx, "h2", now, b); err != nil {
		t.Fatal(err)
	}
	if !b.Ephemeral || len(b.Tags) != 1 || b.User != "" {
		t.Fatalf("key properties not applied: %+v", b)
	}
	b.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:41641")}
	b.HomeRelay = "nyc"
	b.Netcheck = []byte(`{"udp":true}`)
	if err := s.UpdateNode(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateNode(ctx, &Node{ID: 9999}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update of a missing node: %v", err)
	}
	// Re-registration of an existing row renews it in place.
	a.KeyExpiry = now.Add(2 * time.Hour)
	a.Hostname = "renewed"
	if _, err := s.RegisterNode(ctx, "h2", now, a); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPolicy(ctx, `{"acls":[]}`, now); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = mustOpen(t, e, loc)
	defer s.Close()
	if v, err := s.SchemaVersion(ctx); err != nil || v < 1 {
		t.Fatalf("schema version %d after reopen: %v", v, err)
	}
	snap, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Nodes) != 2 || snap.Nodes[0].IP.String() != "100.64.0.1" || snap.Nodes[0].Hostname != "renewed" ||
		!snap.Nodes[0].KeyExpiry.Equal(a.KeyExpiry) || snap.Nodes[1].HomeRelay != "nyc" ||
		len(snap.Nodes[1].Endpoints) != 1 || string(snap.Nodes[1].Netcheck) != `{"udp":true}` ||
		snap.Policy == "" || snap.IPCursor.String() != "100.64.0.2" {
		t.Fatalf("state after reopen: %+v", snap)
	}
	if err := s.DeleteNode(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNode(ctx, a.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
}

// testGroupCommit registers concurrently: each registration's own outcome
// holds inside the shared transaction (a single-use key is used once, a
// duplicate name fails alone) and everything acknowledged is stored.
func testGroupCommit(t *testing.T, e engine) {
	ctx := context.Background()
	loc := e.fresh(t)
	s := mustOpen(t, e, loc)
	now := time.Now()
	s.CreateAuthKey(ctx, &AuthKey{Hash: "once", Created: now})
	s.CreateAuthKey(ctx, &AuthKey{Hash: "many", Reusable: true, Created: now})
	const n = 200
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, name := "many", fmt.Sprint("n", i)
			switch {
			case i%20 == 0:
				h = "once"
			case i == 7:
				name = "n8" // duplicate of i == 8
			}
			_, errs[i] = s.RegisterNode(ctx, h, now, &Node{Name: name, NodeKey: fmt.Sprint("k", i),
				IP: netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), Created: now})
		}()
	}
	wg.Wait()
	ok, used, conflict := 0, 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, ErrKeyUsed):
			used++
		case errors.Is(err, ErrConflict):
			conflict++
		default:
			t.Errorf("unexpected error: %v", err)
		}
	}
	// 10 tried the single-use key: one won. n7 and n8 share a name: one won.
	if used != 9 || conflict != 1 || ok != n-10 {
		t.Fatalf("ok %d, used %d, conflict %d", ok, used, conflict)
	}
	s.Close()
	if _, err := s.RegisterNode(ctx, "many", now, &Node{Name: "late"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	s = mustOpen(t, e, loc)
	defer s.Close()
	snap, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Nodes) != ok {
		t.Fatalf("%d nodes stored, %d acknowledged", len(snap.Nodes), ok)
	}
}

func testUsers(t *testing.T, e engine) {
	ctx := context.Background()
	s := mustOpen(t, e, e.fresh(t))
	defer s.Close()
	now := time.Now()
	users, err := s.Users(ctx)
	if err != nil || len(users) != 1 || users[0].Name != AdminUser {
		t.Fatalf("users of a new store: %v, %v", users, err)
	}
	if err := s.CreateUser(ctx, User{Name: "alice@example.com", Created: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateUser(ctx, User{Name: "alice@example.com", Created: now}); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate user: %v", err)
	}
	if err := s.CreateUser(ctx, User{Name: "bob@example.com", Created: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAuthKey(ctx, &AuthKey{Hash: "x", User: "nobody@example.com", Created: now}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("key for a missing user: %v", err)
	}
	ak := &AuthKey{Hash: "alice", Reusable: true, User: "alice@example.com", Created: now}
	if err := s.CreateAuthKey(ctx, ak); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for i, ip := range []string{"100.64.0.1", "100.64.0.2"} {
		n := testNode(fmt.Sprint("a", i), ip, now)
		if _, err := s.RegisterNode(ctx, "alice", now, n); err != nil {
			t.Fatal(err)
		}
		if n.User != "alice@example.com" {
			t.Fatalf("node user %q", n.User)
		}
		ids = append(ids, n.ID)
	}
	if _, err := s.DeleteUser(ctx, "alice@example.com", false, now); !errors.Is(err, ErrUserHasNode) {
		t.Fatalf("delete of a user with nodes: %v", err)
	}
	if users, _ := s.Users(ctx); len(users) != 3 {
		t.Fatalf("refused delete removed the user: %v", users)
	}
	got, err := s.DeleteUser(ctx, "alice@example.com", true, now)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("forced delete: %v, %v (want %v)", got, err, ids)
	}
	snap, _ := s.Load(ctx)
	if len(snap.Nodes) != 0 {
		t.Fatalf("forced delete left nodes: %v", snap.Nodes)
	}
	if _, err := s.RegisterNode(ctx, "alice", now, testNode("late", "100.64.0.3", now)); !errors.Is(err, ErrKeyRevoked) {
		t.Fatalf("deleted user's key: %v", err)
	}
	if got, err := s.DeleteUser(ctx, "bob@example.com", false, now); err != nil || len(got) != 0 {
		t.Fatalf("delete of a user without nodes: %v, %v", got, err)
	}
	if _, err := s.DeleteUser(ctx, "bob@example.com", false, now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete of a missing user: %v", err)
	}
}

func testAuthKeyLifecycle(t *testing.T, e engine) {
	ctx := context.Background()
	s := mustOpen(t, e, e.fresh(t))
	defer s.Close()
	now := time.Now().Truncate(time.Millisecond)
	k1 := &AuthKey{Hash: "k1", Reusable: true, Tags: []string{"tag:web"}, Expires: now.Add(time.Hour), Created: now}
	k2 := &AuthKey{Hash: "k2", Ephemeral: true, User: AdminUser, Created: now}
	for _, k := range []*AuthKey{k1, k2} {
		if err := s.CreateAuthKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RegisterNode(ctx, "k1", now, testNode("a", "100.64.0.1", now)); err != nil {
		t.Fatal(err)
	}
	keys, err := s.AuthKeys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("list: %v, %v", keys, err)
	}
	if g := keys[0]; g.ID != k1.ID || !g.Reusable || g.Uses != 1 || len(g.Tags) != 1 || !g.Expires.Equal(k1.Expires) || g.User != "" || !g.Revoked.IsZero() {
		t.Fatalf("key 1 listed as %+v", g)
	}
	if g := keys[1]; g.ID != k2.ID || !g.Ephemeral || g.Uses != 0 || g.User != AdminUser {
		t.Fatalf("key 2 listed as %+v", g)
	}
	if err := s.RevokeAuthKey(ctx, k1.ID, now); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeAuthKey(ctx, k1.ID, now.Add(time.Minute)); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
	if err := s.RevokeAuthKey(ctx, 9999, now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke of a missing key: %v", err)
	}
	if _, err := s.RegisterNode(ctx, "k1", now, testNode("b", "100.64.0.2", now)); !errors.Is(err, ErrKeyRevoked) {
		t.Fatalf("revoked key: %v", err)
	}
	keys, _ = s.AuthKeys(ctx)
	if !keys[0].Revoked.Equal(now) {
		t.Fatalf("revoked at %v, want the first revocation %v", keys[0].Revoked, now)
	}
}

func testReaders(t *testing.T, e engine) {
	ctx := context.Background()
	s := mustOpen(t, e, e.fresh(t))
	defer s.Close()
	now := time.Now().Truncate(time.Millisecond)
	if _, err := s.Node(ctx, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing node: %v", err)
	}
	if _, err := s.Relay(ctx, "relaykey:x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing relay: %v", err)
	}
	if _, err := s.Region(ctx, "nyc"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing region: %v", err)
	}
	if p, err := s.Policy(ctx); err != nil || p != "" {
		t.Fatalf("policy of a new store: %q, %v", p, err)
	}
	s.CreateAuthKey(ctx, &AuthKey{Hash: "k", Created: now, User: AdminUser})
	n := testNode("a", "100.64.0.1", now)
	if _, err := s.RegisterNode(ctx, "k", now, n); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Node(ctx, n.ID); err != nil || got.Name != "a" || got.User != AdminUser {
		t.Fatalf("node: %+v, %v", got, err)
	}
	if got, err := s.NodeByKey(ctx, n.NodeKey); err != nil || got.ID != n.ID {
		t.Fatalf("node by key: %+v, %v", got, err)
	}
	if _, err := s.NodeByKey(ctx, "nodekey:none"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing node by key: %v", err)
	}
	jk := &JoinKey{Hash: "j", Region: "nyc", Created: now}
	if err := s.CreateJoinKey(ctx, jk, Region{Code: "nyc", Name: "New York", MeshSecret: "s"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJoinKey(ctx, &JoinKey{Hash: "j2", Region: "nyc", Created: now}, Region{Code: "nyc", MeshSecret: "other"}); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Region(ctx, "nyc"); err != nil || r.Name != "New York" || r.MeshSecret != "s" {
		t.Fatalf("region after a second key without a name: %+v, %v", r, err)
	}
	if got, err := s.JoinKeyByHash(ctx, "j"); err != nil || got.ID != jk.ID || got.Region != "nyc" {
		t.Fatalf("join key: %+v, %v", got, err)
	}
	rl := Relay{Name: "nyc-1", Region: "nyc", Addr: "198.18.0.1:443", Pin: "p", Key: "relaykey:1", Joined: now, LastHeartbeat: now, State: "up"}
	if err := s.PutRelay(ctx, rl); err != nil {
		t.Fatal(err)
	}
	rl.State, rl.LastHeartbeat = "down", now.Add(time.Minute)
	if err := s.PutRelay(ctx, rl); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Relay(ctx, rl.Key); err != nil || got.State != "down" || !got.LastHeartbeat.Equal(rl.LastHeartbeat) {
		t.Fatalf("relay: %+v, %v", got, err)
	}
	if err := s.PutRelay(ctx, Relay{Name: "nyc-1", Region: "nyc", Key: "relaykey:2"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("relay name taken by another key: %v", err)
	}
	if err := s.SetPolicy(ctx, "{}", now); err != nil {
		t.Fatal(err)
	}
	if p, err := s.Policy(ctx); err != nil || p != "{}" {
		t.Fatalf("policy: %q, %v", p, err)
	}
}

// testDNS: none stored at first (in Load and DNS), then the last written
// settings, and they survive a reopen.
func testDNS(t *testing.T, e engine) {
	ctx := context.Background()
	loc := e.fresh(t)
	s := mustOpen(t, e, loc)
	if d, err := s.DNS(ctx); err != nil || d != "" {
		t.Fatalf("dns of a new store: %q, %v", d, err)
	}
	if snap, err := s.Load(ctx); err != nil || snap.DNS != "" {
		t.Fatalf("load of a new store: dns %q, %v", snap.DNS, err)
	}
	now := time.Now()
	first, second := `{"domain":"a.test","magic_dns":true}`, `{"domain":"b.test","magic_dns":false}`
	if err := s.SetDNS(ctx, first, now); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDNS(ctx, second, now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if d, err := s.DNS(ctx); err != nil || d != second {
		t.Fatalf("dns: %q, %v", d, err)
	}
	s.Close()
	s = mustOpen(t, e, loc)
	defer s.Close()
	if snap, err := s.Load(ctx); err != nil || snap.DNS != second {
		t.Fatalf("load after reopen: dns %q, %v", snap.DNS, err)
	}
	if d, err := s.DNS(ctx); err != nil || d != second {
		t.Fatalf("dns after reopen: %q, %v", d, err)
	}
}

// testSecret: the first stored value wins, for every opener.
func testSecret(t *testing.T, e engine) {
	ctx := context.Background()
	loc := e.fresh(t)
	s := mustOpen(t, e, loc)
	v1, err := s.Secret(ctx, "k", func() ([]byte, error) { return []byte("first"), nil })
	if err != nil || string(v1) != "first" {
		t.Fatalf("secret: %q, %v", v1, err)
	}
	v2, err := s.Secret(ctx, "k", func() ([]byte, error) { return []byte("second"), nil })
	if err != nil || string(v2) != "first" {
		t.Fatalf("secret again: %q, %v", v2, err)
	}
	s.Close()
	s = mustOpen(t, e, loc)
	defer s.Close()
	if v, _ := s.Secret(ctx, "k", func() ([]byte, error) { return []byte("third"), nil }); string(v) != "first" {
		t.Fatalf("secret after reopen: %q", v)
	}
	if _, err := s.Secret(ctx, "bad", func() ([]byte, error) { return nil, errors.New("no entropy") }); err == nil {
		t.Fatal("a failing generator stored something")
	}
}

// The kill -9 case: a child process (this test binary, re-executed)
// registers nodes one by one and prints each acknowledged name; the
// parent kills it with SIGKILL mid-stream, reopens the store and checks
// that every acknowledged node is there.

const childEnv = "WIREMESH_STORE_CHILD"

func TestMain(m *testing.M) {
	if v := os.Getenv(childEnv); v != "" {
		os.Exit(registerChild(v))
	}
	os.Exit(m.Run())
}

func registerChild(spec string) int {
	kind, loc, _ := strings.Cut(spec, "|")
	ctx := context.Background()
	var s Store
	var err error
	if kind == "postgres" {
		s, err = OpenPostgres(ctx, loc, nil)
	} else {
		s, err = OpenSQLite(ctx, loc)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	now := time.Now()
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	// Eight writers, so registrations are group-committed as in the server.
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				id := w*100000 + i
				name := fmt.Sprint("n", id)
				ip := netip.AddrFrom4([4]byte{100, 64 + byte(id>>16), byte(id >> 8), byte(id)})
				if _, err := s.RegisterNode(ctx, "k", now, &Node{Name: name, NodeKey: "nodekey:" + name, IP: ip, Created: now}); err != nil {
					fmt.Fprintln(os.Stderr, err)
					return
				}
				mu.Lock()
				fmt.Fprintln(out, name)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return 0
}

func testKillDuringRegistrations(t *testing.T, e engine) {
	ctx := context.Background()
	loc := e.fresh(t)
	s := mustOpen(t, e, loc)
	if err := s.CreateAuthKey(ctx, &AuthKey{Hash: "k", Reusable: true, Created: time.Now(), User: AdminUser}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+e.name+"|"+loc)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	sc := bufio.NewScanner(stdout)
	// 300 acknowledgements: a few dozen group commits in, with more in
	// flight when the kill lands.
	for len(acked) < 300 && sc.Scan() {
		acked[sc.Text()] = true
	}
	cmd.Process.Signal(syscall.SIGKILL)
	for sc.Scan() { // what was acknowledged before the kill landed
		acked[sc.Text()] = true
	}
	cmd.Wait()
	if len(acked) < 300 {
		t.Fatalf("child acknowledged only %d registrations", len(acked))
	}
	s = mustOpen(t, e, loc)
	defer s.Close()
	snap, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, n := range snap.Nodes {
		have[n.Name] = true
	}
	missing := 0
	for name := range acked {
		if !have[name] {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged registrations missing after kill -9", missing, len(acked))
	}
	t.Logf("%d acknowledged, %d stored after kill -9", len(acked), len(snap.Nodes))
}

// testRoutes: advertised and approved routes are stored apart, survive a
// reopen, a node update leaves them alone, and approving twice or
// unapproving what is not approved changes nothing.
func testRoutes(t *testing.T, e engine) {
	ctx := context.Background()
	loc := e.fresh(t)
	s := mustOpen(t, e, loc)
	now := time.Now().Truncate(time.Millisecond)
	if err := s.CreateAuthKey(ctx, &AuthKey{Hash: "h", Reusable: true, Created: now, User: AdminUser}); err != nil {
		t.Fatal(err)
	}
	n := testNode("r", "100.64.0.1", now)
	if _, err := s.RegisterNode(ctx, "h", now, n); err != nil {
		t.Fatal(err)
	}
	got, err := s.Node(ctx, n.ID)
	if err != nil || len(got.AdvertisedRoutes) != 0 || len(got.ApprovedRoutes) != 0 {
		t.Fatalf("new node: %+v, %v", got, err)
	}
	lan, exit := netip.MustParsePrefix("198.19.50.0/24"), netip.MustParsePrefix("0.0.0.0/0")
	if err := s.SetAdvertisedRoutes(ctx, n.ID, []netip.Prefix{lan, exit}); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		p       netip.Prefix
		approve bool
		changed bool
	}{{lan, true, true}, {lan, true, false}, {exit, true, true}, {exit, false, true}, {exit, false, false}} {
		changed, err := s.ApproveRoute(ctx, n.ID, step.p, step.approve)
		if err != nil || changed != step.changed {
			t.Fatalf("ApproveRoute(%s, %v) = %v, %v; want %v", step.p, step.approve, changed, err, step.changed)
		}
	}
	n.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:41641")}
	if err := s.UpdateNode(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := s.SetAdvertisedRoutes(ctx, 999, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("advertise for unknown node: %v", err)
	}
	if _, err := s.ApproveRoute(ctx, 999, lan, true); !errors.Is(err, ErrNotFound) {
		t.Fatalf("approve for unknown node: %v", err)
	}
	s.Close()
	s = mustOpen(t, e, loc)
	defer s.Close()
	snap, err := s.Load(ctx)
	if err != nil || len(snap.Nodes) != 1 {
		t.Fatalf("load: %v", err)
	}
	r := snap.Nodes[0]
	if fmt.Sprint(r.AdvertisedRoutes) != "[198.19.50.0/24 0.0.0.0/0]" || fmt.Sprint(r.ApprovedRoutes) != "[198.19.50.0/24]" || len(r.Endpoints) != 1 {
		t.Fatalf("after reopen: advertised %v approved %v endpoints %v", r.AdvertisedRoutes, r.ApprovedRoutes, r.Endpoints)
	}
	if err := s.SetAdvertisedRoutes(ctx, n.ID, nil); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.Node(ctx, n.ID); len(r.AdvertisedRoutes) != 0 || len(r.ApprovedRoutes) != 1 {
		t.Fatalf("withdrawn: advertised %v approved %v (approval is kept)", r.AdvertisedRoutes, r.ApprovedRoutes)
	}
}

// testRevocationsAndJoinKeys: revocations survive a reopen with
// their sequence, a lifted one is gone, expired ones are forgotten; join
// keys keep their expiry and can be revoked.
func testRevocationsAndJoinKeys(t *testing.T, e engine) {
	ctx := context.Background()
	path := e.fresh(t)
	s := mustOpen(t, e, path)
	now := time.Now()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.SetRevocation(ctx, Revocation{NodeKey: "nodekey:a", Until: now.Add(time.Hour)}, 1, now))
	must(s.SetRevocation(ctx, Revocation{NodeKey: "nodekey:b", Until: now.Add(time.Hour)}, 2, now))
	must(s.SetRevocation(ctx, Revocation{NodeKey: "nodekey:old", Until: now.Add(time.Second)}, 3, now))
	must(s.SetRevocation(ctx, Revocation{NodeKey: "nodekey:b"}, 4, now.Add(2*time.Second))) // lifts b, forgets old
	exp := now.Add(24 * time.Hour).Truncate(time.Millisecond)
	k := &JoinKey{Hash: "h1", Region: "nyc", Created: now, Expires: exp}
	must(s.CreateJoinKey(ctx, k, Region{Code: "nyc", MeshSecret: "x"}))
	must(s.RevokeJoinKey(ctx, k.ID))
	if err := s.RevokeJoinKey(ctx, 99); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke unknown join key: %v", err)
	}
	s.Close()
	s = mustOpen(t, e, path)
	defer s.Close()
	snap, err := s.Load(ctx)
	must(err)
	if snap.RevocationSeq != 4 || len(snap.Revocations) != 1 || snap.Revocations[0].NodeKey != "nodekey:a" {
		t.Fatalf("revocations after reopen: seq %d %+v", snap.RevocationSeq, snap.Revocations)
	}
	keys, err := s.JoinKeys(ctx)
	must(err)
	if len(keys) != 1 || !keys[0].Revoked || !keys[0].Expires.Equal(exp) || keys[0].Region != "nyc" {
		t.Fatalf("join keys: %+v", keys)
	}
}
