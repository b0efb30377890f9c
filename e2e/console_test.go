//go:build lab

package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/internal/freeport"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/tlspin"
)

// The web console in a real browser: Debian's headless Chromium, driven
// through the DevTools protocol (chromedp), against the real coordinator,
// relayd and meshnode binaries on loopback (userspace nodes: no namespace
// is needed, and the browser runs in the root namespace with them). It
// signs in with a `coordinator web login` link, reads the machine list,
// makes a key, fails a policy edit, approves a waiting node's interactive
// login, and screenshots each page: into docs/console/ when
// WIREMESH_SCREENSHOTS=1 (how the committed ones are made), else into the
// test's temp dir, so a plain test run leaves the work tree untouched.

// repoScreenshotDir is where committed screenshots live.
const repoScreenshotDir = "../docs/console"

// chromiumPath finds Chromium; without it the test skips, or fails with
// CI=true (scripts/deps.sh installs it).
func chromiumPath(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true and chromium is not installed (run scripts/deps.sh)")
	}
	t.Skip("chromium is not installed (run scripts/deps.sh)")
	return ""
}

func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		return freeport.Both(t) // relayd takes the same number on TCP too
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// loopback runs binaries on this host for one test.
type loopback struct {
	t   *testing.T
	bin string
	dir string
}

// start runs a daemon until the test ends; its stderr goes to a log shown
// when the test fails, and, if lines is set, line by line to it.
func (lb *loopback) start(name string, lines chan<- string, args ...string) *exec.Cmd {
	lb.t.Helper()
	logPath := filepath.Join(lb.dir, fmt.Sprintf("%s-%d.log", name, time.Now().UnixNano()))
	logf, err := os.Create(logPath)
	if err != nil {
		lb.t.Fatal(err)
	}
	c := exec.Command(filepath.Join(lb.bin, name), args...)
	c.Stdout = logf
	var stderr io.Reader
	if lines != nil {
		pr, pw := io.Pipe()
		c.Stderr = io.MultiWriter(logf, pw)
		stderr = pr
		lb.t.Cleanup(func() { pw.Close() })
	} else {
		c.Stderr = logf
	}
	if err := c.Start(); err != nil {
		lb.t.Fatal(err)
	}
	if stderr != nil {
		go func() {
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				select {
				case lines <- sc.Text():
				default:
				}
			}
		}()
	}
	lb.t.Cleanup(func() {
		c.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.Process.Kill()
			<-done
		}
		logf.Close()
		if lb.t.Failed() || os.Getenv("WIREMESH_TEST_LOG") == "1" {
			b, _ := os.ReadFile(logPath)
			if len(b) > 20000 {
				b = b[len(b)-20000:]
			}
			lb.t.Logf("--- %s %v log ---\n%s", name, args, b)
		}
	})
	return c
}

func (lb *loopback) run(name string, args ...string) string {
	lb.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(lb.bin, name), args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		lb.t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr)
	}
	return string(out)
}

