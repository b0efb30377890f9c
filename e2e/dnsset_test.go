//go:build lab

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/internal/poll"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// dnsSet runs `coordinator dns set` with doc as the file.
func (w *world) dnsSet(t *testing.T, doc string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "dns.hujson")
	if err := os.WriteFile(f, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := w.run("coordinator", "dns", "set", f, "--state-dir", w.coordDir); err != nil {
		t.Fatalf("coordinator dns set: %v %s", err, out)
	}
}

// TestLabMagicDNSSettings: the coordinator's DNS settings (`coordinator dns
// set`) reach the OS's resolver on a kernel-mode node: a split suffix served
// by a real DNS server in another namespace (by full name and, through the
// search domains, by its first label), an extra record inside the mesh
// domain and a CNAME outside it, an external name through the global
// nameserver; a changed setting shows in getent within 5 s; a userspace
// node's SOCKS5 proxy reaches a split name (curl --socks5-hostname).
func TestLabMagicDNSSettings(t *testing.T) {
	w := newWorld(t, "nyc")
	upstream, err := w.l.AddHost("dns", nil)
	if err != nil {
		t.Fatal(err)
	}
	dnsServer(t, upstream.Namespace, upstream.Addr, map[string]string{"www.example.test.": "198.18.77.7"})
	corp, err := w.l.AddHost("corp", nil)
	if err != nil {
		t.Fatal(err)
	}
	ah := hardNATHost(t, w, "a")
	file := netnsResolvConf(t, ah, "nameserver "+upstream.Addr.String()+"\n")
	a := w.startNode("a", ah, "--accept-dns")
	b := w.startNode("b", hardNATHost(t, w, "b"))
	uh := hardNATHost(t, w, "u")
	u := w.startNode("u", uh, "--userspace", "--socks5", "127.0.0.1:1080")
	for _, n := range []*node{a, b, u} {
		n.waitStatus("two peers", func(st localapi.Status) bool { return len(st.Peers) == 2 })
	}
	bIP := b.ip()
	// The corporate DNS server knows db.corp.test: a service on b.
	dnsServer(t, corp.Namespace, corp.Addr, map[string]string{"db.corp.test.": bIP.String()})

	settings := func(printer string) string {
		return fmt.Sprintf(`{
  // HuJSON, as an operator writes it
  "magic_dns": true, "domain": "mesh.test",
  "nameservers": [%q],
  "search_domains": ["corp.test"],
  "split": {"corp.test": [%q]},
  "extra_records": [
    {"name": "printer.mesh.test", "type": "A", "value": %q},
    {"name": "files.outside.test", "type": "CNAME", "value": "b.mesh.test"},
  ],
}`, upstream.Addr, corp.Addr, printer)
	}
	w.dnsSet(t, settings("198.19.50.10"))
	a.waitStatus("the mesh domain", func(st localapi.Status) bool { return st.DNS != nil && st.DNS.Domain == "mesh.test" })
	waitGetent(t, ah, "printer.mesh.test", "198.19.50.10 printer.mesh.test", poll.DefaultTimeout)
	if got := readFile(t, file); !strings.Contains(got, "search mesh.test corp.test") {
		t.Errorf("search list not in resolv.conf:\n%s", got)
	}
	for name, want := range map[string]string{
		"db.corp.test":       bIP.String() + " db.corp.test",
		"db":                 bIP.String() + " db.corp.test",
		"files.outside.test": bIP.String() + " b.mesh.test", // glibc prints the CNAME target
		"www.example.test":   "198.18.77.7 www.example.test",
		"nobody.corp.test":   "",
	} {
		if got := getent(ah, name); got != want {
			t.Errorf("getent hosts %s = %q, want %q", name, got, want)
		}
	}
	out, err := w.run("meshnode", "dns", "query", "--json", "--state-dir", a.dir, "db.corp.test")
	if err != nil || !strings.Contains(out, `"source":"split"`) {
		t.Errorf("meshnode dns query db.corp.test: %v %s", err, out)
	}

	// A change reaches the OS's resolver within 5 s.
	w.dnsSet(t, settings("198.19.50.11"))
	took := waitGetent(t, ah, "printer.mesh.test", "198.19.50.11 printer.mesh.test", 5*time.Second)
	t.Logf("dns set visible through getent after %v", took)

	// Userspace: SOCKS5 resolves the split name through MagicDNS.
	ln, err := b.host.Listen(netip.AddrPortFrom(bIP, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go greet(ln, "hello from db")
	var got []byte
	if !poll.Wait(20*time.Second, func() bool {
		got = curlSocks(uh, "http://db.corp.test:8080/")
		return string(got) == "hello from db"
	}) {
		t.Fatalf("curl --socks5-hostname db.corp.test from u: %q", got)
	}
}
