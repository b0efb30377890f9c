package relayd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/key"
	metricsrv "github.com/wiremesh/wiremesh/metrics"
	"github.com/wiremesh/wiremesh/netmap"
)

// Flags are relayd's command-line options; each has a RELAYD_ twin.
type Flags struct {
	Coordinator    string        `flag:"coordinator" env:"COORDINATOR" help:"coordinator URL to join, or a comma-separated list of replicas URL1,URL2,... (with --join-key; remembered afterwards)"`
	JoinKey        string        `flag:"join-key" env:"JOIN_KEY" help:"relay join key from coordinator relaykey create (needed once)"`
	Region         string        `flag:"region" env:"REGION" help:"region code this relay serves (required)"`
	Listen         string        `flag:"listen" env:"LISTEN" envDefault:":443" help:"UDP address for QUIC and STUN"`
	ListenTCP      string        `flag:"listen-tcp" env:"LISTEN_TCP" help:"TCP address for the TLS fallback (default: the --listen port on TCP; off disables)"`
	STUNListen     string        `flag:"stun-listen" env:"STUN_LISTEN" help:"extra plain STUN UDP address, such as :3478 (default: none)"`
	FastListen     string        `flag:"fastpath-listen" env:"FASTPATH_LISTEN" help:"UDP address for the plain-UDP fast path clients may negotiate (default: off); each client gets its own port on this IP"`
	FastShared     bool          `flag:"fastpath-shared" env:"FASTPATH_SHARED" help:"serve every fast-path client on the --fastpath-listen port itself (one firewall port; no fairness between them)"`
	FastNoGSO      bool          `flag:"fastpath-no-gso" env:"FASTPATH_NO_GSO" help:"do not use UDP GSO for fast-path sends (sendmmsg batching stays)"`
	FastBulkNice   int           `flag:"fastpath-bulk-nice" env:"FASTPATH_BULK_NICE" envDefault:"10" help:"serve a fast-path client that keeps its socket full from a thread this much lower in CPU priority (nice 1..19), so other clients' packets go first; 0: off"`
	PublicAddr     string        `flag:"public-addr" env:"PUBLIC_ADDR" help:"host:port clients reach this relay at"`
	StateDir       string        `flag:"state-dir" env:"STATE_DIR" help:"directory for the relay key and certificate (required)"`
	MetricsListen  string        `flag:"metrics-listen" env:"METRICS_LISTEN" help:"address to serve /metrics and /healthz on"`
	TrustKey       []string      `flag:"trust-key" env:"TRUST_KEY" help:"coordinator signing public keys (signkey:...) whose admission tokens are accepted"`
	TrustKeyFile   string        `flag:"trust-key-file" env:"TRUST_KEY_FILE" help:"file with one signkey:... per line, added to --trust-key"`
	MeshWith       []string      `flag:"mesh-with" env:"MESH_WITH" help:"UDP addresses of the other relays of this region"`
	MeshSecret     string        `flag:"mesh-secret" env:"MESH_SECRET" help:"shared secret of the regional mesh"`
	MeshSecretFile string        `flag:"mesh-secret-file" env:"MESH_SECRET_FILE" help:"file holding the mesh secret (beats --mesh-secret)"`
	ClientRate     float64       `flag:"client-rate" env:"CLIENT_RATE" envDefault:"125000000" help:"per-client send limit in bytes per second (default 1 Gbit/s; 0: unlimited)"`
	ClientBurst    int           `flag:"client-burst" env:"CLIENT_BURST" help:"per-client burst in bytes (default: 100 ms of --client-rate, at least 64 KiB)"`
	QueueLen       int           `flag:"queue-len" env:"QUEUE_LEN" envDefault:"128" help:"per-client data queue in packets (oldest dropped when full)"`
	DiscoQueueLen  int           `flag:"disco-queue-len" env:"DISCO_QUEUE_LEN" envDefault:"16" help:"per-client disco queue in packets"`
	QueueBytes     int           `flag:"queue-bytes" env:"QUEUE_BYTES" envDefault:"262144" help:"per-client cap on queued payload bytes, data and disco together (oldest dropped past it)"`
	MaxPending     int           `flag:"max-pending" env:"MAX_PENDING" envDefault:"1024" help:"connections not yet admitted (handshake or hello pending), QUIC and TCP together; past it the oldest is closed"`
	MaxPendingSrc  int           `flag:"max-pending-per-source" env:"MAX_PENDING_PER_SOURCE" envDefault:"32" help:"of those, per source address (IPv6: per /64); past it that source's oldest is closed"`
	HelloTimeout   time.Duration `flag:"hello-timeout" env:"HELLO_TIMEOUT" envDefault:"10s" help:"time from accept to the client hello (QUIC: including the handshake)"`
	DrainGrace     time.Duration `flag:"drain-grace" env:"DRAIN_GRACE" envDefault:"10s" help:"on SIGTERM, how long clients get to move before the relay closes"`
	PprofListen    string        `flag:"pprof-listen" env:"PPROF_LISTEN" help:"loopback address to serve net/http/pprof on, for profiling (default: off)"`
	JSON           bool          `flag:"json" env:"JSON" help:"relayd pin: print JSON"`
	cli.Logging
}