// eventually retries f until it returns nil, for at most limit.
func eventually(t *testing.T, what string, limit time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (lb *loopback) nodes(stateDir string) []coordinator.NodeInfo {
	var nodes []coordinator.NodeInfo
	if err := json.Unmarshal([]byte(lb.run("coordinator", "nodes", "list", "--json", "--state-dir", stateDir)), &nodes); err != nil {
		lb.t.Fatal(err)
	}
	return nodes
}

func TestLabConsoleInBrowser(t *testing.T) {
	chrome := chromiumPath(t)
	lb := &loopback{t: t, bin: binaries(t), dir: t.TempDir()}
	coordDir := filepath.Join(lb.dir, "coord")
	apiPort, webPort, relayPort := freePort(t, "tcp"), freePort(t, "tcp"), freePort(t, "udp")
	coordURL := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	lb.start("coordinator", nil, "serve", "--listen", fmt.Sprintf("127.0.0.1:%d", apiPort),
		"--web-listen", fmt.Sprintf("127.0.0.1:%d", webPort), "--state-dir", coordDir)
	eventually(t, "coordinator up", 20*time.Second, func() error {
		_, err := exec.Command(filepath.Join(lb.bin, "coordinator"), "nodes", "list", "--state-dir", coordDir).Output()
		return err
	})
	joinKey := lastLine(lb.run("coordinator", "relaykey", "create", "--region", "nyc", "--region-name", "New York", "--state-dir", coordDir))
	relayAddr := fmt.Sprintf("127.0.0.1:%d", relayPort)
	lb.start("relayd", nil, "--coordinator", coordURL, "--join-key", joinKey, "--region", "nyc",
		"--listen", relayAddr, "--public-addr", relayAddr, "--state-dir", filepath.Join(lb.dir, "relay"))

	lb.run("coordinator", "users", "create", "alice@example.com", "--state-dir", coordDir)
	adminKey := lastLine(lb.run("coordinator", "authkey", "create", "--reusable", "--state-dir", coordDir))
	aliceKey := lastLine(lb.run("coordinator", "authkey", "create", "--user", "alice@example.com", "--state-dir", coordDir))
	startNode := func(name, key string, lines chan<- string, extra ...string) {
		args := []string{"run", "--coordinator", coordURL, "--hostname", name, "--state-dir", filepath.Join(lb.dir, "node-"+name),
			"--userspace", "--socks5", fmt.Sprintf("127.0.0.1:%d", freePort(t, "tcp")), "--port", "0", "--endpoint-prefixes", "127.0.0.0/8"}
		if key != "" {
			args = append(args, "--authkey", key)
		}
		lb.start("meshnode", lines, append(args, extra...)...)
	}
	startNode("web-server", adminKey, nil)
	startNode("build-box", adminKey, nil)
	startNode("alice-laptop", aliceKey, nil)
	var nodes []coordinator.NodeInfo
	eventually(t, "three nodes online", 30*time.Second, func() error {
		nodes = lb.nodes(coordDir)
		online := 0
		for _, n := range nodes {
			if n.Online {
				online++
			}
		}
		if online != 3 {
			return fmt.Errorf("%d of %d nodes online", online, len(nodes))
		}
		return nil
	})
	// Routes, approved in the browser further on. meshnode has no
	// --advertise-routes yet, so the test sends the advertisement through
	// the coordinator's node API as the node itself would: with the
	// node's own key, from its state dir. web-server and build-box both
	// offer the LAN; build-box also offers itself as an exit node.
	lan := netip.MustParsePrefix("198.19.50.0/24")
	advertiseAs := func(name string, subnets []netip.Prefix, exit bool) {
		t.Helper()
		var priv key.NodePrivate
		if err := key.ReadKeyFile(filepath.Join(lb.dir, "node-"+name, "node.key"), &priv); err != nil {
			t.Fatal(err)
		}
		actx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := coordclient.DialWithAuthKey(actx, coordURL, adminKey, priv)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Update(actx, netmap.UpdateRequest{AdvertisedRoutes: &subnets, ExitNode: &exit}); err != nil {
			t.Fatalf("advertise routes of %s: %v", name, err)
		}
	}
	advertiseAs("web-server", []netip.Prefix{lan}, false)
	advertiseAs("build-box", []netip.Prefix{lan}, true)
	policyBefore := lb.run("coordinator", "policy", "get", "--state-dir", coordDir)

	// The browser: a fresh profile, nothing that phones home.
	_, pin, err := netmap.ParseAuthKey(adminKey)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(pin, tlspin.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chrome),
		chromedp.Flag("headless", true), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true), chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("hide-scrollbars", true),
		// Trust exactly the coordinator's self-signed certificate, by the
		// pin every auth key carries (SHA-256 of its public key).
		chromedp.Flag("ignore-certificate-errors-spki-list", base64.StdEncoding.EncodeToString(spki)),
		chromedp.UserDataDir(filepath.Join(lb.dir, "chromium-profile")),
		chromedp.WindowSize(1280, 900),
	)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	ctx, cancel := context.WithTimeout(bctx, 3*time.Minute)
	defer cancel()
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		start := time.Now()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("browser: %s: %v", what, err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Logf("browser: %s took %v", what, took.Round(time.Millisecond))
		}
	}
	// text returns the text of the first element that matches the CSS
	// selector sel (a plain string would be a DOM search, which also
	// matches text: "main" would find "domain").
	text := func(what string, sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("browser: %s: %v", what, err)
		}
		return v
	}
	screenshotDir := t.TempDir()
	if os.Getenv("WIREMESH_SCREENSHOTS") == "1" {
		screenshotDir = repoScreenshotDir
	}
	if err := os.MkdirAll(screenshotDir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("browser: screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(screenshotDir, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	webURL := fmt.Sprintf("https://127.0.0.1:%d", webPort)

	// Before signing in, the console shows nothing.
	run("open without a session", chromedp.Navigate(webURL+"/machines"))
	body := text("page without a session", "main")
	if !strings.Contains(body, "Not signed in") || strings.Contains(body, "web-server") {
		t.Fatalf("machines page without a session: %q", body)
	}

	// Sign in with a `web login` link.
	link := lastLine(lb.run("coordinator", "web", "login", "--state-dir", coordDir))
	if !strings.HasPrefix(link, webURL+"/signin/") {
		t.Fatalf("web login printed %q", link)
	}
	run("sign in", chromedp.Navigate(link), chromedp.WaitVisible("#machines"))
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	body = text("machine list", "#machines")
	if loc != webURL+"/machines" {
		t.Fatalf("after sign-in the browser is at %s", loc)
	}
	for _, n := range nodes {
		if !strings.Contains(body, n.Name) || !strings.Contains(body, n.IP) {
			t.Errorf("machine list lacks %s with %s:\n%s", n.Name, n.IP, body)
		}
	}
	eventually(t, "live status counts the machines", 20*time.Second, func() error {
		count, err := chromedp.Run(ctx, chromedp.Text("#online-count"))
		if err != nil {
			return err
		}
		if count != "3 of 3 online" {
			return fmt.Errorf("online count %q", count)
		}
		return nil
	})
	run("filter", chromedp.SendKeys("#filter", "alice"))
	shown, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#machines tbody tr:not(.hidden)").length`))
	if err != nil || shown != 1 {
		t.Errorf("filter \"alice\" shows %d rows, want 1", shown)
	}
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(f => { f.value = ""; return f.dispatchEvent(new Event("input")); })(document.getElementById("filter"))`)); err != nil {
		t.Fatal(err)
	}
	shot("machines.png")

	// The one-time link does not sign in twice.
	run("reuse the link", chromedp.Navigate(link))
	body = text("reused link", "main")
	if !strings.Contains(body, "already used") {
		t.Errorf("second use of the link: %q", body)
	}

	// Relays, with the latency nodes report (a node reports what
	// `meshnode netcheck` measures).
	for _, name := range []string{"web-server", "build-box", "alice-laptop"} {
		lb.run("meshnode", "netcheck", "--state-dir", filepath.Join(lb.dir, "node-"+name))
	}
	eventually(t, "relays page shows the relay up", 30*time.Second, func() error {
		if err := chromedp.Do(ctx, chromedp.Navigate(webURL+"/relays")); err != nil {
			return err
		}
		body, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("main")))
		if err != nil {
			return err
		}
		if !strings.Contains(body, "Region nyc") || !strings.Contains(body, relayAddr) || !strings.Contains(body, "up") || !strings.Contains(body, "netcheck latency from") {
			return fmt.Errorf("relays page: %q", body)
		}
		return nil
	})
	shot("relays.png")

	// A new auth key, shown once.
	run("create a key", chromedp.Navigate(webURL+"/keys"), chromedp.WaitVisible(`form[action="/keys"]`),
		chromedp.Click(`input[name="reusable"]`), chromedp.SetValue(`input[name="expiry"]`, "24h"),
		chromedp.Click(`form[action="/keys"] button[type="submit"]`), chromedp.WaitVisible("#new-key"))
	secret := text("new key", "#new-key")
	if !strings.HasPrefix(secret, netmap.AuthKeyPrefix) {
		t.Fatalf("new key %q", secret)
	}
	if keys := lb.run("coordinator", "authkey", "list", "--state-dir", coordDir); strings.Count(keys, "\n") != 4 {
		t.Errorf("authkey list after creating one in the console:\n%s", keys)
	}
	shot("keys.png")

	// A bad policy edit: the error names its line, nothing changes.
	bad := "{\n  // Everyone may use SSH on everything.\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:22\"]},\n  ],\n  \"tests\": [\n    {\"src\": \"alice-laptop\", \"accept\": [\"web-server:443\"]},\n  ],\n}\n"
	run("bad policy", chromedp.Navigate(webURL+"/acl"), chromedp.WaitVisible("#policy"), chromedp.SetValue("#policy", bad),
		chromedp.Click(`form[action="/acl"][method="post"] button`), chromedp.WaitVisible("p.error"))
	errText := text("policy error", "p.error")
	if !strings.Contains(errText, "unchanged") || !strings.Contains(errText, "should be accepted") {
		t.Errorf("policy error shown: %q", errText)
	}
	badLine := text("error line", ".bad-line")
	if !strings.Contains(badLine, "web-server:443") {
		t.Errorf("marked line %q, want the failing test's", badLine)
	}
	if after := lb.run("coordinator", "policy", "get", "--state-dir", coordDir); after != policyBefore {
		t.Errorf("policy changed by a failing save: %q", after)
	}
	shot("acl-error.png")
	run("checker", chromedp.Navigate(webURL+"/acl?src=alice-laptop&dst=web-server&port=22"))
	answer := text("checker", "#check-result")
	if !strings.Contains(answer, "Yes: alice-laptop may reach web-server on port 22") {
		t.Errorf("checker: %q", answer)
	}

	routesList := func() map[string]coordinator.RouteInfo {
		var rs []coordinator.RouteInfo
		if err := json.Unmarshal([]byte(lb.run("coordinator", "routes", "list", "--json", "--state-dir", coordDir)), &rs); err != nil {
			t.Fatal(err)
		}
		out := map[string]coordinator.RouteInfo{}
		for _, r := range rs {
			out[r.Node+" "+r.Prefix] = r
		}
		return out
	}
	if r := routesList()["web-server "+lan.String()]; !r.Advertised || r.Approved {
		t.Fatalf("routes list before approval: %+v", r)
	}
	row := `tr[data-node="web-server"][data-prefix="198.19.50.0/24"]`
	run("approve a route", chromedp.Navigate(webURL+"/routes"), chromedp.WaitVisible(row),
		chromedp.Click(row+` button.approve`), chromedp.WaitVisible("p.notice"))
	if n := text("route approved", "p.notice"); !strings.Contains(n, "web-server: 198.19.50.0/24 approved") {
		t.Errorf("after approving: %q", n)
	}
	if r := routesList()["web-server "+lan.String()]; !r.Approved || !r.Primary {
		t.Errorf("routes list after approving in the browser: %+v", r)
	}
	if r := routesList()["build-box "+lan.String()]; r.Approved {
		t.Errorf("build-box's route approved too: %+v", r)
	}
	if p := text("primary", row+" td.primary"); p != "primary" {
		t.Errorf("web-server's route shows primary %q", p)
	}
	// The exit node, from the machines page.
	run("approve an exit node", chromedp.Navigate(webURL+"/machines"), chromedp.WaitVisible(`tr[data-name="build-box"]`),
		chromedp.Click(`tr[data-name="build-box"] details summary`),
		chromedp.Click(`tr[data-name="build-box"] button.approve-exit`), chromedp.WaitVisible("p.notice"))
	if r := routesList()["build-box 0.0.0.0/0"]; !r.Approved || !r.Primary {
		t.Errorf("routes list after approving the exit node in the browser: %+v", r)
	}
	if e := text("exit node column", `tr[data-name="build-box"] td.exit`); e != "offered, approved" {
		t.Errorf("build-box's exit node column: %q", e)
	}
	run("routes page", chromedp.Navigate(webURL+"/routes"), chromedp.WaitVisible("#routes"))
	shot("routes.png")

	// DNS: a bad value is shown beside its field and changes nothing; a
	// good save reaches a real node's resolver.
	dnsBefore := lb.run("coordinator", "dns", "get", "--state-dir", coordDir)
	run("bad DNS settings", chromedp.Navigate(webURL+"/dns"), chromedp.WaitVisible("#dns-form"),
		chromedp.SetValue("#domain", "lab.test"),
		chromedp.SetValue("#nameservers", "198.18.0.53\n198.18.0.300"),
		chromedp.SetValue("#split", "corp.test 198.18.0.54"),
		chromedp.SetValue("#extra_records", "printer.lab.test A 198.19.50.10"),
		chromedp.Click("#dns-save"), chromedp.WaitVisible("#err-nameservers"))
	if e := text("nameserver error", "#err-nameservers"); e != `line 2: "198.18.0.300" is not an IP address (or ip:53)` {
		t.Errorf("error beside the nameservers: %q", e)
	}
	if after := lb.run("coordinator", "dns", "get", "--state-dir", coordDir); after != dnsBefore {
		t.Errorf("a refused DNS save changed the settings: %s", after)
	}
	shot("dns-error.png")
	run("good DNS settings", chromedp.SetValue("#nameservers", "198.18.0.53"), chromedp.Click("#dns-save"), chromedp.WaitVisible("p.notice"))
	var got struct {
		Domain       string `json:"domain"`
		ExtraRecords []struct {
			Name, Value string
		} `json:"extra_records"`
	}
	if err := json.Unmarshal([]byte(lb.run("coordinator", "dns", "get", "--state-dir", coordDir)), &got); err != nil {
		t.Fatal(err)
	}
	if got.Domain != "lab.test" || len(got.ExtraRecords) != 1 || got.ExtraRecords[0].Value != "198.19.50.10" {
		t.Errorf("coordinator dns get after the console's save: %+v", got)
	}
	shot("dns.png")
	buildBox := filepath.Join(lb.dir, "node-build-box")
	eventually(t, "the DNS change reaches build-box's resolver", 10*time.Second, func() error {
		var st localapi.Status
		if err := json.Unmarshal([]byte(lb.run("meshnode", "status", "--json", "--state-dir", buildBox)), &st); err != nil {
			return err
		}
		if st.DNS == nil || st.DNS.Domain != "lab.test" {
			return fmt.Errorf("status dns %+v", st.DNS)
		}
		var a localapi.DNSAnswer
		if err := json.Unmarshal([]byte(lb.run("meshnode", "dns", "query", "--json", "--state-dir", buildBox, "printer.lab.test")), &a); err != nil {
			return err
		}
		if a.Source != "extra" || len(a.Answers) != 1 || !strings.HasSuffix(a.Answers[0], "198.19.50.10") {
			return fmt.Errorf("printer.lab.test: %+v", a)
		}
		return nil
	})
	var webIP string
	for _, n := range nodes {
		if n.Name == "web-server" {
			webIP = n.IP
		}
	}
	var a localapi.DNSAnswer
	if err := json.Unmarshal([]byte(lb.run("meshnode", "dns", "query", "--json", "--state-dir", buildBox, "web-server.lab.test")), &a); err != nil {
		t.Fatal(err)
	}
	if a.Source != "mesh" || len(a.Answers) != 1 || !strings.HasSuffix(a.Answers[0], webIP) {
		t.Errorf("web-server.lab.test from build-box: %+v, want %s", a, webIP)
	}

	// Interactive login: a node with no auth key prints a link; approving
	// it in the browser registers it and it comes online.
	lines := make(chan string, 64)
	startNode("new-laptop", "", lines, "--coordinator-pin", pin)
	var loginURL string
	for loginURL == "" {
		select {
		case l := <-lines:
			if u, ok := strings.CutPrefix(l, "To authenticate, visit: "); ok {
				loginURL = u
			}
		case <-time.After(30 * time.Second):
			t.Fatal("meshnode never printed \"To authenticate, visit: URL\"")
		}
	}
	run("approval page", chromedp.Navigate(loginURL), chromedp.WaitVisible("#approve"))
	host := text("approval page", "#login-hostname")
	if host != "new-laptop" {
		t.Errorf("approval page shows hostname %q", host)
	}
	shot("login.png")
	run("approve", chromedp.Click("#approve"), chromedp.WaitVisible("p.message"))
	body = text("approved", "p.message")
	if !strings.Contains(body, "approved") {
		t.Errorf("after approving: %q", body)
	}
	eventually(t, "approved node online", 30*time.Second, func() error {
		for _, n := range lb.nodes(coordDir) {
			if n.Hostname == "new-laptop" && n.Online && n.User == "admin@" {
				return nil
			}
		}
		return fmt.Errorf("new-laptop is not online as admin@")
	})
	run("machines with the new node", chromedp.Navigate(webURL+"/machines"), chromedp.WaitVisible(`tr[data-name="new-laptop"]`))
	status := text("new node's status", `tr[data-name="new-laptop"] td.status`)
	if status != "online" {
		t.Errorf("new-laptop's status in the browser: %q", status)
	}

	// No page is wider than the screen, on a desktop or a phone.
	for _, width := range []int{1280, 390} {
		run(fmt.Sprintf("%d px wide", width), chromedp.EmulateViewport(int64(width), 900))
		for _, p := range []string{"/machines", "/relays", "/keys", "/dns", "/acl", "/routes", "/audit"} {
			run(fmt.Sprintf("%s at %d px", p, width), chromedp.Navigate(webURL+p), chromedp.WaitVisible(chromedp.CSS("main")))
			wide, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.documentElement.scrollWidth`))
			if err != nil {
				t.Fatal(err)
			}
			if wide > width {
				t.Errorf("%s is %d px wide on a %d px screen", p, wide, width)
			}
			switch {
			case width == 390 && p == "/machines":
				shot("machines-phone.png")
			case width == 390 && p == "/dns":
				shot("dns-phone.png")
			}
		}
	}
	run("desktop width", chromedp.EmulateViewport(1280, 900))
	run("audit log", chromedp.Navigate(webURL+"/audit"))
	body = text("audit log", "main")
	for _, want := range []string{"cli", "users create", "authkey create", "web login", "console:admin@", "web sign in", "login approve", "routes approve", "dns set"} {
		if !strings.Contains(body, want) {
			t.Errorf("audit log lacks %q:\n%s", want, body)
		}
	}
	shot("audit.png")
}
