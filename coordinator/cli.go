package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/metrics"
)

// envPrefix is the prefix of every flag's environment twin.
const envPrefix = "COORDINATOR_"

const usageTop = `coordinator — the Wiremesh control plane

usage:
  coordinator serve --listen ADDR --state-dir DIR [--server-url URL] [--db URL] [--policy FILE]
                    [--relay-map FILE] [--metrics-listen ADDR] [--web-listen ADDR]
  coordinator authkey create [--user NAME] [--reusable] [--ephemeral] [--tags tag:a,tag:b] [--expiry 24h] --state-dir DIR
  coordinator authkey list [--json] --state-dir DIR
  coordinator authkey revoke ID --state-dir DIR
  coordinator users create NAME --state-dir DIR
  coordinator users list [--json] --state-dir DIR
  coordinator users delete NAME [--force] --state-dir DIR
  coordinator relaykey create --region CODE [--region-name NAME] [--expiry 720h] --state-dir DIR
  coordinator relaykey list [--json] --state-dir DIR
  coordinator relaykey revoke ID --state-dir DIR
  coordinator nodes list [--json] --state-dir DIR
  coordinator nodes delete NAME --state-dir DIR
  coordinator nodes expire NAME --state-dir DIR
  coordinator relays list [--json] --state-dir DIR
  coordinator policy get --state-dir DIR
  coordinator policy set FILE --state-dir DIR
  coordinator web login [--user NAME] --state-dir DIR
  coordinator dns get --state-dir DIR
  coordinator dns set FILE --state-dir DIR
  coordinator routes list [--json] --state-dir DIR
  coordinator routes approve NODE CIDR --state-dir DIR
  coordinator routes unapprove NODE CIDR --state-dir DIR
  coordinator version

Each command takes --help. Admin commands talk to the running server through
DIR/admin.sock (root or the server's user only). With replicas on one
PostgreSQL database (--db postgres://...), any replica's --state-dir will do.
`

// serveFlags are the flags of `coordinator serve`.
type serveFlags struct {
	Listen            string        `flag:"listen" env:"LISTEN" help:"address to serve the API on (TLS), host:port"`
	StateDir          string        `flag:"state-dir" env:"STATE_DIR" help:"directory for the database, keys, certificate and admin socket"`
	ServerURL         string        `flag:"server-url" env:"SERVER_URL" help:"URL nodes use to reach this server (default https://LISTEN)"`
	DB                string        `flag:"db" env:"DB" help:"database: postgres://USER@HOST:PORT/DB?sslmode=disable, shared by any number of replicas, or sqlite://PATH (default: coordinator.db in --state-dir)"`
	Policy            string        `flag:"policy" env:"POLICY" help:"HuJSON policy file to install at start (its tests must pass)"`
	RelayMap          string        `flag:"relay-map" env:"RELAY_MAP" help:"static relay map file (JSON) merged with relays that join"`
	MetricsListen     string        `flag:"metrics-listen" env:"METRICS_LISTEN" help:"address to serve /metrics and /healthz on"`
	PprofListen       string        `flag:"pprof-listen" env:"PPROF_LISTEN" help:"loopback address to serve Go profiles (/debug/pprof/) on, for diagnosis"`
	WebListen         string        `flag:"web-listen" env:"WEB_LISTEN" help:"address to serve the web console on (HTTPS, the coordinator's certificate), host:port"`
	WebURL            string        `flag:"web-url" env:"WEB_URL" help:"the console's URL as browsers reach it, used in sign-in and login links (default https://WEB_LISTEN)"`
	TLSCert           string        `flag:"tls-cert" env:"TLS_CERT" help:"TLS certificate file (default: self-signed, made in --state-dir)"`
	TLSKey            string        `flag:"tls-key" env:"TLS_KEY" help:"TLS key file for --tls-cert"`
	InsecureHTTP      bool          `flag:"insecure-http" env:"INSECURE_HTTP" help:"serve plain HTTP (loopback --listen only; for tests)"`
	KeyExpiry         time.Duration `flag:"key-expiry" env:"KEY_EXPIRY" envDefault:"4320h" help:"node key lifetime after registration"`
	EphemeralTimeout  time.Duration `flag:"ephemeral-timeout" env:"EPHEMERAL_TIMEOUT" envDefault:"2m" help:"delete ephemeral nodes offline this long"`
	HeartbeatInterval time.Duration `flag:"relay-heartbeat" env:"RELAY_HEARTBEAT" envDefault:"10s" help:"relay heartbeat interval; 3 missed mark a relay down"`
	BodyTimeout       time.Duration `flag:"body-timeout" env:"BODY_TIMEOUT" envDefault:"10s" help:"a request body must arrive within this"`
	MaxConnsPerSource int           `flag:"max-conns-per-source" env:"MAX_CONNS_PER_SOURCE" envDefault:"1024" help:"connections one client address may hold; more are closed on accept"`
	ReplayPerSource   int           `flag:"replay-per-source" env:"REPLAY_PER_SOURCE" envDefault:"65536" help:"authenticated requests one client address may make per 2-minute proof window (load generators need more)"`
	DNSDomain         string        `flag:"dns-domain" env:"DNS_DOMAIN" envDefault:"mesh.internal" help:"MagicDNS suffix for node names"`
	Nameservers       []string      `flag:"dns-nameservers" env:"DNS_NAMESERVERS" help:"upstream DNS servers sent to nodes"`
	cli.Logging
}

