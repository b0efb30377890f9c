//go:build lab

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/wiremesh/wiremesh/internal/poll"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// binDir holds the binaries, built once per test process.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "wiremesh-e2e-bin")
		if buildErr != nil {
			return
		}
		// wireguard-go is built from the module version we use, as the
		// baseline for direct-path throughput.
		cmd := exec.Command("go", "build", "-o", binDir+"/", "../cmd/coordinator", "../cmd/relayd", "../cmd/meshnode",
			"golang.zx2c4.com/wireguard")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// world is a lab with a coordinator and relays on public hosts.
type world struct {
	t        testing.TB
	l        *lab.Lab
	bin      string
	coord    *lab.Host
	coordDir string
	coordURL string
	coordCmd *exec.Cmd
	signer   key.SigningPrivate
	relays   []relayInfo
	authKey  string
	// coordArgs are more `coordinator serve` arguments (set before a
	// restart with startCoordinator).
	coordArgs []string
	relayMap  string
	opts      worldOpts
	// coords are the coordinator replicas; coords[0] is coord above.
	coords []*replica
}

type relayInfo struct {
	Args   []string // relayd's arguments, to restart it
	Region string
	Host   *lab.Host
	Addr   string
	Pin    string `json:"pin"`
	Key    string `json:"relay_key"`
	Dir    string
	Cmd    *exec.Cmd
}

// proc starts a long-running binary in ns with output to a log file that
// is printed if the test fails.
func (w *world) proc(ns *lab.Namespace, name string, args ...string) *exec.Cmd {
	w.t.Helper()
	return w.procWrapped(ns, nil, name, args...)
}

// procWrapped is proc with the binary started through wrap (a command and
// its arguments, such as setpriv with options), when wrap is not empty.
func (w *world) procWrapped(ns *lab.Namespace, wrap []string, name string, args ...string) *exec.Cmd {
	w.t.Helper()
	logf, err := os.CreateTemp("", "wiremesh-e2e-"+ns.Short+"-*.log")
	if err != nil {
		w.t.Fatal(err)
	}
	bin := filepath.Join(w.bin, name)
	if len(wrap) > 0 {
		args = append(append(wrap[1:len(wrap):len(wrap)], bin), args...)
		bin = wrap[0]
	}
	c, err := ns.StartWith(context.Background(), logf, bin, args...)
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(func() {
		// Stop the process before the test's temporary directories go
		// (their cleanups were registered earlier, so they run later): a
		// daemon still writing its state directory would make their
		// removal fail. The lab's own cleanup kills it only after those.
		c.Process.Kill()
		c.Wait()
		logf.Close()
		if w.t.Failed() || os.Getenv("WIREMESH_TEST_LOG") == "1" {
			b, _ := os.ReadFile(logf.Name())
			if len(b) > 20000 {
				b = b[len(b)-20000:]
			}
			w.t.Logf("--- %s %s log ---\n%s", ns.Short, name, b)
		}
		os.Remove(logf.Name())
	})
	return c
}

// run runs a short command from the root namespace and returns stdout.
func (w *world) run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	c := exec.CommandContext(ctx, filepath.Join(w.bin, name), args...)
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// replica is one coordinator process of a world.
type replica struct {
	host *lab.Host
	dir  string
	url  string
	args []string
	cmd  *exec.Cmd
}

// worldOpts are the less common ways to set up a world.
type worldOpts struct {
	// db, when set, is the --db every coordinator replica uses; its
	// signing key must be w.signer (see seedSigningKey).
	db string
	// replicas is how many coordinators to run (default 1).
	replicas int
}

func newWorld(t testing.TB, regions ...string) *world {
	t.Helper()
	return newWorldWith(t, worldOpts{}, regions...)
}

