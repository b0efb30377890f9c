//go:build lab

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/dashboards"
	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// Live dashboard check: Debian's prometheus scrapes every daemon of a lab
// mesh, and every panel's query must be valid and return series with
// values. Prometheus runs in the root namespace on loopback; each daemon's
// metrics endpoint (inside its namespace) is reached through a small TCP
// forwarder the test owns.

// scrapeInterval is short so rate() windows fill within seconds.
const scrapeInterval = "1s"

// forward listens on 127.0.0.1 in the root namespace and forwards each
// connection to addr inside ns, until the test ends.
func forward(t *testing.T, ns *lab.Namespace, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				u, err := ns.Dial(ctx, "tcp4", addr)
				cancel()
				if err != nil {
					return
				}
				defer u.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				u.SetDeadline(time.Now().Add(30 * time.Second))
				go func() { io.Copy(u, c); u.Close() }()
				io.Copy(c, u)
			}()
		}
	}()
	return ln.Addr().String()
}

// target is one scrape target: a job, an instance name, and the
// forwarder's address.
type target struct{ job, instance, addr string }

// startPrometheus runs Debian's prometheus as a plain process with its own
// config and storage in a temp dir, and returns its base URL.
func startPrometheus(t *testing.T, targets []target) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true and prometheus is missing (scripts/deps.sh installs it)")
		}
		t.Skip("prometheus missing: run make deps")
	}
	dir := t.TempDir()
	var cfg strings.Builder
	rules, err := filepath.Abs("../dashboards/wiremesh.rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&cfg, "global:\n  scrape_interval: %s\n  evaluation_interval: %s\nrule_files: [%q]\nscrape_configs:\n",
		scrapeInterval, scrapeInterval, rules)
	jobs := map[string][]target{}
	var order []string
	for _, tg := range targets {
		if _, ok := jobs[tg.job]; !ok {
			order = append(order, tg.job)
		}
		jobs[tg.job] = append(jobs[tg.job], tg)
	}
	for _, job := range order {
		fmt.Fprintf(&cfg, "  - job_name: %s\n    static_configs:\n", job)
		for _, tg := range jobs[job] {
			fmt.Fprintf(&cfg, "      - targets: [%q]\n        labels: {instance: %q}\n", tg.addr, tg.instance)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	logf, err := os.Create(filepath.Join(dir, "prometheus.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr,
		"--storage.tsdb.retention.time=1h", "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("--- prometheus log ---\n%s", b)
		}
	})
	base := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return base
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sample is one series of an instant query's result.
type sample struct {
	Metric map[string]string
	Value  float64
}

// errNoSeries: the query is valid and returned nothing, or only NaN
// (a quantile over a histogram that saw nothing).
var errNoSeries = errors.New("no series with a value")

// promQuery runs expr as an instant query. It returns an error when
// Prometheus rejects the query, and errNoSeries when nothing came back.
func promQuery(base, expr string) ([]sample, error) {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("decoding the answer: %w", err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("invalid query: %s", r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("result type %s, want vector", r.Data.ResultType)
	}
	var out []sample
	for _, s := range r.Data.Result {
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil || math.IsNaN(v) {
			continue
		}
		out = append(out, sample{s.Metric, v})
	}
	if len(out) == 0 {
		return nil, errNoSeries
	}
	return out, nil
}

// checkBoards runs every panel query of boards (variables substituted) and
// the label_values queries behind the variables, and returns one error per
// query that is invalid or returns no series.
func checkBoards(base string, boards []dashboards.Board) []error {
	var errs []error
	for _, b := range boards {
		for _, p := range b.Panels {
			for _, q := range p.Queries {
				expr := dashboards.Substitute(q.Expr, dashboards.Variables())
				if _, err := promQuery(base, expr); err != nil {
					errs = append(errs, fmt.Errorf("%s: panel %q: %s: %w", b.File, p.Title, expr, err))
				}
			}
		}
	}
	for _, v := range dashboards.VariableQueries() {
		res, err := promQuery(base, fmt.Sprintf("count by (%s) (%s)", v.Label, v.Metric))
		if err == nil && res[0].Metric[v.Label] == "" {
			err = errNoSeries
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("variable %s: label_values(%s, %s): %w", v.Name, v.Metric, v.Label, err))
		}
	}
	return errs
}

// waitUp waits until query (an up filter) returns want series.
func waitUp(t *testing.T, prom, query string, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := promQuery(prom, query)
		if err == nil && len(res) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d targets, want %d: %v %v", query, len(res), want, res, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// promRule is one rule of /api/v1/rules.
type promRule struct {
	Name      string `json:"name"`
	Type      string `json:"type"` // "recording" or "alerting"
	Health    string `json:"health"`
	LastError string `json:"lastError"`
	State     string `json:"state"` // alerts: inactive, pending, firing
}

// promRules returns the rules prometheus loaded, once each has been
// evaluated at least once.
func promRules(base string) ([]promRule, error) {
	resp, err := http.Get(base + "/api/v1/rules")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Data struct {
			Groups []struct {
				Rules []promRule `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err
	}
	var out []promRule
	for _, g := range r.Data.Groups {
		out = append(out, g.Rules...)
	}
	return out, nil
}

// valueOf returns the sum of the samples whose label has value.
func valueOf(res []sample, label, value string) float64 {
	var sum float64
	for _, s := range res {
		if s.Metric[label] == value {
			sum += s.Value
		}
	}
	return sum
}

// TestLabDashboardsLive builds a mesh of a coordinator, relays in two
// regions, a direct pair (a, b behind easy NATs) and a relayed pair (c, d
// behind hard NATs) with traffic on both, scrapes every daemon with
// prometheus, and runs every dashboard query against it. Beyond "returns a
// series", the path panels must show both paths carrying traffic. The
// broken_panel subtest proves the check fails on a broken panel.
func TestLabDashboardsLive(t *testing.T) {
	w := newWorld(t, "nyc", "fra")
	hosts := map[string]*lab.Host{"a": easy.host(t, w, "a"), "b": easy.host(t, w, "b"),
		"c": hardNATHost(t, w, "c"), "d": hardNATHost(t, w, "d")}
	names := []string{"a", "b", "c", "d"}

	// Prometheus scrapes from before the nodes start, so registrations,
	// fan-out and the first path upgrades fall inside its data.
	targets := []target{{"coordinator", "coord", forward(t, w.coord.Namespace, "127.0.0.1:9100")}}
	for _, r := range w.relays {
		targets = append(targets, target{"relayd", "relay-" + r.Region,
			forward(t, r.Host.Namespace, r.Host.Addr.String()+":9100")})
	}
	for _, name := range names {
		targets = append(targets, target{"meshnode", name, forward(t, hosts[name].Namespace, "127.0.0.1:9100")})
	}
	prom := startPrometheus(t, targets)
	// The coordinator and relays are scraped before any node registers, and
	// every node is scraped before any traffic flows: a counter's first
	// sample is its baseline, so what happens before it never shows in
	// rate() or increase().
	waitUp(t, prom, `up{job!="meshnode"} == 1`, 1+len(w.relays))

	var nodes []*node
	for _, name := range names {
		nodes = append(nodes, w.startNode(name, hosts[name]))
	}
	a, b, c, d := nodes[0], nodes[1], nodes[2], nodes[3]
	for _, n := range nodes {
		n.waitStatus("three peers", func(st localapi.Status) bool { return len(st.Peers) == 3 })
	}

	waitUp(t, prom, `up == 1`, len(targets))

	// Traffic: a→b goes direct, c→d stays relayed. Pings keep both paths
	// busy while the panels are checked (a direct path lapses to the
	// relay once traffic stops).
	bIP, dIP := b.ip(), d.ip()
	if err := a.ping(bIP, 3); err != nil {
		t.Fatal(err)
	}
	if err := c.ping(dIP, 3); err != nil {
		t.Fatal(err)
	}
	a.waitStatus("direct path to b", func(st localapi.Status) bool {
		p, ok := peerOf(st, "b")
		return ok && p.Path == "direct"
	})
	c.waitStatus("relay path to d", func(st localapi.Status) bool {
		p, ok := peerOf(st, "d")
		return ok && p.Path == "relay"
	})
	transfer(t, a, b, bIP, 2<<20)
	transfer(t, c, d, dIP, 2<<20)
	for _, pair := range [][2]*node{{a, b}, {c, d}} {
		ctx, cancel := context.WithCancel(context.Background())
		// Bounded: at most 400 pings (2 per second for 200 s).
		ping := pair[0].host.Command(ctx, "ping", "-q", "-i", "0.5", "-c", "400", pair[1].ip().String())
		if err := ping.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); ping.Wait() })
	}

	// Queries over rate windows need a few scrapes after the traffic;
	// retry until every query answers or the deadline passes.
	deadline := time.Now().Add(45 * time.Second)
	var errs []error
	for {
		if errs = checkBoards(prom, dashboards.Boards()); len(errs) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	for _, err := range errs {
		t.Error(err)
	}
	queries := 0
	for _, bd := range dashboards.Boards() {
		for _, p := range bd.Panels {
			queries += len(p.Queries)
		}
	}
	t.Logf("%d dashboards, %d panel queries checked against prometheus", len(dashboards.Boards()), queries)

	// The path panels show what happened: both paths carry peers and bytes.
	panel := func(file, title string) dashboards.Panel {
		for _, bd := range dashboards.Boards() {
			for _, p := range bd.Panels {
				if bd.File == file && p.Title == title {
					return p
				}
			}
		}
		t.Fatalf("no panel %q in %s", title, file)
		return dashboards.Panel{}
	}
	for _, tc := range []struct {
		file, title string
		query       int
		label       string
		values      []string
	}{
		{"paths.json", "Peers by path", 0, "path", []string{"direct", "relay"}},
		{"paths.json", "Bytes by path", 0, "path", []string{"direct", "relay"}},
		{"paths.json", "Path changes per hour", 0, "direction", []string{"upgrade"}},
		{"fleet.json", "Coordinator map streams", 1, "state", []string{"online"}},
	} {
		p := panel(tc.file, tc.title)
		res, err := promQuery(prom, dashboards.Substitute(p.Queries[tc.query].Expr, dashboards.Variables()))
		if err != nil {
			t.Errorf("%s: %v", tc.title, err)
			continue
		}
		for _, v := range tc.values {
			if valueOf(res, tc.label, v) <= 0 {
				t.Errorf("%s: %s=%s is not above zero: %v", tc.title, tc.label, v, res)
			}
		}
	}
	// NAT kind per node: the hard-NAT pair is seen as hard (two relays saw
	// different mappings), the easy pair as easy; the health panel counts
	// the hard-NAT warnings.
	if res, err := promQuery(prom, dashboards.Substitute(panel("paths.json", "NAT kind per node").Queries[0].Expr, dashboards.Variables())); err != nil {
		t.Errorf("NAT kind per node: %v", err)
	} else {
		kind := map[string]string{}
		for _, s := range res {
			kind[s.Metric["instance"]] = s.Metric["kind"]
		}
		for name, want := range map[string]string{"a": "easy", "b": "easy", "c": "hard", "d": "hard"} {
			if kind[name] != want {
				t.Errorf("NAT kind of %s is %q, want %q: %v", name, kind[name], want, res)
			}
		}
	}
	if res, err := promQuery(prom, dashboards.Substitute(panel("paths.json", "Health warnings").Queries[0].Expr, dashboards.Variables())); err != nil {
		t.Errorf("health warnings: %v", err)
	} else if got := valueOf(res, "kind", "hard_nat"); got != 2 {
		t.Errorf("health warnings: hard_nat on %v nodes, want 2: %v", got, res)
	}
	if res, err := promQuery(prom, dashboards.Substitute(panel("fleet.json", "Clients per region").Queries[0].Expr, dashboards.Variables())); err != nil {
		t.Errorf("clients per region: %v", err)
	} else {
		var sum float64
		for _, s := range res {
			sum += s.Value
		}
		if sum < float64(len(nodes)) {
			t.Errorf("clients per region add up to %v, want at least %d: %v", sum, len(nodes), res)
		}
	}

	// The shipped rules load, evaluate without error against the real
	// series, no alert is pending or firing on this healthy mesh, and the
	// recording rules for what happened produce series.
	rules, err := promRules(prom)
	if err != nil || len(rules) == 0 {
		t.Fatalf("rules: %v %v", rules, err)
	}
	for _, r := range rules {
		if r.Health != "ok" {
			t.Errorf("rule %s: health %q: %s", r.Name, r.Health, r.LastError)
		}
		if r.Type == "alerting" && r.State != "inactive" {
			t.Errorf("alert %s is %s on a healthy mesh", r.Name, r.State)
		}
	}
	for _, rec := range []string{"wiremesh:meshnode_peers:sum_by_path", "wiremesh:meshnode_bytes:rate5m_by_path",
		"wiremesh:relayd_clients:sum_by_region", "wiremesh:coordinator_fanout_latency_seconds:p99_5m",
		"wiremesh:coordinator_push_latency_seconds:p99_5m"} {
		if _, err := promQuery(prom, rec); err != nil {
			t.Errorf("recording rule %s: %v", rec, err)
		}
	}

	t.Run("broken_panel", func(t *testing.T) {
		good := dashboards.Boards()[1]
		for _, tc := range []struct {
			name, expr string
			want       string
		}{
			{"renamed metric", strings.Replace(good.Panels[0].Queries[0].Expr, "meshnode_peers", "meshnode_peer", 1), "no series"},
			{"syntax error", strings.Replace(good.Panels[0].Queries[0].Expr, "sum by (path)", "sum by (path", 1), "invalid query"},
			{"wrong label", strings.Replace(good.Panels[0].Queries[0].Expr, `instance=~"$instance"`, `instance="nowhere"`, 1), "no series"},
		} {
			broken := good
			broken.Panels = append([]dashboards.Panel{{Title: "broken: " + tc.name, Kind: dashboards.TimeSeries,
				Queries: []dashboards.Query{{Expr: tc.expr}}}}, good.Panels[1:]...)
			errs := checkBoards(prom, []dashboards.Board{broken})
			if len(errs) != 1 || !strings.Contains(errs[0].Error(), "broken: "+tc.name) || !strings.Contains(errs[0].Error(), tc.want) {
				t.Errorf("%s: check returned %v, want one %q error for the broken panel", tc.name, errs, tc.want)
			}
		}
	})
}
