package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/wiremesh/wiremesh/internal/poll"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// buildBinary compiles this command once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the real binary")
	}
	bin := filepath.Join(t.TempDir(), "coordinator")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type daemon struct {
	cmd  *exec.Cmd
	logs *bytes.Buffer
}

func startServe(t *testing.T, bin, dir, addr string, extra ...string) *daemon {
	t.Helper()
	d := &daemon{logs: &bytes.Buffer{}}
	d.cmd = exec.Command(bin, append([]string{"serve", "--listen", addr, "--state-dir", dir, "--log-level", "debug"}, extra...)...)
	d.cmd.Stderr = d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.cmd.Process.Kill(); d.cmd.Wait() })
	if !poll.Wait(poll.DefaultTimeout, func() bool {
		if _, err := os.Stat(filepath.Join(dir, coordinator.AdminSocket)); err != nil {
			return false
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}) {
		t.Fatalf("coordinator did not start:\n%s", d.logs)
	}
	return d
}

func admin(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("coordinator %v: %v %s", args, err, stderr)
	}
	return string(out)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestKill9LosesNothingAcknowledged registers nodes concurrently, kills the
// real binary with SIGKILL mid-stream, restarts it, and checks that every
// registration that was acknowledged is there with the same name, key and
// address.
func TestKill9LosesNothingAcknowledged(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	addr := freeAddr(t)
	d := startServe(t, bin, dir, addr)
	authKey := lastLine(admin(t, bin, "authkey", "create", "--reusable", "--state-dir", dir))
	if !strings.HasPrefix(authKey, "wmauth.") {
		t.Fatalf("authkey create printed %q", authKey)
	}
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
				c, err := coordclient.DialWithAuthKey(ctx, "https://"+addr, authKey, nk)
				if err != nil {
					return // the server is gone
				}
				resp, err := c.Register(ctx, authKey, key.NewDisco().Public(), fmt.Sprintf("w%d", i), "linux")
				if err != nil {
					return
				}
				mu.Lock()
				acked = append(acked, ack{resp.Node.Name, resp.Node.Addresses[0].Addr().String(), nk.Public().String()})
				mu.Unlock()
			}
		}()
	}
	// Kill once some registrations are through, while others are in flight.
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 30 {
			break
		}
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatalf("only %d registrations in 30 s:\n%s", n, d.logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.cmd.Process.Signal(syscall.SIGKILL)
	d.cmd.Wait()
	close(stop)
	wg.Wait()

	startServe(t, bin, dir, addr)
	var nodes []coordinator.NodeInfo
	if err := json.Unmarshal([]byte(admin(t, bin, "nodes", "list", "--json", "--state-dir", dir)), &nodes); err != nil {
		t.Fatal(err)
	}
	have := map[string]coordinator.NodeInfo{}
	for _, n := range nodes {
		have[n.Name] = n
	}
	for _, a := range acked {
		n, ok := have[a.name]
		if !ok || n.IP != a.ip || n.NodeKey != a.key {
			t.Errorf("acknowledged node %+v after kill -9: %+v (present %v)", a, n, ok)
		}
	}
	t.Logf("%d registrations acknowledged before kill -9, %d nodes after restart", len(acked), len(nodes))
}