func newWorldWith(t testing.TB, opts worldOpts, regions ...string) *world {
	t.Helper()
	w := &world{t: t, l: lab.New(t), bin: binaries(t), signer: key.NewSigning(), opts: opts}
	if opts.db != "" {
		seedSigningKey(t, opts.db, w.signer)
	}
	var err error
	if w.coord, err = w.l.AddHost("coord", nil); err != nil {
		t.Fatal(err)
	}
	var regs []string
	for _, region := range regions {
		r := relayInfo{Region: region, Dir: t.TempDir()}
		if r.Host, err = w.l.AddHost("relay-"+region, nil); err != nil {
			t.Fatal(err)
		}
		r.Addr = netip.AddrPortFrom(r.Host.Addr, 443).String()
		out, err := w.run("relayd", "pin", "--json", "--state-dir", r.Dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("relayd pin: %v: %s", err, out)
		}
		r.Args = []string{"--region", region, "--listen", r.Addr, "--public-addr", r.Addr,
			"--state-dir", r.Dir, "--trust-key", w.signer.Public().String(),
			"--metrics-listen", netip.AddrPortFrom(r.Host.Addr, 9100).String(),
			"--fastpath-listen", netip.AddrPortFrom(r.Host.Addr, 444).String()}
		r.Cmd = w.proc(r.Host.Namespace, "relayd", r.Args...)
		w.relays = append(w.relays, r)
		regs = append(regs, fmt.Sprintf(`{"code":%q,"name":%q,"relays":[{"name":"%s-1","addr":%q,"pin":%q,"key":%q}]}`,
			region, strings.ToUpper(region), region, r.Addr, r.Pin, r.Key))
	}
	w.coordDir = t.TempDir()
	if err := key.WriteKeyFile(filepath.Join(w.coordDir, "signing.key"), w.signer); err != nil {
		t.Fatal(err)
	}
	rm := filepath.Join(t.TempDir(), "relays.json")
	os.WriteFile(rm, []byte(`{"regions":[`+strings.Join(regs, ",")+`]}`), 0o600)
	w.coordURL = "https://" + netip.AddrPortFrom(w.coord.Addr, 8443).String()
	w.relayMap = rm
	w.startCoordinator(rm)
	for i := 1; i < opts.replicas; i++ {
		h, err := w.l.AddHost(fmt.Sprintf("coord%d", i+1), nil)
		if err != nil {
			t.Fatal(err)
		}
		r := &replica{host: h, dir: t.TempDir(), url: "https://" + netip.AddrPortFrom(h.Addr, 8443).String()}
		r.args = []string{"serve", "--listen", strings.TrimPrefix(r.url, "https://"), "--state-dir", r.dir,
			"--relay-map", rm, "--db", opts.db}
		w.coords = append(w.coords, r)
		w.startReplica(r)
	}
	out, err := w.run("coordinator", "authkey", "create", "--reusable", "--state-dir", w.coordDir)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	w.authKey = lines[len(lines)-1]
	return w
}

func (w *world) startCoordinator(relayMap string) {
	w.t.Helper()
	args := []string{"serve", "--listen", strings.TrimPrefix(w.coordURL, "https://"), "--state-dir", w.coordDir,
		"--metrics-listen", "127.0.0.1:9100"}
	args = append(args, w.coordArgs...)
	if relayMap != "" {
		args = append(args, "--relay-map", relayMap)
	}
	if w.opts.db != "" {
		args = append(args, "--db", w.opts.db)
	}
	r := &replica{host: w.coord, dir: w.coordDir, url: w.coordURL, args: args}
	if len(w.coords) == 0 {
		w.coords = append(w.coords, r)
	} else {
		w.coords[0] = r
	}
	w.startReplica(r)
	w.coordCmd = r.cmd
}

// startReplica starts (or restarts) a coordinator and waits for its admin
// socket.
func (w *world) startReplica(r *replica) {
	w.t.Helper()
	r.cmd = w.proc(r.host.Namespace, "coordinator", r.args...)
	if !poll.Wait(poll.DefaultTimeout, func() bool {
		_, err := w.run("coordinator", "nodes", "list", "--state-dir", r.dir)
		return err == nil
	}) {
		w.t.Fatal("coordinator did not come up")
	}
}

func (w *world) stopCoordinator() {
	w.coordCmd.Process.Kill()
	w.coordCmd.Wait()
}

// node is a meshnode process in a lab host.
type node struct {
	w    *world
	name string
	host *lab.Host
	dir  string
	cmd  *exec.Cmd
	args []string
}

func (w *world) startNode(name string, h *lab.Host, extra ...string) *node {
	w.t.Helper()
	return w.startNodeVia(name, h, w.coordURL, extra...)
}

