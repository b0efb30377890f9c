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
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/metrics"
)

// envPrefix is the prefix of every flag's environment twin.
const envPrefix = "COORDINATOR_"

const usageTop = `coordinator — the Wiremesh control plane

usage:
  coordinator serve --listen ADDR --state-dir DIR [--server-url URL] [--db URL] [--policy FILE]
                    [--relay-map FILE] [--metrics-listen ADDR]
  coordinator authkey create [--user NAME] [--reusable] [--ephemeral] [--tags tag:a,tag:b] [--expiry 24h] --state-dir DIR
  coordinator authkey list [--json] --state-dir DIR
  coordinator authkey revoke ID --state-dir DIR
  coordinator users create NAME --state-dir DIR
  coordinator users list [--json] --state-dir DIR
  coordinator users delete NAME [--force] --state-dir DIR
  coordinator relaykey create --region CODE [--region-name NAME] --state-dir DIR
  coordinator nodes list [--json] --state-dir DIR
  coordinator nodes delete NAME --state-dir DIR
  coordinator nodes expire NAME --state-dir DIR
  coordinator relays list [--json] --state-dir DIR
  coordinator policy get --state-dir DIR
  coordinator policy set FILE --state-dir DIR
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

// Main runs the coordinator command line and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := run(ctx, args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, cli.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "coordinator: %v\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "coordinator: %s\n", oneLine(err.Error()))
	return 1
}

var errUsage = errors.New("usage")

func usageErr(format string, a ...any) error {
	return fmt.Errorf("%w: %s (see coordinator --help)", errUsage, fmt.Sprintf(format, a...))
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

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
	case "authkey", "relaykey", "nodes", "relays", "policy", "users", "routes":
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

func runAdmin(ctx context.Context, cmd string, args []string, stdout io.Writer) error {
	name := "coordinator " + cmd
	switch cmd {
	case "authkey create":
		var f struct {
			AdminFlags
			Reusable  bool     `flag:"reusable" env:"REUSABLE" help:"the key may register any number of nodes"`
			Ephemeral bool     `flag:"ephemeral" env:"EPHEMERAL" help:"nodes registered with it are deleted once offline"`
			Tags      []string `flag:"tags" env:"TAGS" help:"tags given to nodes registered with it"`
			Expiry    string   `flag:"expiry" env:"EXPIRY" help:"the key stops working after this duration (default: never)"`
			User      string   `flag:"user" env:"USER" help:"user who owns the nodes registered with it (default admin@; none for a tagged key)"`
		}
		if err := parseAdmin(name, "[--user NAME] [--reusable] [--ephemeral] [--tags tag:a,tag:b] [--expiry 24h] --state-dir DIR", &f, args, stdout, 0); err != nil {
			return err
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		var resp KeyResponse
		if err := adminCall(ctx, hc, "POST", AdminPathAuthKey, AuthKeyRequest{Reusable: f.Reusable, Ephemeral: f.Ephemeral, Tags: f.Tags, Expiry: f.Expiry, User: f.User}, &resp); err != nil {
			return err
		}
		fmt.Fprintln(stdout, resp.Key)
		return nil
	case "authkey list":
		var f struct {
			AdminFlags
			JSON bool `flag:"json" env:"JSON" help:"print JSON"`
		}
		if err := parseAdmin(name, "[--json] --state-dir DIR", &f, args, stdout, 0); err != nil {
			return err
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		var keys []AuthKeyInfo
		if err := adminCall(ctx, hc, "GET", AdminPathAuthKeys, nil, &keys); err != nil {
			return err
		}
		if f.JSON {
			return json.NewEncoder(stdout).Encode(keys)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tUSER\tTAGS\tREUSABLE\tEPHEMERAL\tEXPIRES\tUSES\tSTATE")
		for _, k := range keys {
			state := "valid"
			switch {
			case !k.Revoked.IsZero():
				state = "revoked " + fmtTime(k.Revoked)
			case k.Expired:
				state = "expired"
			case !k.Reusable && k.Uses > 0:
				state = "used"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%v\t%v\t%s\t%d\t%s\n", k.ID, dash(k.User), dash(strings.Join(k.Tags, ",")),
				k.Reusable, k.Ephemeral, fmtTime(k.Expires), k.Uses, state)
		}
		return tw.Flush()
	case "authkey revoke":
		var f struct{ AdminFlags }
		pos, err := parseAdminPos(name, "ID --state-dir DIR", &f, args, stdout)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr("authkey revoke needs exactly one key ID (see authkey list)")
		}
		id, err := strconv.ParseInt(pos[0], 10, 64)
		if err != nil || id <= 0 {
			return usageErr("authkey revoke: %q is not a key ID (a number from authkey list)", pos[0])
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		if err := adminCall(ctx, hc, "POST", AdminPathRevoke, IDRequest{ID: id}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "auth key %d revoked\n", id)
		return nil
	case "users create", "users delete":
		var f struct {
			AdminFlags
			Force bool `flag:"force" env:"FORCE" help:"users delete: also delete the user's nodes"`
		}
		pos, err := parseAdminPos(name, "NAME --state-dir DIR", &f, args, stdout)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr("%s needs exactly one user NAME (alice@example.com)", cmd)
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		if cmd == "users create" {
			if f.Force {
				return usageErr("users create takes no --force")
			}
			if err := adminCall(ctx, hc, "POST", AdminPathUsers, UserRequest{Name: pos[0]}, nil); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "user %s created\n", pos[0])
			return nil
		}
		var resp struct {
			NodesDeleted int `json:"nodes_deleted"`
		}
		if err := adminCall(ctx, hc, "POST", AdminPathUserDelete, UserRequest{Name: pos[0], Force: f.Force}, &resp); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "user %s deleted (%d nodes deleted)\n", pos[0], resp.NodesDeleted)
		return nil
	case "users list":
		var f struct {
			AdminFlags
			JSON bool `flag:"json" env:"JSON" help:"print JSON"`
		}
		if err := parseAdmin(name, "[--json] --state-dir DIR", &f, args, stdout, 0); err != nil {
			return err
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		var users []UserInfo
		if err := adminCall(ctx, hc, "GET", AdminPathUsers, nil, &users); err != nil {
			return err
		}
		if f.JSON {
			return json.NewEncoder(stdout).Encode(users)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tNODES\tCREATED")
		for _, u := range users {
			created := fmtTime(u.Created)
			if u.BuiltIn {
				created = "(built in)"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\n", u.Name, u.Nodes, created)
		}
		return tw.Flush()
	case "relaykey create":
		var f struct {
			AdminFlags
			Region     string `flag:"region" env:"REGION" help:"region code, a short DNS label (nyc)"`
			RegionName string `flag:"region-name" env:"REGION_NAME" help:"human-readable region name"`
		}
		if err := parseAdmin(name, "--region CODE [--region-name NAME] --state-dir DIR", &f, args, stdout, 0); err != nil {
			return err
		}
		if f.Region == "" {
			return usageErr("relaykey create needs --region")
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		var resp KeyResponse
		if err := adminCall(ctx, hc, "POST", AdminPathRelayKey, RelayKeyRequest{Region: f.Region, RegionName: f.RegionName}, &resp); err != nil {
			return err
		}
		fmt.Fprintln(stdout, resp.Key)
		return nil
	case "nodes list":
		var f struct {
			AdminFlags
			JSON bool `flag:"json" env:"JSON" help:"print JSON"`
		}
		if err := parseAdmin(name, "[--json] --state-dir DIR", &f, args, stdout, 0); err != nil {
			return err
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		var nodes []NodeInfo
		if err := adminCall(ctx, hc, "GET", AdminPathNodes, nil, &nodes); err != nil {
			return err
		}
		if f.JSON {
			return json.NewEncoder(stdout).Encode(nodes)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tUSER\tIP\tONLINE\tLAST SEEN\tTAGS\tKEY EXPIRY\tHOME RELAY")
		for _, n := range nodes {
			exp := fmtTime(n.KeyExpiry)
			if n.Expired {
				exp += " (expired)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\t%s\t%s\n", n.Name, dash(n.User), n.IP, n.Online, fmtTime(n.LastSeen),
				dash(strings.Join(n.Tags, ",")), exp, dash(n.HomeRelay))
		}
		return tw.Flush()
	case "nodes delete", "nodes expire":
		var f struct{ AdminFlags }
		pos, err := parseAdminPos(name, "NAME --state-dir DIR", &f, args, stdout)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr("%s needs exactly one node NAME", cmd)
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		path := AdminPathDelete
		if cmd == "nodes expire" {
			path = AdminPathExpire
		}
		if err := adminCall(ctx, hc, "POST", path, NameRequest{Name: pos[0]}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: done\n", pos[0])
		return nil
	case "relays list":
		var f struct {
			AdminFlags
			JSON bool `flag:"json" env:"JSON" help:"print JSON"`
		}
		if err := parseAdmin(name, "[--json] --state-dir DIR", &f, args, stdout, 0); err != nil {
			return err
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		var relays []RelayInfo
		if err := adminCall(ctx, hc, "GET", AdminPathRelays, nil, &relays); err != nil {
			return err
		}
		if f.JSON {
			return json.NewEncoder(stdout).Encode(relays)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tREGION\tADDR\tSTATE\tCLIENTS\tLAST HEARTBEAT")
		for _, r := range relays {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", r.Name, r.Region, r.Addr, r.State, r.Clients, fmtTime(r.LastHeartbeat))
		}
		return tw.Flush()
	case "policy get":
		var f struct{ AdminFlags }
		if err := parseAdmin(name, "--state-dir DIR", &f, args, stdout, 0); err != nil {
			return err
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		var text []byte
		if err := adminCall(ctx, hc, "GET", AdminPathPolicy, nil, &text); err != nil {
			return err
		}
		if len(text) == 0 {
			fmt.Fprintln(stdout, "// no policy set: every node may reach every other node")
			return nil
		}
		stdout.Write(text)
		if !bytes.HasSuffix(text, []byte("\n")) {
			fmt.Fprintln(stdout)
		}
		return nil
	case "policy set":
		var f struct{ AdminFlags }
		pos, err := parseAdminPos(name, "FILE --state-dir DIR", &f, args, stdout)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usageErr("policy set needs exactly one FILE")
		}
		text, err := os.ReadFile(pos[0])
		if err != nil {
			return fmt.Errorf("policy set: %w", err)
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		if err := adminCall(ctx, hc, "PUT", AdminPathPolicy, text, nil); err != nil {
			return fmt.Errorf("policy rejected, the old one stays in force: %w", err)
		}
		fmt.Fprintln(stdout, "policy set")
		return nil
	}
	if strings.HasPrefix(cmd, "routes ") {
		return runRoutes(ctx, cmd, args, stdout)
	}
	return usageErr("unknown command %q", cmd)
}

func parseAdmin(name, usage string, f any, args []string, stdout io.Writer, npos int) error {
	pos, err := parseAdminPos(name, usage, f, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != npos {
		return usageErr("%s takes no arguments, got %q", name, pos[0])
	}
	return nil
}

func parseAdminPos(name, usage string, f any, args []string, stdout io.Writer) ([]string, error) {
	pos, err := cli.Parse(name, envPrefix, name+" "+usage, f, args, stdout)
	if err != nil && !errors.Is(err, cli.ErrHelp) {
		return nil, usageErr("%v", err)
	}
	return pos, err
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
