package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/store/pgtest"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

func adminFails(t *testing.T, bin string, want string, args ...string) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), want) || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Errorf("coordinator %v: err %v, output %q (want one line with %q)", args, err, out, want)
	}
}

// TestUsersAndKeysCommands drives users and the auth-key lifecycle through
// the real binary.
func TestUsersAndKeysCommands(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	addr := freeAddr(t)
	startServe(t, bin, dir, addr)
	sd := []string{"--state-dir", dir}
	run := func(args ...string) string { return admin(t, bin, append(args, sd...)...) }

	if out := run("users", "create", "alice@example.com"); !strings.Contains(out, "created") {
		t.Errorf("users create: %q", out)
	}
	adminFails(t, bin, "already exists", append([]string{"users", "create", "alice@example.com"}, sd...)...)
	adminFails(t, bin, "want a login", append([]string{"users", "create", "Alice"}, sd...)...)
	adminFails(t, bin, "no such user", append([]string{"authkey", "create", "--user", "bob@example.com"}, sd...)...)

	aliceKey := lastLine(run("authkey", "create", "--user", "alice@example.com", "--reusable", "--expiry", "1h"))
	adminKey := lastLine(run("authkey", "create"))
	tagKey := lastLine(run("authkey", "create", "--tags", "tag:srv", "--ephemeral"))
	ctx := context.Background()
	for i, k := range []string{aliceKey, aliceKey, adminKey, tagKey} {
		c, err := coordclient.DialWithAuthKey(ctx, "https://"+addr, k, key.NewNode())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Register(ctx, k, key.NewDisco().Public(), fmt.Sprint("n", i), "linux"); err != nil {
			t.Fatal(err)
		}
	}

	var nodes []coordinator.NodeInfo
	json.Unmarshal([]byte(run("nodes", "list", "--json")), &nodes)
	users := map[string]string{}
	for _, n := range nodes {
		users[n.Name] = n.User
	}
	if users["n0"] != "alice@example.com" || users["n1"] != "alice@example.com" || users["n2"] != "admin@" || users["n3"] != "" {
		t.Errorf("node users: %v", users)
	}
	if list := run("nodes", "list"); !strings.Contains(list, "USER") || !strings.Contains(list, "alice@example.com") {
		t.Errorf("nodes list has no USER column:\n%s", list)
	}

	var ul []coordinator.UserInfo
	if err := json.Unmarshal([]byte(run("users", "list", "--json")), &ul); err != nil || len(ul) != 2 ||
		ul[0].Name != "admin@" || !ul[0].BuiltIn || ul[0].Nodes != 1 || ul[1].Name != "alice@example.com" || ul[1].Nodes != 2 {
		t.Errorf("users list --json: %+v, %v", ul, err)
	}
	if out := run("users", "list"); !strings.Contains(out, "alice@example.com") || !strings.Contains(out, "(built in)") {
		t.Errorf("users list:\n%s", out)
	}

	var keys []coordinator.AuthKeyInfo
	out := run("authkey", "list", "--json")
	if err := json.Unmarshal([]byte(out), &keys); err != nil || len(keys) != 3 {
		t.Fatalf("authkey list --json: %v %s", err, out)
	}
	if k := keys[0]; k.User != "alice@example.com" || !k.Reusable || k.Uses != 2 || k.Expires.IsZero() {
		t.Errorf("alice's key listed as %+v", k)
	}
	if k := keys[2]; k.User != "" || !k.Ephemeral || len(k.Tags) != 1 || k.Uses != 1 {
		t.Errorf("tagged key listed as %+v", k)
	}
	for _, secretPart := range []string{aliceKey, strings.Split(aliceKey, ".")[1]} {
		if strings.Contains(out, secretPart) || strings.Contains(run("authkey", "list"), secretPart) {
			t.Fatal("authkey list shows a secret")
		}
	}
	if table := run("authkey", "list"); !strings.Contains(table, "USES") || !strings.Contains(table, "used") {
		t.Errorf("authkey list:\n%s", table)
	}

	// Revoke: the key registers nothing more, at once.
	run("authkey", "revoke", fmt.Sprint(keys[0].ID))
	c, _ := coordclient.DialWithAuthKey(ctx, "https://"+addr, aliceKey, key.NewNode())
	if _, err := c.Register(ctx, aliceKey, key.NewDisco().Public(), "late", "linux"); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("registration with a revoked key: %v", err)
	}
	if table := run("authkey", "list"); !strings.Contains(table, "revoked") {
		t.Errorf("authkey list after revoke:\n%s", table)
	}
	adminFails(t, bin, "not found", append([]string{"authkey", "revoke", "999"}, sd...)...)
	adminFails(t, bin, "not a key ID", append([]string{"authkey", "revoke", "x"}, sd...)...)

	// Delete: refused while alice owns nodes; --force deletes them too.
	adminFails(t, bin, "--force", append([]string{"users", "delete", "alice@example.com"}, sd...)...)
	adminFails(t, bin, "built in", append([]string{"users", "delete", "admin@"}, sd...)...)
	if out := run("users", "delete", "alice@example.com", "--force"); !strings.Contains(out, "2 nodes deleted") {
		t.Errorf("users delete --force: %q", out)
	}
	json.Unmarshal([]byte(run("nodes", "list", "--json")), &nodes)
	if len(nodes) != 2 {
		t.Errorf("after deleting alice: %+v", nodes)
	}
	adminFails(t, bin, "not found", append([]string{"users", "delete", "alice@example.com"}, sd...)...)
}