// TestAdminCommands drives every admin command of the real binary.
func TestAdminCommands(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	addr := freeAddr(t)
	startServe(t, bin, dir, addr)
	if v := admin(t, bin, "version"); !strings.HasPrefix(v, "coordinator ") {
		t.Errorf("version: %q", v)
	}
	ak := lastLine(admin(t, bin, "authkey", "create", "--tags", "tag:web", "--expiry", "1h", "--state-dir", dir))
	jk := lastLine(admin(t, bin, "relaykey", "create", "--region", "nyc", "--region-name", "New York", "--state-dir", dir))
	if !strings.HasPrefix(jk, "wmjoin.") {
		t.Fatalf("relaykey create printed %q", jk)
	}
	ctx := context.Background()
	c, err := coordclient.DialWithAuthKey(ctx, "https://"+addr, ak, key.NewNode())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Register(ctx, ak, key.NewDisco().Public(), "web1", "linux"); err != nil {
		t.Fatal(err)
	}
	rk := key.NewRelay()
	if _, _, err := coordclient.JoinRelay(ctx, "https://"+addr, jk, rk, relayReq()); err != nil {
		t.Fatal(err)
	}
	list := admin(t, bin, "nodes", "list", "--state-dir", dir)
	for _, want := range []string{"NAME", "HOME RELAY", "web1", "100.64.", "tag:web"} {
		if !strings.Contains(list, want) {
			t.Errorf("nodes list lacks %q:\n%s", want, list)
		}
	}
	if rl := admin(t, bin, "relays", "list", "--state-dir", dir); !strings.Contains(rl, "nyc") || !strings.Contains(rl, "up") {
		t.Errorf("relays list:\n%s", rl)
	}
	pol := filepath.Join(dir, "policy.hujson")
	os.WriteFile(pol, []byte(`{"tagOwners": {"tag:web": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["tag:web:443"]}],
		"tests": [{"src": "1.2.3.4", "accept": ["web1:443"], "deny": ["web1:22"]}]}`), 0o600)
	admin(t, bin, "policy", "set", pol, "--state-dir", dir)
	if got := admin(t, bin, "policy", "get", "--state-dir", dir); !strings.Contains(got, "tag:web:443") {
		t.Errorf("policy get: %q", got)
	}
	// A failing test: rejected with a one-line error, old policy kept.
	bad := filepath.Join(dir, "bad.hujson")
	os.WriteFile(bad, []byte(`{"acls": [], "tests": [{"src": "1.2.3.4", "accept": ["web1:443"]}]}`), 0o600)
	out, err := exec.Command(bin, "policy", "set", bad, "--state-dir", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "should be accepted") || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Errorf("failing policy: %v %q", err, out)
	}
	if got := admin(t, bin, "policy", "get", "--state-dir", dir); !strings.Contains(got, "tag:web:443") {
		t.Errorf("old policy not kept: %q", got)
	}
	admin(t, bin, "nodes", "expire", "web1", "--state-dir", dir)
	if list := admin(t, bin, "nodes", "list", "--state-dir", dir); !strings.Contains(list, "(expired)") {
		t.Errorf("expire not shown:\n%s", list)
	}
	admin(t, bin, "nodes", "delete", "web1", "--state-dir", dir)
	if out, err := exec.Command(bin, "nodes", "delete", "web1", "--state-dir", dir).CombinedOutput(); err == nil || !strings.Contains(string(out), "not found") {
		t.Errorf("deleting a missing node: %v %q", err, out)
	}
	// Bad input: clear one-line errors, non-zero exit.
	for _, args := range [][]string{
		{"authkey", "create", "--expiry", "soon", "--state-dir", dir},
		{"relaykey", "create", "--state-dir", dir},
		{"nodes", "list", "--state-dir", filepath.Join(dir, "nope")},
		{"bogus"},
		{"serve", "--listen", addr, "--state-dir", t.TempDir(), "--db", "mysql://db"},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err == nil || strings.Count(strings.TrimSpace(string(out)), "\n") > 0 && args[0] != "bogus" {
			t.Errorf("%v: err %v, output %q", args, err, out)
		}
	}
	// Environment twins.
	cmd := exec.Command(bin, "nodes", "list", "--json")
	cmd.Env = append(os.Environ(), "COORDINATOR_STATE_DIR="+dir)
	if out, err := cmd.Output(); err != nil || !strings.HasPrefix(string(out), "[") {
		t.Errorf("COORDINATOR_STATE_DIR: %v %q", err, out)
	}
}

