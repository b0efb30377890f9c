//go:build lab

package e2e

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// consoleRename renames a machine the way an admin does, through the web
// console: a `coordinator web login` link signs in, and the machines
// page's rename form (with its CSRF token) is posted.
func consoleRename(t *testing.T, w *world, webURL, from, to string) {
	t.Helper()
	link := lastLine(mustRun(t, w, "coordinator", "web", "login", "--state-dir", w.coordDir))
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 10 * time.Second, Transport: &http.Transport{
		// The coordinator's self-signed certificate; the test talks to
		// its own lab host only.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return w.coord.Namespace.Dial(ctx, network, addr)
		},
	}}
	resp, err := hc.Get(link)
	if err != nil {
		t.Fatalf("sign in: %v", err)
	}
	page, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	m := csrfField.FindSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token on %s: %d %.300s", resp.Request.URL, resp.StatusCode, page)
	}
	resp, err = hc.PostForm(webURL+"/machines/"+from+"/rename", url.Values{"csrf": {string(m[1])}, "to": {to}})
	if err != nil {
		t.Fatalf("rename: %v", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), from+" renamed to "+to) {
		t.Fatalf("rename %s to %s: %d %.500s", from, to, resp.StatusCode, body)
	}
}

func mustRun(t *testing.T, w *world, name string, args ...string) string {
	t.Helper()
	out, err := w.run(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLabMagicDNSRename: a machine renamed in the web console resolves
// under its new name through the OS's resolver (getent) on a kernel-mode
// peer within 10 s, and its old name no longer does.
func TestLabMagicDNSRename(t *testing.T) {
	w := newWorld(t, "nyc")
	web := netip.AddrPortFrom(w.coord.Addr, 8444).String()
	webURL := "https://" + web
	w.coordArgs = []string{"--dns-domain", "mesh.test", "--web-listen", web}
	w.stopCoordinator()
	w.startCoordinator(w.relayMap)
	ah := hardNATHost(t, w, "a")
	netnsResolvConf(t, ah, "nameserver 198.18.0.53\n")
	a := w.startNode("a", ah, "--accept-dns")
	b := w.startNode("b", hardNATHost(t, w, "b"))
	for _, n := range []*node{a, b} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	bIP := b.ip()
	waitGetent(t, ah, "b", bIP.String()+" b.mesh.test", 10*time.Second)
	consoleRename(t, w, webURL, "b", "bee")
	took := waitGetent(t, ah, "bee", bIP.String()+" bee.mesh.test", 10*time.Second)
	t.Logf("renamed peer resolvable through getent after %v", took)
	if got := getent(ah, "b.mesh.test"); got != "" {
		t.Fatalf("the old name still resolves: %q", got)
	}
}
