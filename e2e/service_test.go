//go:build lab

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// The systemd units in dist/systemd/ grant the relay only
// CAP_NET_BIND_SERVICE under an unprivileged user, and the node only
// CAP_NET_ADMIN and CAP_NET_BIND_SERVICE. TestLabServiceCapabilities runs
// both under exactly those privileges (setpriv) and checks the mesh works.

// Capability bits (linux/capability.h).
const (
	capNetBindService = 10
	capNetAdmin       = 12
)

// nobody is the unprivileged user the relay runs as, as DynamicUser would
// give it one.
const nobody = 65534

// procStatus returns a field of /proc/PID/status.
func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return ""
}

func capMask(bits ...int) uint64 {
	var m uint64
	for _, b := range bits {
		m |= 1 << b
	}
	return m
}

// TestLabServiceCapabilities: a relay running as an unprivileged user with
// only CAP_NET_BIND_SERVICE (it listens on :443), and a kernel-TUN node
// running with only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, carry traffic
// between two nodes. The processes' effective capabilities and user are
// read back from /proc, so the test cannot pass with more privilege.
func TestLabServiceCapabilities(t *testing.T) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv (util-linux) missing")
	}
	w := newWorld(t, "nyc")
	// The unprivileged relay must reach its binary.
	if err := os.Chmod(w.bin, 0o755); err != nil {
		t.Fatal(err)
	}

	// Restart the relay from a state directory it owns, as nobody.
	r := &w.relays[0]
	r.Cmd.Process.Kill()
	r.Cmd.Wait()
	dir, err := os.MkdirTemp("", "wiremesh-e2e-relay-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if out, err := exec.Command("cp", "-a", r.Dir+"/.", dir).CombinedOutput(); err != nil {
		t.Fatalf("copy relay state: %v %s", err, out)
	}
	if out, err := exec.Command("chown", "-R", fmt.Sprintf("%d:%d", nobody, nobody), dir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v %s", err, out)
	}
	args := slices.Clone(r.Args)
	i := slices.Index(args, "--state-dir")
	args[i+1] = dir
	relayWrap := []string{"setpriv", "--reuid", strconv.Itoa(nobody), "--regid", strconv.Itoa(nobody), "--clear-groups",
		"--no-new-privs", "--bounding-set", "-all,+net_bind_service",
		"--inh-caps", "-all,+net_bind_service", "--ambient-caps", "-all,+net_bind_service"}
	r.Cmd = w.procWrapped(r.Host.Namespace, relayWrap, "relayd", args...)

	// Node a runs with the node unit's capabilities; b as plain root.
	a := &node{w: w, name: "a", host: hardNATHost(t, w, "a"), dir: t.TempDir()}
	a.args = []string{"run", "--coordinator", w.coordURL, "--authkey", w.authKey, "--hostname", "a",
		"--state-dir", a.dir, "--log-level", "debug", "--metrics-listen", "127.0.0.1:9100",
		// The namespace has no resolv.conf of its own: leave the host's alone.
		"--accept-dns=false"}
	nodeWrap := []string{"setpriv", "--no-new-privs", "--bounding-set", "-all,+net_admin,+net_bind_service",
		"--inh-caps", "-all"}
	a.cmd = w.procWrapped(a.host.Namespace, nodeWrap, "meshnode", a.args...)
	b := w.startNode("b", hardNATHost(t, w, "b"))

	for _, n := range []*node{a, b} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	if err := a.ping(b.ip(), 3); err != nil {
		t.Fatal(err)
	}
	if err := b.ping(a.ip(), 3); err != nil {
		t.Fatal(err)
	}
	a.waitStatus("relay path to b through the unprivileged relay", func(st localapi.Status) bool {
		p, ok := peerOf(st, "b")
		return ok && p.Path == "relay" && p.Relay == "nyc" && p.RxBytes > 0
	})

	check := func(what string, pid int, wantUID int, wantCaps uint64) {
		t.Helper()
		eff, err := strconv.ParseUint(procStatus(t, pid, "CapEff"), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		if eff != wantCaps {
			t.Errorf("%s: effective capabilities %#x, want %#x", what, eff, wantCaps)
		}
		if uid := strings.Fields(procStatus(t, pid, "Uid"))[1]; uid != strconv.Itoa(wantUID) {
			t.Errorf("%s: effective uid %s, want %d", what, uid, wantUID)
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); filepath.Base(exe) != what {
			t.Errorf("pid %d runs %s, want %s", pid, exe, what)
		}
	}
	check("relayd", r.Cmd.Process.Pid, nobody, capMask(capNetBindService))
	check("meshnode", a.cmd.Process.Pid, 0, capMask(capNetAdmin, capNetBindService))
}