func relayReq() netmap.RelayJoinRequest {
	return netmap.RelayJoinRequest{Region: "nyc", PublicAddr: "198.18.1.1:443", Pin: "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}
}

// TestSecondServerRefused checks that a second coordinator on the same
// state directory refuses to start instead of taking over the socket.
func TestSecondServerRefused(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	startServe(t, bin, dir, freeAddr(t))
	out, err := exec.Command(bin, "serve", "--listen", freeAddr(t), "--state-dir", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another coordinator is running") {
		t.Fatalf("second server: %v %s", err, out)
	}
	admin(t, bin, "nodes", "list", "--state-dir", dir) // the first still answers
}

// TestDNSCommands drives `dns get` and `dns set` on the real binary: the
// flags until something is set, a set shown by get, a bad file refused
// with one line naming the field (old settings kept), and the stored
// settings surviving a restart with other flags.
func TestDNSCommands(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	addr := freeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	url := "https://coord.example.net:" + port
	d := startServe(t, bin, dir, addr, "--server-url", url, "--dns-domain", "flags.test", "--dns-nameservers", "198.18.0.53")
	get := func() map[string]any {
		t.Helper()
		var m map[string]any
		out := admin(t, bin, "dns", "get", "--state-dir", dir)
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("dns get printed %q: %v", out, err)
		}
		return m
	}
	if m := get(); m["domain"] != "flags.test" || fmt.Sprint(m["nameservers"]) != "[198.18.0.53]" || m["magic_dns"] != true {
		t.Fatalf("dns get before any set: %v", m)
	}
	good := filepath.Join(dir, "dns.hujson")
	os.WriteFile(good, []byte(`{
		// HuJSON
		"domain": "mesh.internal", "nameservers": ["198.18.0.53"], "search_domains": ["corp.test"],
		"split": {"corp.test": ["198.18.0.54"]},
		"extra_records": [{"name": "printer.mesh.internal", "type": "A", "value": "198.19.50.10"},],
	}`), 0o600)
	if out := admin(t, bin, "dns", "set", good, "--state-dir", dir); !strings.Contains(out, "dns settings set") {
		t.Errorf("dns set printed %q", out)
	}
	if m := get(); m["domain"] != "mesh.internal" || fmt.Sprint(m["split"]) != "map[corp.test:[198.18.0.54]]" {
		t.Fatalf("dns get after set: %v", m)
	}
	for file, want := range map[string]string{
		`{"domain": "mesh.internal", "split": {"corp.test": ["198.18.0.54:5353"]}}`: `split["corp.test"][0]: "198.18.0.54:5353": port 5353`,
		`{"domain": "example.net"}`:                  "domain: example.net overlaps the coordinator's own domain example.net",
		`{"domain": "mesh.internal", "extra": true}`: "extra: unknown field",
	} {
		bad := filepath.Join(dir, "bad.hujson")
		os.WriteFile(bad, []byte(file), 0o600)
		out, err := exec.Command(bin, "dns", "set", bad, "--state-dir", dir).CombinedOutput()
		msg := strings.TrimSpace(string(out))
		if err == nil || !strings.Contains(msg, want) || !strings.Contains(msg, "the old ones stay in force") || strings.Contains(msg, "\n") {
			t.Errorf("dns set %s: %v %q, want one line with %q", file, err, msg, want)
		}
	}
	if m := get(); m["domain"] != "mesh.internal" {
		t.Fatalf("dns get after refused sets: %v", m)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Wait()
	startServe(t, bin, dir, addr, "--server-url", url, "--dns-domain", "other.test")
	if m := get(); m["domain"] != "mesh.internal" || len(m["extra_records"].([]any)) != 1 {
		t.Fatalf("dns get after restart: %v", m)
	}
}

// TestWebLoginCommand: `web login` prints a console link alone on its
// last line, for an admin or an existing user, and fails clearly without a
// console or for an unknown user.
func TestWebLoginCommand(t *testing.T) {
	bin := buildBinary(t)
	plain := t.TempDir()
	startServe(t, bin, plain, freeAddr(t))
	if out, err := exec.Command(bin, "web", "login", "--state-dir", plain).CombinedOutput(); err == nil || !strings.Contains(string(out), "--web-listen") {
		t.Errorf("web login without a console: %v %q", err, out)
	}
	dir, web := t.TempDir(), freeAddr(t)
	startServe(t, bin, dir, freeAddr(t), "--web-listen", web)
	if link := lastLine(admin(t, bin, "web", "login", "--state-dir", dir)); !strings.HasPrefix(link, "https://"+web+"/signin/") {
		t.Errorf("web login printed %q", link)
	}
	if out, err := exec.Command(bin, "web", "login", "--user", "bob@example.com", "--state-dir", dir).CombinedOutput(); err == nil || !strings.Contains(string(out), "no such user") {
		t.Errorf("web login for a missing user: %v %q", err, out)
	}
	admin(t, bin, "users", "create", "bob@example.com", "--state-dir", dir)
	if link := lastLine(admin(t, bin, "web", "login", "--user", "bob@example.com", "--state-dir", dir)); !strings.HasPrefix(link, "https://"+web+"/signin/") {
		t.Errorf("web login --user printed %q", link)
	}
}