// startNodeVia starts a node given coordinators, one URL or a list.
func (w *world) startNodeVia(name string, h *lab.Host, coordinators string, extra ...string) *node {
	w.t.Helper()
	n := &node{w: w, name: name, host: h, dir: w.t.TempDir()}
	n.args = append([]string{"run", "--coordinator", coordinators, "--authkey", w.authKey, "--hostname", name,
		"--state-dir", n.dir, "--log-level", "debug", "--metrics-listen", "127.0.0.1:9100"}, extra...)
	if !slices.Contains(extra, "--userspace") && !slices.ContainsFunc(extra, func(a string) bool { return strings.HasPrefix(a, "--accept-dns") }) {
		// A kernel-mode node in a namespace without /etc/netns/NS/resolv.conf
		// would rewrite the host's /etc/resolv.conf: MagicDNS is opt-in here
		// (dns_test.go gives its namespaces their own file).
		n.args = append(n.args, "--accept-dns=false")
	}
	n.start()
	return n
}

func (n *node) start() {
	n.cmd = n.w.proc(n.host.Namespace, "meshnode", n.args...)
}

func (n *node) stop() {
	n.w.run("meshnode", "down", "--state-dir", n.dir)
	done := make(chan struct{})
	go func() { n.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		n.cmd.Process.Kill()
		<-done
		n.w.t.Errorf("%s did not stop on meshnode down", n.name)
	}
}

func (n *node) status() (localapi.Status, error) {
	var st localapi.Status
	out, err := n.w.run("meshnode", "status", "--json", "--state-dir", n.dir)
	if err != nil {
		return st, err
	}
	err = json.Unmarshal([]byte(out), &st)
	return st, err
}

func (n *node) waitStatus(what string, cond func(localapi.Status) bool) localapi.Status {
	n.w.t.Helper()
	var st localapi.Status
	var err error
	if !poll.Wait(poll.DefaultTimeout, func() bool {
		st, err = n.status()
		return err == nil && cond(st)
	}) {
		b, _ := json.Marshal(st)
		n.w.t.Fatalf("%s: %s never happened: %s %v", n.name, what, b, err)
	}
	return st
}

// waitEndpoints waits until the coordinator has endpoints for every named
// node (their STUN round is done and reported), so that the first packet
// between them can start an upgrade at once.
func (w *world) waitEndpoints(names ...string) {
	w.t.Helper()
	var last string
	if !poll.Wait(poll.DefaultTimeout, func() bool {
		out, err := w.run("coordinator", "nodes", "list", "--json", "--state-dir", w.coordDir)
		last = out
		var nodes []struct {
			Name      string   `json:"name"`
			Endpoints []string `json:"endpoints"`
		}
		if err != nil || json.Unmarshal([]byte(out), &nodes) != nil {
			return false
		}
		have := map[string]bool{}
		for _, n := range nodes {
			have[n.Name] = len(n.Endpoints) > 0
		}
		for _, n := range names {
			if !have[n] {
				return false
			}
		}
		return true
	}) {
		w.t.Fatalf("endpoints of %v never reached the coordinator: %s", names, last)
	}
}

func (n *node) ip() netip.Addr {
	n.w.t.Helper()
	st := n.waitStatus("an address", func(st localapi.Status) bool { return len(st.Self.IPs) > 0 })
	return netip.MustParseAddr(st.Self.IPs[0])
}

// ping runs the kernel's ping inside the node's namespace until count
// replies arrive (sending every 0.2 s), or fails after count+8 seconds.
func (n *node) ping(ip netip.Addr, count int) error {
	deadline := count + 8
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(deadline+5)*time.Second)
	defer cancel()
	out, err := n.host.Command(ctx, "ping", "-c", fmt.Sprint(count), "-w", fmt.Sprint(deadline), "-i", "0.2", ip.String()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v\n%s", ip, n.name, err, out)
	}
	return nil
}

func peerOf(st localapi.Status, name string) (localapi.PeerStatus, bool) {
	for _, p := range st.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return localapi.PeerStatus{}, false
}

// metrics fetches a Prometheus page from inside ns and returns the lines
// that start with prefix.
func metricsOf(ns *lab.Namespace, url, prefix string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := ns.Command(ctx, "curl", "-s", url).Output()
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, prefix) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