// AdminFlags are shared by every admin command. Exported so that the
// environment parser reaches its fields through embedding.
type AdminFlags struct {
	StateDir string `flag:"state-dir" env:"STATE_DIR" help:"the server's --state-dir (its admin.sock is used)"`
}

// Command runs the coordinator command line (the cli.Command shape that
// every binary has).
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return run(ctx, args, stdout, stderr)
}

var errUsage = cli.ErrUsage

func usageErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s (see coordinator --help)", errUsage, fmt.Sprintf(format, a...))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageTop)
		return usageErr("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usageTop)
		return nil
	case "version", "--version":
		fmt.Fprintln(stdout, "coordinator", cli.Version())
		return nil
	case "serve":
		return runServe(ctx, rest, stdout, stderr)
	case "authkey", "relaykey", "nodes", "relays", "policy", "users", "web", "dns", "routes":
		if len(rest) == 0 || rest[0] == "-h" || rest[0] == "--help" {
			fmt.Fprint(stdout, usageTop)
			if len(rest) == 0 {
				return usageErr("%s needs a subcommand", cmd)
			}
			return nil
		}
		return runAdmin(ctx, cmd+" "+rest[0], rest[1:], stdout)
	}
	return usageErr("unknown command %q", cmd)
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f serveFlags
	pos, err := cli.Parse("coordinator serve", envPrefix, "coordinator serve --listen ADDR --state-dir DIR [flags]", &f, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErr("serve takes no arguments, got %q", pos[0])
	}
	if f.Listen == "" || f.StateDir == "" {
		return usageErr("serve needs --listen and --state-dir")
	}
	log, err := f.Logger(stderr)
	if err != nil {
		return usageErr("%v", err)
	}
	var ns []netip.Addr
	for _, s := range f.Nameservers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return usageErr("--dns-nameservers: %q is not an IP address", s)
		}
		ns = append(ns, a)
	}
	reg := metrics.NewRegistry()
	srv, err := New(ctx, Config{
		Listen: f.Listen, StateDir: f.StateDir, ServerURL: f.ServerURL, DB: f.DB, PolicyFile: f.Policy,
		RelayMapFile: f.RelayMap, TLSCert: f.TLSCert, TLSKey: f.TLSKey, InsecureHTTP: f.InsecureHTTP,
		KeyExpiry: f.KeyExpiry, EphemeralTimeout: f.EphemeralTimeout, HeartbeatInterval: f.HeartbeatInterval,
		BodyTimeout: f.BodyTimeout, MaxConnsPerSource: f.MaxConnsPerSource, ReplayPerSource: f.ReplayPerSource,
		WebListen: f.WebListen, WebURL: f.WebURL,
		DNSDomain: f.DNSDomain, Nameservers: ns, Logger: log, Registry: reg,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	if f.MetricsListen != "" {
		ms, err := metrics.Listen(f.MetricsListen, reg, nil)
		if err != nil {
			srv.closeAll()
			return err
		}
		go func() { errc <- ms.Run(ctx, log) }()
		log.Info("metrics serving", "addr", ms.Addr().String())
	} else {
		errc <- nil
	}
	if f.PprofListen != "" {
		stopPprof, err := servePprof(f.PprofListen)
		if err != nil {
			srv.closeAll()
			return err
		}
		defer stopPprof()
	}
	err = srv.Run(ctx)
	cancel()
	if merr := <-errc; err == nil {
		err = merr
	}
	return err
}

// servePprof serves the Go profiler on a loopback address.
func servePprof(addr string) (func(), error) {
	host, _, err := net.SplitHostPort(addr)
	ip, perr := netip.ParseAddr(host)
	if err != nil || perr != nil || !ip.IsLoopback() {
		return nil, usageErr("--pprof-listen %q: want a loopback address such as 127.0.0.1:6060", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	return func() { hs.Close() }, nil
}

// adminClient talks HTTP to the admin socket.
func adminClient(stateDir string) (*http.Client, error) {
	if stateDir == "" {
		return nil, usageErr("--state-dir is required (the running server's state directory)")
	}
	sock := filepath.Join(stateDir, AdminSocket)
	if _, err := os.Stat(sock); err != nil {
		return nil, fmt.Errorf("no admin socket at %s: is `coordinator serve --state-dir %s` running?", sock, stateDir)
	}
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}, nil
}

func adminCall(ctx context.Context, hc *http.Client, method, path string, in, out any) error {
	var body io.Reader
	switch v := in.(type) {
	case nil:
	case []byte:
		body = bytes.NewReader(v)
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://admin"+path, body)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("admin socket: HTTP %d", resp.StatusCode)
	}
	if out == nil {
		return nil
	}
	if p, ok := out.(*[]byte); ok {
		*p = b
		return nil
	}
	return json.Unmarshal(b, out)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
