//go:build lab

package e2e

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/wiremesh/wiremesh/internal/poll"
	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// dnsServer is a real DNS server (miekg/dns, UDP and TCP) inside ns on
// addr:53: A records by name, NXDOMAIN for any other name.
func dnsServer(t *testing.T, ns *lab.Namespace, addr netip.Addr, records map[string]string) {
	t.Helper()
	hp := netip.AddrPortFrom(addr, 53).String()
	pc, err := ns.ListenUDP(hp)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := ns.Listen(hp)
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(req)
		if len(req.Question) != 1 {
			m.Rcode = mdns.RcodeFormatError
			w.WriteMsg(m)
			return
		}
		q := req.Question[0]
		a, ok := records[strings.ToLower(q.Name)]
		switch {
		case !ok:
			m.Rcode = mdns.RcodeNameError
		case q.Qtype == mdns.TypeA:
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 30},
				A: net.ParseIP(a).To4()})
		}
		w.WriteMsg(m)
	})
	for _, s := range []*mdns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
		t.Cleanup(func() { s.Shutdown() })
	}
}

// netnsResolvConf gives h's namespace its own /etc/resolv.conf
// (/etc/netns/NS/resolv.conf, which `ip netns exec` bind-mounts), so
// nothing run there can touch the host's file. It must exist before the
// node starts.
func netnsResolvConf(t *testing.T, h *lab.Host, content string) string {
	t.Helper()
	dir := filepath.Join("/etc/netns", h.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	file := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// getent runs glibc's resolver (getent hosts) in h's namespace: the OS's
// own resolver, through the namespace's resolv.conf. It returns the first
// line's address and name, or "" when the name does not resolve.
func getent(h *lab.Host, name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := h.Command(ctx, "getent", "hosts", name).Output()
	if err != nil {
		return ""
	}
	f := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
	if len(f) < 2 {
		return ""
	}
	return f[0] + " " + f[1]
}

// waitGetent waits (up to within) until getent hosts name gives want.
func waitGetent(t *testing.T, h *lab.Host, name, want string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var got string
	if !poll.Wait(within, func() bool { got = getent(h, name); return got == want }) {
		t.Fatalf("getent hosts %s = %q after %v, want %q", name, got, within, want)
	}
	return time.Since(start)
}

// curlSocks fetches url with curl through the SOCKS5 proxy on
// 127.0.0.1:1080 in h's namespace, the proxy resolving the name
// (--socks5-hostname). The servers answer with a bare greeting (HTTP/0.9).
func curlSocks(h *lab.Host, url string) []byte {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := h.Command(ctx, "curl", "-s", "--http0.9", "--max-time", "8", "--socks5-hostname", "127.0.0.1:1080", url).Output()
	return out
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestLabMagicDNS runs real binaries: node a in kernel TUN mode in a
// namespace with its own resolv.conf, b and c in TUN mode without MagicDNS,
// u in userspace. glibc (getent), not the node's API, resolves on a: peer
// names with and without the domain, this node's own name, reverse names
// of mesh addresses, an external name through the global nameserver (a
// DNS server in another namespace), and, after the coordinator's settings
// change, the global nameserver on b's mesh address (a Pi-hole on a
// peer, reached through the tunnel, from a's kernel TUN and from u's
// netstack). A new peer resolves within 10 s and
// a deleted one stops. Another program fighting over the file raises the
// DNS health warning. Stopping a restores the file; so does a start and
// stop after SIGKILL. u's SOCKS5 proxy resolves mesh names through the
// resolver (curl --socks5-hostname). The host's /etc/resolv.conf never
// changes.
func TestLabMagicDNS(t *testing.T) {
	hostBefore, _ := os.ReadFile("/etc/resolv.conf")
	w := newWorld(t, "nyc")
	// The internet's DNS server, the mesh's global nameserver.
	upstream, err := w.l.AddHost("dns", nil)
	if err != nil {
		t.Fatal(err)
	}
	dnsServer(t, upstream.Namespace, upstream.Addr, map[string]string{"www.example.test.": "198.18.77.7"})
	w.coordArgs = []string{"--dns-domain", "mesh.test", "--dns-nameservers", upstream.Addr.String()}
	w.stopCoordinator()
	w.startCoordinator(w.relayMap)

	ah := hardNATHost(t, w, "a")
	// The OS's own resolver before the node: a server that knows one
	// name the mesh's nameserver does not.
	osDNS, err := w.l.AddHost("osdns", nil)
	if err != nil {
		t.Fatal(err)
	}
	dnsServer(t, osDNS.Namespace, osDNS.Addr, map[string]string{"old.example.test.": "198.18.66.6"})
	orig := "# a's own\nnameserver " + osDNS.Addr.String() + "\noptions edns0\n"
	file := netnsResolvConf(t, ah, orig)
	if got := getent(ah, "old.example.test"); got != "198.18.66.6 old.example.test" {
		t.Fatalf("the namespace's own resolver does not work: %q", got)
	}

	a := w.startNode("a", ah, "--accept-dns")
	b := w.startNode("b", hardNATHost(t, w, "b"))
	uh := hardNATHost(t, w, "u")
	u := w.startNode("u", uh, "--userspace", "--socks5", "127.0.0.1:1080")
	for _, n := range []*node{a, b, u} {
		n.waitStatus("two peers", func(st localapi.Status) bool { return len(st.Peers) == 2 })
	}
	aIP, bIP := a.ip(), b.ip()
	st := a.waitStatus("dns mode file", func(st localapi.Status) bool {
		return st.DNS != nil && st.DNS.Mode == "file" && st.DNS.Domain == "mesh.test"
	})
	if st.DNS.Health != "" {
		t.Fatalf("dns health warning: %s", st.DNS.Health)
	}
	if bst, _ := b.status(); bst.DNS == nil || bst.DNS.Mode != "off" {
		t.Fatalf("b (--accept-dns=false) dns status %+v", bst.DNS)
	}
	if ust, _ := u.status(); ust.DNS == nil || ust.DNS.Mode != "userspace" {
		t.Fatalf("u dns status %+v", ust.DNS)
	}
	if got := readFile(t, file); !strings.Contains(got, "nameserver 100.100.100.100") || !strings.Contains(got, "search mesh.test") {
		t.Fatalf("resolv.conf not pointed at the node:\n%s", got)
	}

	bWant := bIP.String() + " b.mesh.test"
	waitGetent(t, ah, "b.mesh.test", bWant, 10*time.Second)
	for name, want := range map[string]string{
		"b":                bWant,
		"a.mesh.test":      aIP.String() + " a.mesh.test",
		bIP.String():       bWant, // PTR through glibc
		"www.example.test": "198.18.77.7 www.example.test",
		"nobody.mesh.test": "",
	} {
		if got := getent(ah, name); got != want {
			t.Errorf("getent hosts %s = %q, want %q", name, got, want)
		}
	}
	// The node's API says which source answered.
	for _, q := range []struct{ name, typ, source string }{
		{"b", "A", "mesh"}, {bIP.String(), "PTR", "ptr"}, {"www.example.test", "A", "global"},
	} {
		name := q.name
		if q.typ == "PTR" {
			name, _ = mdns.ReverseAddr(q.name)
		}
		out, err := w.run("meshnode", "dns", "query", "--json", "--state-dir", a.dir, name, q.typ)
		if err != nil || !strings.Contains(out, `"source":"`+q.source+`"`) || !strings.Contains(out, `"rcode":"NOERROR"`) {
			t.Errorf("meshnode dns query %s %s: %v %s", name, q.typ, err, out)
		}
	}

	// A peer that joins resolves within 10 s; deleted, it stops.
	c := w.startNode("c", hardNATHost(t, w, "c"))
	cIP := c.ip()
	took := waitGetent(t, ah, "c", cIP.String()+" c.mesh.test", 10*time.Second)
	t.Logf("new peer c resolvable on a %v after its address was known", took)
	c.stop()
	if _, err := w.run("coordinator", "nodes", "delete", "c", "--state-dir", w.coordDir); err != nil {
		t.Fatal(err)
	}
	waitGetent(t, ah, "c.mesh.test", "", 10*time.Second)

	// SOCKS5 in userspace mode resolves through MagicDNS: a service on
	// b's mesh address by name.
	ln, err := b.host.Listen(netip.AddrPortFrom(bIP, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go greet(ln, "hello from b")
	for _, url := range []string{"http://b.mesh.test:8080/", "http://b:8080/"} {
		var out []byte
		if !poll.Wait(20*time.Second, func() bool {
			out = curlSocks(uh, url)
			return string(out) == "hello from b"
		}) {
			t.Fatalf("curl --socks5-hostname %s from u: %q", url, out)
		}
	}

	// The Pi-hole case: the global nameserver is a DNS server on b's mesh
	// address, reached from a through the tunnel.
	dnsServer(t, b.host.Namespace, bIP, map[string]string{"ads.example.test.": "198.18.99.9"})
	w.coordArgs = []string{"--dns-domain", "mesh.test", "--dns-nameservers", bIP.String()}
	w.stopCoordinator()
	w.startCoordinator(w.relayMap)
	waitGetent(t, ah, "ads.example.test", "198.18.99.9 ads.example.test", poll.DefaultTimeout)
	if got := getent(ah, "www.example.test"); got != "" {
		t.Errorf("the old global nameserver still answers: %q", got)
	}
	// The userspace node reaches the same Pi-hole through its netstack.
	var out string
	if !poll.Wait(poll.DefaultTimeout, func() bool {
		out, _ = w.run("meshnode", "dns", "query", "--json", "--state-dir", u.dir, "ads.example.test")
		return strings.Contains(out, `"source":"global"`) && strings.Contains(out, "198.18.99.9")
	}) {
		t.Errorf("userspace node through the Pi-hole on b: %s", out)
	}

	// Another program keeps rewriting the file: the node re-applies it a
	// bounded number of times, then gives up and raises the DNS health
	// warning (status and meshnode_health_warnings{kind="dns"}).
	const foreign = "# written by another program\nnameserver 198.18.66.6\n"
	fought := false
	for i := 0; i < 12 && !fought; i++ {
		if err := os.WriteFile(file, []byte(foreign), 0o644); err != nil {
			t.Fatal(err)
		}
		poll.Wait(10*time.Second, func() bool {
			if st, err := a.status(); err == nil && st.DNS != nil && st.DNS.Health != "" {
				fought = true
				return true
			}
			return strings.Contains(readFile(t, file), "100.100.100.100")
		})
	}
	if !fought {
		t.Fatal("no DNS health warning after 12 rewrites by another program")
	}
	if out, err := w.run("meshnode", "status", "--state-dir", a.dir); err != nil || !strings.Contains(out, "dns file  domain mesh.test  warning: ") {
		t.Errorf("meshnode status does not show the DNS warning: %v\n%s", err, out)
	}
	if m := metricsOf(a.host.Namespace, "http://127.0.0.1:9100/metrics", `meshnode_health_warnings{kind="dns"}`); !strings.Contains(m, "} 1") {
		t.Errorf("metric: %q", m)
	}
	if got := readFile(t, file); got != foreign {
		t.Errorf("the node kept fighting for the file:\n%s", got)
	}

	// Stop: the original file comes back.
	a.stop()
	if got := readFile(t, file); got != orig {
		t.Fatalf("resolv.conf not restored on stop:\n%s", got)
	}
	if got := getent(ah, "old.example.test"); got != "198.18.66.6 old.example.test" {
		t.Fatalf("the OS's resolver after stop: %q", got)
	}

	// SIGKILL leaves the file pointed at the node (and its backup in the
	// state directory); the next start restores it first, the stop after
	// it restores it again.
	a.start()
	a.waitStatus("dns again", func(st localapi.Status) bool { return st.DNS != nil && st.DNS.Mode == "file" })
	if !poll.Wait(10*time.Second, func() bool { return strings.Contains(readFile(t, file), "100.100.100.100") }) {
		t.Fatalf("not pointed at the node after restart:\n%s", readFile(t, file))
	}
	a.cmd.Process.Signal(syscall.SIGKILL)
	a.cmd.Wait()
	if got := readFile(t, file); !strings.Contains(got, "100.100.100.100") {
		t.Fatalf("file changed by SIGKILL:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(a.dir, "resolv.conf.backup")); err != nil {
		t.Fatalf("no backup in the state directory after SIGKILL: %v", err)
	}
	a.start()
	a.waitStatus("dns after the crash", func(st localapi.Status) bool { return st.DNS != nil && st.DNS.Mode == "file" })
	waitGetent(t, ah, "b", bWant, poll.DefaultTimeout)
	a.stop()
	if got := readFile(t, file); got != orig {
		t.Fatalf("resolv.conf not restored after SIGKILL, start and stop:\n%s", got)
	}
	if _, err := os.Stat(filepath.Join(a.dir, "resolv.conf.backup")); err == nil {
		t.Fatal("backup left in the state directory after a clean stop")
	}
	if hostAfter, _ := os.ReadFile("/etc/resolv.conf"); string(hostAfter) != string(hostBefore) {
		t.Fatal("the host's /etc/resolv.conf changed")
	}
}
