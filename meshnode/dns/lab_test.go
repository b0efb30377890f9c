//go:build lab

package dns

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/wiremesh/wiremesh/lab"
)

// The lab test runs this test binary inside a namespace through `ip netns
// exec`, which bind-mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf:
// the helper configures "the OS" there, serves the resolver on
// 100.100.100.100:53, and asks glibc (getent), not the resolver's API.
const labHelperEnv = "WIREMESH_DNS_LAB_HELPER" // phase: serve, crash, recover
const labStateEnv = "WIREMESH_DNS_LAB_STATE"

func TestMain(m *testing.M) {
	if phase := os.Getenv(labHelperEnv); phase != "" {
		if err := labHelper(phase, os.Getenv(labStateEnv)); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// labUpstream answers A queries with answer on addr (UDP), except names
// starting with "nobody.", which do not exist.
func labUpstream(addr, answer string) (*mdns.Server, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, err
	}
	s := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		if strings.HasPrefix(req.Question[0].Name, "nobody.") {
			m.Rcode = mdns.RcodeNameError
		} else if req.Question[0].Qtype == mdns.TypeA {
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: req.Question[0].Name, Rrtype: mdns.TypeA,
				Class: mdns.ClassINET, Ttl: 60}, A: net.ParseIP(answer).To4()})
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	s.NotifyStartedFunc = func() { close(started) }
	go s.ActivateAndServe()
	<-started
	return s, nil
}

func labHelper(phase, state string) error {
	rc := &ResolvConf{Path: "/etc/resolv.conf", Backup: filepath.Join(state, "resolv.conf.backup")}
	recovered, err := rc.Recover()
	if err != nil {
		return err
	}
	if phase == "recover" {
		fmt.Printf("recovered %v\n", recovered)
		return nil
	}
	prev, err := rc.Previous()
	if err != nil {
		return err
	}
	for name, addr := range map[string]string{"127.0.0.1:5353": "198.18.0.77", "127.0.0.1:5354": "198.18.0.88"} {
		if _, err := labUpstream(name, addr); err != nil {
			return err
		}
	}
	r := New(Config{})
	if err := r.SetSettings(Settings{
		Domain: "mesh.internal", SearchDomains: []string{"corp.test"},
		Split:       map[string][]netip.AddrPort{"corp.test": {ap("127.0.0.1:5353")}},
		Nameservers: []netip.AddrPort{ap("127.0.0.1:5354")},
		Extra:       []Record{{Name: "printer.mesh.internal", Type: "A", Value: "198.19.50.10"}},
	}); err != nil {
		return err
	}
	r.SetOSResolvers(prev)
	r.SetSelf("a", []netip.Addr{netip.MustParseAddr("100.64.0.1")})
	r.PeerUpsert("nodekey:b", "b", []netip.Addr{netip.MustParseAddr("100.64.0.2")})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- r.ListenAndServe(ctx, "100.100.100.100:53") }()
	if err := rc.Set(context.Background(), OSConfig{Nameservers: []netip.Addr{netip.MustParseAddr("100.100.100.100")}, SearchDomains: r.SearchDomains()}); err != nil {
		return err
	}
	answers := map[string]string{}
	for _, name := range []string{"b.mesh.internal", "b", "a", "db.corp.test", "db", "www.example.test", "printer.mesh.internal", "100.64.0.2", "nobody.mesh.internal"} {
		out, _ := exec.Command("getent", "hosts", name).Output()
		answers[name] = strings.Join(strings.Fields(string(out)), " ")
	}
	json.NewEncoder(os.Stdout).Encode(answers)
	if phase == "crash" {
		fmt.Println("ready")
		select {} // the parent kills this process with SIGKILL
	}
	cancel()
	if err := <-served; err != nil {
		return err
	}
	return rc.Restore(context.Background())
}

// TestLabResolvConfInNamespace: the OS's own resolver (glibc's getent) in
// a namespace whose /etc/resolv.conf is a bind mount resolves mesh names,
// bare names through the search list, a split name, an external name
// through the global nameserver, an extra record and a reverse name; the
// file is written in place and restored on stop, and after SIGKILL by the
// next start. The host's /etc/resolv.conf is never touched.
func TestLabResolvConfInNamespace(t *testing.T) {
	l := lab.New(t)
	h, err := l.AddHost("dns", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.IP("addr add 100.100.100.100/32 dev lo"); err != nil {
		t.Fatal(err)
	}
	hostBefore, _ := os.ReadFile("/etc/resolv.conf")
	etc := filepath.Join("/etc/netns", h.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	file := filepath.Join(etc, "resolv.conf")
	const orig = "# the namespace's own\nnameserver 198.18.0.53\noptions edns0\n"
	if err := os.WriteFile(file, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	helper := func(phase string) *exec.Cmd {
		cmd := h.Command(ctx, self, "-test.run=^$")
		cmd.Env = append(os.Environ(), labHelperEnv+"="+phase, labStateEnv+"="+state)
		return cmd
	}
	check := func(answers map[string]string) {
		t.Helper()
		for name, want := range map[string]string{
			"b.mesh.internal":       "100.64.0.2 b.mesh.internal",
			"b":                     "100.64.0.2 b.mesh.internal",
			"a":                     "100.64.0.1 a.mesh.internal",
			"db.corp.test":          "198.18.0.77 db.corp.test",
			"db":                    "198.18.0.77 db.corp.test",
			"www.example.test":      "198.18.0.88 www.example.test",
			"printer.mesh.internal": "198.19.50.10 printer.mesh.internal",
			"100.64.0.2":            "100.64.0.2 b.mesh.internal",
			"nobody.mesh.internal":  "",
		} {
			if got := answers[name]; got != want {
				t.Errorf("getent hosts %s = %q, want %q", name, got, want)
			}
		}
	}

	// A clean run: configured, answered, restored.
	out, err := helper("serve").CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	var answers map[string]string
	if err := json.Unmarshal([]byte(firstLine(out)), &answers); err != nil {
		t.Fatalf("helper output %q: %v", out, err)
	}
	check(answers)
	if got, _ := os.ReadFile(file); string(got) != orig {
		t.Fatalf("not restored on stop:\n%s", got)
	}

	// Killed while running: the file stays pointed at the node, and the
	// next start puts the original back.
	cmd := helper("crash")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if sc.Text() == "ready" {
			break
		}
	}
	if len(lines) != 2 {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("crash helper said %q", lines)
	}
	json.Unmarshal([]byte(lines[0]), &answers)
	check(answers)
	during, _ := os.ReadFile(file)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if !strings.Contains(string(during), "nameserver 100.100.100.100") {
		t.Fatalf("bind-mounted file not written in place:\n%s", during)
	}
	if after, _ := os.ReadFile(file); string(after) != string(during) {
		t.Fatalf("file changed by SIGKILL:\n%s", after)
	}
	out, err = helper("recover").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "recovered true" {
		t.Fatalf("recover: %v %s", err, out)
	}
	if got, _ := os.ReadFile(file); string(got) != orig {
		t.Fatalf("not restored after SIGKILL:\n%s", got)
	}
	if hostAfter, _ := os.ReadFile("/etc/resolv.conf"); string(hostAfter) != string(hostBefore) {
		t.Fatal("the host's /etc/resolv.conf changed")
	}
}
