package coordinator_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/wiremesh/wiremesh/cli"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
)

var update = flag.Bool("update", false, "rewrite golden files")

// volatile matches what differs between runs: keys, pins, times.
var volatile = regexp.MustCompile(`(wmauth|wmjoin)\.[0-9a-f]+\.[A-Za-z0-9_-]+|(nodekey|relaykey):[0-9a-f]{64}|sha256/[A-Za-z0-9+/=_-]+|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`)

// TestAdminCommandsGolden runs every admin command, with its flags, its
// help and its usage errors, through coordinator.Command (printed as cli.Main does) against a running
// server's admin socket and compares stdout, stderr and exit codes with
// testdata/admin_cli.golden (recorded before the admin commands became a
// table; `go test -run TestAdminCommandsGolden -update` rewrites it).
func TestAdminCommandsGolden(t *testing.T) {
	s := coordtest.Start(t, func(c *coordinator.Config) { c.NoAdminSocket = false })
	dir := s.Dir
	pol := filepath.Join(t.TempDir(), "p.hujson")
	os.WriteFile(pol, []byte(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}`), 0o600)
	dnsGood := filepath.Join(filepath.Dir(pol), "dns.hujson")
	os.WriteFile(dnsGood, []byte(`{"domain": "mesh.test", "nameservers": ["198.18.0.53"]}`), 0o600)
	dnsBad := filepath.Join(filepath.Dir(pol), "dnsbad.hujson")
	os.WriteFile(dnsBad, []byte(`{"domain": "mesh.test", "nameservers": ["198.18.0.53:5353"]}`), 0o600)
	badPol := filepath.Join(t.TempDir(), "bad.hujson")
	os.WriteFile(badPol, []byte(`{"acls": [{"action": "accept", "src": ["tag:nope"], "dst": ["*:*"]}]}`), 0o600)
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	s.Register(t, ak, "alpha")
	s.Register(t, ak, "beta")
	s.Register(t, ak, "gamma")
	sd := []string{"--state-dir", dir}
	cmds := [][]string{
		{"authkey"},
		{"authkey", "--help"},
		{"authkey", "create", "--help"},
		append([]string{"authkey", "create"}, sd...),
		append([]string{"authkey", "create", "--reusable", "--ephemeral", "--tags", "tag:a,tag:b", "--expiry", "24h"}, sd...),
		append([]string{"authkey", "create", "--expiry", "soon"}, sd...),
		append([]string{"authkey", "create", "extra"}, sd...),
		{"authkey", "create"},
		{"authkey", "create", "--state-dir", filepath.Join(dir, "nope")},
		{"relaykey", "create", "--help"},
		append([]string{"relaykey", "create"}, sd...),
		append([]string{"relaykey", "create", "--region", "nyc", "--region-name", "New York"}, sd...),
		append([]string{"relaykey", "create", "--region", "Bad Region"}, sd...),
		append([]string{"relaykey", "create", "--region", "fra", "--expiry", "48h"}, sd...),
		append([]string{"relaykey", "create", "--region", "fra", "--expiry", "0"}, sd...),
		append([]string{"relaykey", "create", "--region", "fra", "--expiry", "-1h"}, sd...),
		{"relaykey", "list", "--help"},
		append([]string{"relaykey", "revoke", "1"}, sd...),
		append([]string{"relaykey", "revoke", "x"}, sd...),
		append([]string{"relaykey", "revoke"}, sd...),
		append([]string{"relaykey", "revoke", "99"}, sd...),
		append([]string{"relaykey", "list"}, sd...),
		append([]string{"relaykey", "list", "--json"}, sd...),
		{"nodes", "list", "--help"},
		append([]string{"nodes", "list"}, sd...),
		append([]string{"nodes", "list", "--json"}, sd...),
		append([]string{"nodes", "delete"}, sd...),
		append([]string{"nodes", "delete", "beta"}, sd...),
		append([]string{"nodes", "delete", "beta"}, sd...),
		append([]string{"nodes", "expire", "gamma"}, sd...),
		append([]string{"nodes", "expire", "a", "b"}, sd...),
		append([]string{"nodes", "list"}, sd...),
		append([]string{"nodes", "frob"}, sd...),
		append([]string{"relays", "list"}, sd...),
		append([]string{"relays", "list", "--json"}, sd...),
		append([]string{"policy", "get"}, sd...),
		append([]string{"policy", "set"}, sd...),
		append([]string{"policy", "set", filepath.Join(dir, "missing.hujson")}, sd...),
		append([]string{"policy", "set", badPol}, sd...),
		append([]string{"policy", "set", pol}, sd...),
		{"dns"},
		{"dns", "set", "--help"},
		append([]string{"dns", "get"}, sd...),
		append([]string{"dns", "set"}, sd...),
		append([]string{"dns", "set", dnsBad}, sd...),
		append([]string{"dns", "set", dnsGood}, sd...),
		append([]string{"dns", "get"}, sd...),
		append([]string{"policy", "get"}, sd...),
		{"policy", "get", "--help"},
		{"routes", "approve", "--help"},
		append([]string{"routes", "approve", "alpha"}, sd...),
		append([]string{"routes", "approve", "alpha", "198.19.50.1/24"}, sd...),
		append([]string{"routes", "approve", "alpha", "198.19.50.0/24"}, sd...),
		append([]string{"routes", "unapprove", "nope", "198.19.50.0/24"}, sd...),
		append([]string{"routes", "list"}, sd...),
		append([]string{"routes", "list", "--json"}, sd...),
	}
	var out strings.Builder
	for _, args := range cmds {
		var stdout, stderr bytes.Buffer
		err := coordinator.Command(context.Background(), args, &stdout, &stderr)
		code := cli.ExitCode(err)
		if err != nil && !errors.Is(err, cli.ErrHelp) {
			fmt.Fprintf(&stderr, "coordinator: %s\n", cli.OneLine(err.Error())) // as cli.Main prints it
		}
		shown := strings.ReplaceAll(strings.Join(args, " "), dir, "DIR")
		out.WriteString("$ coordinator " + shown + "\n")
		out.WriteString("exit " + string(rune('0'+code)) + "\n")
		for name, b := range map[string]*bytes.Buffer{"stdout": &stdout} {
			out.WriteString("-- " + name + "\n" + b.String())
		}
		out.WriteString("-- stderr\n" + stderr.String())
	}
	got := volatile.ReplaceAllString(strings.ReplaceAll(strings.ReplaceAll(out.String(), dir, "DIR"), filepath.Dir(pol), "TMP"), "<X>")
	got = regexp.MustCompile(`/tmp/\S+/bad.hujson`).ReplaceAllString(got, "TMP/bad.hujson")
	got = regexp.MustCompile(`/tmp/\S+/p.hujson`).ReplaceAllString(got, "TMP/p.hujson")
	golden := filepath.Join("testdata", "admin_cli.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("admin command output changed; diff against %s:\n%s", golden, lineDiff(string(want), got))
	}
}

// lineDiff shows the lines that differ, with their numbers.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  want " + wl + "\n  got  " + gl + "\n")
		}
	}
	return b.String()
}