const usage = `relayd --coordinator URL --join-key KEY --region CODE --listen ADDR --public-addr HOST:PORT
              --state-dir DIR [--listen-tcp ADDR] [--metrics-listen ADDR]
       relayd --region CODE --state-dir DIR --trust-key signkey:... [--listen ADDR] [--listen-tcp ADDR]
              [--public-addr HOST:PORT] [--metrics-listen ADDR] [--mesh-with ADDR,... --mesh-secret-file FILE]
       relayd pin --state-dir DIR [--json]   print the certificate pin and relay key
       relayd version`

// Command runs relayd with args (without the program name). ctx ending
// (SIGTERM) makes the relay drain and exit.
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f Flags
	pos, err := cli.Parse("relayd", "RELAYD_", usage, &f, args, stdout)
	if err != nil {
		return err
	}
	log, err := f.Logger(stderr)
	if err != nil {
		return err
	}
	switch {
	case len(pos) == 0:
		return serve(ctx, f, log)
	case pos[0] == "version" && len(pos) == 1:
		fmt.Fprintln(stdout, cli.Version())
		return nil
	case pos[0] == "pin" && len(pos) == 1:
		return printPin(f, stdout)
	}
	return fmt.Errorf("relayd: unknown command %q (want version, pin or no command)", strings.Join(pos, " "))
}

// printPin prints the pin on the first line and the relay key on the
// second, so scripts can take either with head/tail.
func printPin(f Flags, out io.Writer) error {
	priv, cert, err := LoadState(f.StateDir, f.PublicAddr)
	if err != nil {
		return err
	}
	s := &Server{cert: cert}
	pin := pinOf(s)
	if f.JSON {
		return json.NewEncoder(out).Encode(map[string]string{"pin": pin, "relay_key": priv.Public().String()})
	}
	fmt.Fprintln(out, pin)
	fmt.Fprintln(out, priv.Public().String())
	return nil
}