// TestReplicaKill9MidRegistrations runs two replicas of the real binary on
// one PostgreSQL, registers through both (each client given both URLs),
// kills one with SIGKILL mid-stream, and checks on the survivor that every
// acknowledged registration is there.
func TestReplicaKill9MidRegistrations(t *testing.T) {
	bin := buildBinary(t)
	pg := pgtest.Start(t)
	db := pg.NewDatabase(t)
	dirs := []string{t.TempDir(), t.TempDir()}
	addrs := []string{freeAddr(t), freeAddr(t)}
	d0 := startServe(t, bin, dirs[0], addrs[0], "--db", db)
	d1 := startServe(t, bin, dirs[1], addrs[1], "--db", db)
	authKey := lastLine(admin(t, bin, "authkey", "create", "--reusable", "--state-dir", dirs[0]))
	urls := []string{"https://" + addrs[0] + ",https://" + addrs[1], "https://" + addrs[1] + ",https://" + addrs[0]}
	ctx := context.Background()
	type ack struct{ name, ip, key string }
	var mu sync.Mutex
	var acked []ack
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				nk := key.NewNode()
				c, err := coordclient.DialWithAuthKey(ctx, urls[w%2], authKey, nk)
				if err != nil {
					continue
				}
				resp, err := c.Register(ctx, authKey, key.NewDisco().Public(), fmt.Sprintf("w%d-%d", w, i), "linux")
				if err != nil {
					continue
				}
				mu.Lock()
				acked = append(acked, ack{resp.Node.Name, resp.Node.Addresses[0].Addr().String(), nk.Public().String()})
				mu.Unlock()
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	waitCount := func(n int) {
		deadline := time.Now().Add(60 * time.Second)
		for count() < n {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("only %d registrations:\n%s\n%s", count(), d0.logs, d1.logs)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitCount(60)
	d0.cmd.Process.Signal(syscall.SIGKILL)
	d0.cmd.Wait()
	killedAt := count()
	// Registrations go on through the survivor.
	waitCount(killedAt + 40)
	close(stop)
	wg.Wait()

	var nodes []coordinator.NodeInfo
	if err := json.Unmarshal([]byte(admin(t, bin, "nodes", "list", "--json", "--state-dir", dirs[1])), &nodes); err != nil {
		t.Fatal(err)
	}
	have := map[string]coordinator.NodeInfo{}
	for _, n := range nodes {
		have[n.Name] = n
	}
	ips := map[string]bool{}
	for _, a := range acked {
		n, ok := have[a.name]
		if !ok || n.IP != a.ip || n.NodeKey != a.key {
			t.Errorf("acknowledged node %+v after kill -9 of a replica: %+v (present %v)", a, n, ok)
		}
		if ips[a.ip] {
			t.Errorf("address %s given twice", a.ip)
		}
		ips[a.ip] = true
	}
	// The killed replica comes back with everything.
	startServe(t, bin, dirs[0], addrs[0], "--db", db)
	var again []coordinator.NodeInfo
	json.Unmarshal([]byte(admin(t, bin, "nodes", "list", "--json", "--state-dir", dirs[0])), &again)
	if len(again) != len(nodes) {
		t.Errorf("restarted replica has %d nodes, survivor %d", len(again), len(nodes))
	}
	t.Logf("%d acknowledged (%d before the kill), %d nodes on the survivor", len(acked), killedAt, len(nodes))
}

// TestReplicaDeathShowsItsNodesOffline: a node streaming from a replica
// that is killed (and cannot move: its list has only that replica) is
// shown offline to its peers on the other replica once the dead one has
// been silent long enough.
func TestReplicaDeathShowsItsNodesOffline(t *testing.T) {
	bin := buildBinary(t)
	pg := pgtest.Start(t)
	db := pg.NewDatabase(t)
	dirs := []string{t.TempDir(), t.TempDir()}
	addrs := []string{freeAddr(t), freeAddr(t)}
	d0 := startServe(t, bin, dirs[0], addrs[0], "--db", db)
	startServe(t, bin, dirs[1], addrs[1], "--db", db)
	authKey := lastLine(admin(t, bin, "authkey", "create", "--reusable", "--state-dir", dirs[0]))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dial := func(url, host string) *coordclient.Client {
		c, err := coordclient.DialWithAuthKey(ctx, url, authKey, key.NewNode())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Register(ctx, authKey, key.NewDisco().Public(), host, "linux"); err != nil {
			t.Fatal(err)
		}
		return c
	}
	x := dial("https://"+addrs[0], "x")
	y := dial("https://"+addrs[1], "y")
	go x.Watch(ctx, netmap.MapRequest{}, func(*netmap.NetworkMap, *netmap.MapResponse) error { return nil })
	online := make(chan bool, 64)
	go y.Watch(ctx, netmap.MapRequest{}, func(nm *netmap.NetworkMap, _ *netmap.MapResponse) error {
		if p, ok := nm.PeerByName("x"); ok {
			online <- p.Online
		}
		return nil
	})
	wait := func(want bool, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		deadline := time.After(within)
		for {
			select {
			case on := <-online:
				if on == want {
					return time.Since(start)
				}
			case <-deadline:
				t.Fatalf("x never shown online=%v", want)
			}
		}
	}
	wait(true, 20*time.Second)
	d0.cmd.Process.Signal(syscall.SIGKILL)
	d0.cmd.Wait()
	took := wait(false, 40*time.Second)
	t.Logf("x shown offline %v after its replica was killed", took.Round(100*time.Millisecond))
}