func (f Flags) config() (Config, error) {
	cfg := Config{
		Region: f.Region, Listen: f.Listen, ListenTCP: f.ListenTCP, ListenSTUN: f.STUNListen, ListenFast: f.FastListen, FastShared: f.FastShared, FastNoGSO: f.FastNoGSO, FastBulkNice: f.FastBulkNice,
		PublicAddr: f.PublicAddr, StateDir: f.StateDir, MeshWith: f.MeshWith,
		QueueLen: f.QueueLen, DiscoQueueLen: f.DiscoQueueLen, QueueBytes: f.QueueBytes,
		ClientRate: f.ClientRate, ClientBurst: f.ClientBurst, DrainGrace: f.DrainGrace,
		MaxPending: f.MaxPending, MaxPendingPerSource: f.MaxPendingSrc, HelloTimeout: f.HelloTimeout,
	}
	if f.ClientRate == 0 {
		cfg.ClientRate = -1 // the flag's 0 is "unlimited"; Config's 0 is the default
	}
	if f.FastBulkNice == 0 {
		cfg.FastBulkNice = -1 // the flag's 0 is "off"; Config's 0 is the default
	}
	if f.Region == "" {
		return cfg, errors.New("relayd: --region is required")
	}
	if f.PprofListen != "" {
		if err := checkPprofAddr(f.PprofListen); err != nil {
			return cfg, err
		}
	}
	if f.StateDir == "" {
		return cfg, errors.New("relayd: --state-dir is required")
	}
	keys := append([]string(nil), f.TrustKey...)
	if f.TrustKeyFile != "" {
		b, err := os.ReadFile(f.TrustKeyFile)
		if err != nil {
			return cfg, fmt.Errorf("relayd: --trust-key-file: %w", err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				keys = append(keys, l)
			}
		}
	}
	for _, k := range keys {
		pk, err := key.ParseSigningPublic(k)
		if err != nil {
			return cfg, fmt.Errorf("relayd: --trust-key %q: %w", k, err)
		}
		cfg.Trusted = append(cfg.Trusted, pk)
	}
	if len(cfg.Trusted) == 0 && !f.joins() {
		// Without the coordinator join to feed keys, a relay without a
		// trust anchor would refuse every client.
		return cfg, errors.New("relayd: no trust anchor: give --coordinator and --join-key, or --trust-key")
	}
	secret := f.MeshSecret
	if f.MeshSecretFile != "" {
		b, err := os.ReadFile(f.MeshSecretFile)
		if err != nil {
			return cfg, fmt.Errorf("relayd: --mesh-secret-file: %w", err)
		}
		secret = strings.TrimSpace(string(b))
	}
	if len(f.MeshWith) > 0 && secret == "" {
		return cfg, errors.New("relayd: --mesh-with needs --mesh-secret or --mesh-secret-file")
	}
	cfg.MeshSecret = []byte(secret)
	if f.QueueLen < 1 || f.DiscoQueueLen < 1 {
		return cfg, errors.New("relayd: --queue-len and --disco-queue-len must be at least 1")
	}
	if f.FastBulkNice < 0 || f.FastBulkNice > 19 {
		return cfg, errors.New("relayd: --fastpath-bulk-nice must be 0 (off) to 19")
	}
	if f.ClientRate < 0 || f.ClientBurst < 0 {
		return cfg, errors.New("relayd: --client-rate and --client-burst must not be negative")
	}
	if f.QueueBytes < 1 || f.MaxPending < 1 || f.MaxPendingSrc < 1 || f.HelloTimeout <= 0 {
		return cfg, errors.New("relayd: --queue-bytes, --max-pending, --max-pending-per-source and --hello-timeout must be positive")
	}
	if f.Coordinator != "" {
		if _, err := coordclient.ParseURLs(f.Coordinator); err != nil {
			return cfg, fmt.Errorf("relayd: --coordinator: %w", err)
		}
	}
	return cfg, nil
}

// joins reports whether the relay takes its trust from the coordinator:
// flags given now, or a join remembered in the state directory.
func (f Flags) joins() bool {
	if f.JoinKey != "" || f.Coordinator != "" {
		return true
	}
	js, _ := loadJoin(f.StateDir)
	return js != nil
}

func serve(ctx context.Context, f Flags, log *slog.Logger) error {
	cfg, err := f.config()
	if err != nil {
		return err
	}
	var j *joiner
	if f.joins() {
		priv, cert, err := LoadState(f.StateDir, f.PublicAddr)
		if err != nil {
			return err
		}
		if f.PublicAddr == "" {
			return errors.New("relayd: joining needs --public-addr")
		}
		j = &joiner{dir: f.StateDir, url: f.Coordinator, self: f.PublicAddr, priv: priv, log: log, region: f.Region}
		req := netmap.RelayJoinRequest{Region: f.Region, PublicAddr: f.PublicAddr, Pin: pinFromCert(cert)}
		if err := j.join(ctx, f.JoinKey, req); err != nil {
			return err
		}
		j.apply(&cfg)
	}
	reg := metricsrv.NewRegistry()
	s, err := New(cfg, log, reg)
	if err != nil {
		return err
	}
	if j != nil {
		j.srv = s
		hctx, hstop := context.WithCancel(ctx)
		hdone := make(chan struct{}, 2)
		go func() { defer func() { hdone <- struct{}{} }(); j.heartbeats(hctx) }()
		go func() { defer func() { hdone <- struct{}{} }(); s.FollowRevocations(hctx, j) }()
		defer func() { hstop(); <-hdone; <-hdone }()
	}
	mctx, mstop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer mstop() // metrics outlive the drain so /healthz reports it
	if f.MetricsListen != "" {
		ms, err := metricsrv.Listen(f.MetricsListen, reg, s.Healthy)
		if err != nil {
			s.closeSockets()
			return err
		}
		log.Info("metrics serving", "addr", ms.Addr().String())
		wg.Add(1)
		go func() { defer wg.Done(); ms.Run(mctx, log) }()
	}
	if f.PprofListen != "" {
		ps, err := servePprof(f.PprofListen)
		if err != nil {
			s.closeSockets()
			return err
		}
		defer ps.Close()
		log.Info("pprof serving", "addr", f.PprofListen)
	}
	return s.Run(ctx)
}

func pinOf(s *Server) string { return pinFromCert(s.cert) }
