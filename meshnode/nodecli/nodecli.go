// Package nodecli is the meshnode command line: `meshnode run` starts the
// daemon (package meshnode), and the local commands (status, ping,
// netcheck, ip, whois, down) talk to a running one over its local API.
package nodecli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/meshnode"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/meshnode/netstack"
	"github.com/wiremesh/wiremesh/meshnode/routes"
	"github.com/wiremesh/wiremesh/meshnode/socks5"
)

// RunFlags are `meshnode run`'s options; each has a MESHNODE_ twin.
type RunFlags struct {
	Coordinator      string   `flag:"coordinator" env:"COORDINATOR" help:"coordinator URL, or a comma-separated list of replicas URL1,URL2,... (remembered after the first run)"`
	AuthKey          string   `flag:"authkey" env:"AUTHKEY" help:"pre-auth key (first run only; without it the node prints a login URL to approve in the web console)"`
	CoordinatorPin   string   `flag:"coordinator-pin" env:"COORDINATOR_PIN" help:"coordinator certificate pin for a first run without --authkey (default: verify with the system's CA roots)"`
	Hostname         string   `flag:"hostname" env:"HOSTNAME" help:"name to register as (default: the machine's host name)"`
	StateDir         string   `flag:"state-dir" env:"STATE_DIR" help:"directory for the node key, netmap cache and socket (required)"`
	TUN              string   `flag:"tun" env:"TUN" envDefault:"wm0" help:"kernel TUN device name (needs root)"`
	Userspace        bool     `flag:"userspace" env:"USERSPACE" help:"use a userspace network stack: no root, no TUN; serves --socks5"`
	Port             uint16   `flag:"port" env:"PORT" envDefault:"41641" help:"UDP port for WireGuard, disco and STUN (0: any)"`
	Socks5           string   `flag:"socks5" env:"SOCKS5" envDefault:"127.0.0.1:1080" help:"with --userspace: SOCKS5 proxy address for reaching the mesh"`
	MetricsListen    string   `flag:"metrics-listen" env:"METRICS_LISTEN" help:"address to serve /metrics and /healthz on"`
	PinRegion        string   `flag:"pin-region" env:"PIN_REGION" help:"always use this relay region as home while it is usable"`
	ExcludeRegions   []string `flag:"exclude-regions" env:"EXCLUDE_REGIONS" help:"never use these relay regions as home"`
	RegionWeights    []string `flag:"region-weights" env:"REGION_WEIGHTS" help:"latency weights by region, such as nyc=2,fra=0.5 (2 makes a region look twice as far)"`
	AcceptDNS        bool     `flag:"accept-dns" env:"ACCEPT_DNS" envDefault:"true" help:"run MagicDNS: answer DNS at 100.100.100.100 and (kernel TUN mode) point the OS at it; false leaves the OS and the resolver off"`
	EndpointPrefixes []string `flag:"endpoint-prefixes" env:"ENDPOINT_PREFIXES" help:"offer only local addresses inside these prefixes as direct-path candidates (default: all but loopback)"`
	PortMapping      bool     `flag:"port-mapping" env:"PORT_MAPPING" envDefault:"true" help:"ask the gateway to forward the UDP port (NAT-PMP, PCP or UPnP IGD) and offer the mapped address to peers; deleted on exit"`
	UserspaceFlags
	RouteFlags
	cli.Logging
}

// RouteFlags are `meshnode run`'s subnet-route and exit-node options.
type RouteFlags struct {
	AdvertiseRoutes   []string `flag:"advertise-routes" env:"ADVERTISE_ROUTES" help:"offer to route these networks for the mesh, such as 198.19.50.0/24,10.1.0.0/16 (kernel TUN; an admin or the policy's autoApprovers approves them)"`
	SNATSubnetRoutes  bool     `flag:"snat-subnet-routes" env:"SNAT_SUBNET_ROUTES" envDefault:"true" help:"routed traffic leaves with this node's own LAN address, so the LAN needs no route back to the mesh"`
	AdvertiseExitNode bool     `flag:"advertise-exit-node" env:"ADVERTISE_EXIT_NODE" help:"offer this node as an exit node (0.0.0.0/0; kernel TUN)"`
	AcceptRoutes      bool     `flag:"accept-routes" env:"ACCEPT_ROUTES" help:"send traffic for approved subnet routes to their primary router"`
	ExitNode          string   `flag:"exit-node" env:"EXIT_NODE" help:"send all traffic that is not for a local network through this peer (NAME or mesh IP); while it is unreachable that traffic stops"`
	ExitNodeAllowLAN  bool     `flag:"exit-node-allow-lan-access" env:"EXIT_NODE_ALLOW_LAN_ACCESS" help:"with --exit-node: reach this node's own LAN directly"`
}

// UserspaceFlags are `meshnode run`'s options for --userspace's proxy and
// inbound forwarding.
type UserspaceFlags struct {
	Socks5AllowRemote bool     `flag:"socks5-allow-remote" env:"SOCKS5_ALLOW_REMOTE" help:"with --userspace: allow a non-loopback --socks5 address (the proxy has no authentication)"`
	ForwardPorts      []string `flag:"forward-ports" env:"FORWARD_PORTS" help:"with --userspace: TCP ports that peers may reach on this host's localhost, such as 22,80,8000-8100 (default: none)"`
}

// ClientFlags are the options of the local commands.
type ClientFlags struct {
	StateDir string        `flag:"state-dir" env:"STATE_DIR" help:"the daemon's state directory"`
	Socket   string        `flag:"socket" env:"SOCKET" help:"the daemon's socket (default: STATE_DIR/meshnode.sock)"`
	JSON     bool          `flag:"json" env:"JSON" help:"print JSON"`
	Count    int           `flag:"c" env:"PING_COUNT" envDefault:"10" help:"ping: number of pings"`
	Timeout  time.Duration `flag:"timeout" env:"PING_TIMEOUT" envDefault:"5s" help:"ping: how long to wait for each pong"`
}

const usage = `meshnode run --coordinator URL [--authkey KEY | --coordinator-pin PIN] --hostname NAME --state-dir DIR
             [--tun NAME | --userspace] [--port 41641] [--socks5 ADDR] [--metrics-listen ADDR]
             [--forward-ports PORTS] [--socks5-allow-remote] [--accept-dns=false] [--port-mapping=false]
             [--advertise-routes CIDR,...] [--snat-subnet-routes=false] [--advertise-exit-node]
             [--accept-routes] [--exit-node NAME|IP [--exit-node-allow-lan-access]]
       meshnode status [--json]            peers, paths, traffic and DNS
       meshnode dns query [--json] NAME [TYPE]   ask the node's resolver (TYPE: A, AAAA, PTR, ...)
       meshnode netcheck [--json]          UDP, public address, NAT kind and latency to every relay region
       meshnode ping [--json] [-c N] [--timeout D] PEER
       meshnode ip [PEER]                  this node's (or PEER's) mesh address
       meshnode whois IP                   the peer with mesh address IP
       meshnode down                       stop the daemon
       meshnode version
Local commands take --state-dir DIR or --socket PATH.`

// Command runs the meshnode command line (the cli.Command shape that every
// binary has).
func Command(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: "+usage)
		return cli.Usagef("no command given")
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, "usage: "+usage)
		return nil
	case "version":
		fmt.Fprintln(stdout, cli.Version())
		return nil
	case "run":
		return runCommand(ctx, rest, stdout, stderr)
	default:
		if _, ok := locals[sub]; ok {
			return clientCommand(ctx, sub, rest, stdout)
		}
	}
	return cli.Usagef("unknown command %q (see meshnode --help)", sub)
}

func runCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f RunFlags
	if _, err := cli.Parse("meshnode run", "MESHNODE_", usage, &f, args, stdout); err != nil {
		return fmt.Errorf("%w: %w", cli.ErrUsage, err)
	}
	log, err := f.Logger(stderr)
	if err != nil {
		return fmt.Errorf("%w: %w", cli.ErrUsage, err)
	}
	if f.StateDir == "" {
		return cli.Usagef("--state-dir is required")
	}
	if f.Hostname == "" {
		f.Hostname, _ = os.Hostname()
	}
	if f.Coordinator != "" {
		if _, err := coordclient.ParseURLs(f.Coordinator); err != nil {
			return usageWrap("--coordinator: %w", err)
		}
	}
	cfg := meshnode.Config{
		Coordinator: f.Coordinator, AuthKey: f.AuthKey, Hostname: f.Hostname, StateDir: f.StateDir,
		TUN: f.TUN, Userspace: f.Userspace, Port: f.Port, Metrics: f.MetricsListen, PortMapping: f.PortMapping, Log: log,
		AcceptDNS:      f.AcceptDNS,
		CoordinatorPin: f.CoordinatorPin, LoginOut: stderr,
	}
	if f.Userspace {
		cfg.Socks5, cfg.Socks5AllowRemote = f.Socks5, f.Socks5AllowRemote
		if cfg.Socks5 != "" {
			if err := socks5.CheckListenAddr(cfg.Socks5, cfg.Socks5AllowRemote); err != nil {
				return usageWrap("--socks5: %w (or add --socks5-allow-remote)", err)
			}
		}
		if cfg.ForwardPorts, err = netstack.ParsePorts(f.ForwardPorts); err != nil {
			return usageWrap("--forward-ports: %w", err)
		}
	}
	if cfg.AdvertiseRoutes, err = routes.ParseAdvertised(strings.Join(f.AdvertiseRoutes, ",")); err != nil {
		return usageWrap("--advertise-routes: %w", err)
	}
	cfg.AdvertiseExitNode, cfg.SNATSubnetRoutes = f.AdvertiseExitNode, f.SNATSubnetRoutes
	cfg.AcceptRoutes, cfg.ExitNode, cfg.ExitNodeAllowLAN = f.AcceptRoutes, f.ExitNode, f.ExitNodeAllowLAN
	cfg.PinRegion, cfg.ExcludeRegions = f.PinRegion, f.ExcludeRegions
	for _, kv := range f.RegionWeights {
		code, w, ok := strings.Cut(kv, "=")
		wf, err := strconv.ParseFloat(w, 64)
		if !ok || err != nil || wf <= 0 {
			return cli.Usagef("--region-weights: %q is not region=weight with a positive weight", kv)
		}
		if cfg.RegionWeights == nil {
			cfg.RegionWeights = map[string]float64{}
		}
		cfg.RegionWeights[code] = wf
	}
	for _, p := range f.EndpointPrefixes {
		pfx, err := netip.ParsePrefix(p)
		if err != nil {
			return usageWrap("--endpoint-prefixes: %w", err)
		}
		cfg.EndpointPrefixes = append(cfg.EndpointPrefixes, pfx)
	}
	return meshnode.Run(ctx, cfg)
}

// local is one local command: it talks to the daemon through c.
type local func(ctx context.Context, c *localapi.Client, f ClientFlags, pos []string, stdout io.Writer) error

// locals are the local commands, by name.
var locals = map[string]local{
	"status":   statusCmd,
	"ping":     pingCmd,
	"ip":       ipCmd,
	"whois":    whoisCmd,
	"netcheck": netcheckCmd,
	"dns":      dnsCmd,
	"down": func(ctx context.Context, c *localapi.Client, _ ClientFlags, _ []string, _ io.Writer) error {
		return c.Down(ctx)
	},
}

func clientCommand(ctx context.Context, sub string, args []string, stdout io.Writer) error {
	run, ok := locals[sub]
	if !ok {
		return cli.Usagef("unknown command %q", sub)
	}
	var f ClientFlags
	pos, err := cli.Parse("meshnode "+sub, "MESHNODE_", usage, &f, args, stdout)
	if err != nil {
		return fmt.Errorf("%w: %w", cli.ErrUsage, err)
	}
	sock := f.Socket
	if sock == "" {
		if f.StateDir == "" {
			return cli.Usagef("--state-dir or --socket is required")
		}
		sock = filepath.Join(f.StateDir, localapi.SocketName)
	}
	// A bound on everything but a long ping run: the daemon answers at once.
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	return run(ctx, localapi.NewClient(sock), f, pos, stdout)
}

func statusCmd(ctx context.Context, c *localapi.Client, f ClientFlags, _ []string, stdout io.Writer) error {
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if f.JSON {
		return writeJSON(stdout, st)
	}
	printStatus(stdout, st)
	return nil
}

func pingCmd(ctx context.Context, c *localapi.Client, f ClientFlags, pos []string, stdout io.Writer) error {
	if len(pos) != 1 {
		return cli.Usagef("meshnode ping [--json] [-c N] [--timeout D] PEER")
	}
	got := 0
	err := c.Ping(ctx, localapi.PingRequest{Peer: pos[0], Count: f.Count, Timeout: f.Timeout}, func(r localapi.PingResult) {
		got++
		if f.JSON {
			writeJSON(stdout, r)
			return
		}
		fmt.Fprintf(stdout, "pong from %s (%s) via %s %s in %.2fms\n", r.Peer, r.IP, r.Path, r.Via, r.RTTMs)
	})
	if err != nil {
		return err
	}
	if got == 0 {
		return errors.New("no pong")
	}
	return nil
}

func ipCmd(ctx context.Context, c *localapi.Client, _ ClientFlags, pos []string, stdout io.Writer) error {
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	ips := st.Self.IPs
	if len(pos) == 1 {
		p, ok := findPeer(st, pos[0])
		if !ok {
			return fmt.Errorf("no peer %q", pos[0])
		}
		ips = p.IPs
	}
	for _, ip := range ips {
		fmt.Fprintln(stdout, ip)
	}
	return nil
}

func whoisCmd(ctx context.Context, c *localapi.Client, f ClientFlags, pos []string, stdout io.Writer) error {
	if len(pos) != 1 {
		return cli.Usagef("meshnode whois IP")
	}
	ip, err := netip.ParseAddr(pos[0])
	if err != nil {
		return cli.Usagef("whois: %q is not an IP address", pos[0])
	}
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	p, ok := findPeer(st, ip.String())
	if !ok {
		return fmt.Errorf("no peer has address %s", ip)
	}
	if f.JSON {
		return writeJSON(stdout, p)
	}
	fmt.Fprintf(stdout, "%s\t%s\t%s\n", p.Name, strings.Join(p.IPs, ","), p.NodeKey)
	return nil
}

// dnsCmd is `meshnode dns query NAME [TYPE]`.
func dnsCmd(ctx context.Context, c *localapi.Client, f ClientFlags, pos []string, stdout io.Writer) error {
	if len(pos) < 2 || len(pos) > 3 || pos[0] != "query" {
		return cli.Usagef("meshnode dns query [--json] NAME [TYPE]")
	}
	qtype := "A"
	if len(pos) == 3 {
		qtype = strings.ToUpper(pos[2])
	}
	a, err := c.DNSQuery(ctx, pos[1], qtype)
	if err != nil {
		return err
	}
	if f.JSON {
		return writeJSON(stdout, a)
	}
	fmt.Fprintf(stdout, "%s %s: %s from %s\n", a.Name, a.Type, a.Rcode, a.Source)
	for _, rr := range a.Answers {
		fmt.Fprintln(stdout, rr)
	}
	return nil
}

func netcheckCmd(ctx context.Context, c *localapi.Client, f ClientFlags, _ []string, stdout io.Writer) error {
	nc, err := c.Netcheck(ctx)
	if err != nil {
		return err
	}
	if f.JSON {
		return writeJSON(stdout, nc)
	}
	printNetcheck(stdout, nc)
	return nil
}

func findPeer(st localapi.Status, nameOrIP string) (localapi.PeerStatus, bool) {
	for _, p := range st.Peers {
		if p.Name == nameOrIP {
			return p, true
		}
		for _, ip := range p.IPs {
			if ip == nameOrIP {
				return p, true
			}
		}
	}
	return localapi.PeerStatus{}, false
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	return enc.Encode(v)
}

func printStatus(w io.Writer, st localapi.Status) {
	coord := "connected"
	if !st.Coordinator.Connected {
		coord = "disconnected"
		if st.Coordinator.LastError != "" {
			coord += " (" + st.Coordinator.LastError + ")"
		}
	}
	fmt.Fprintf(w, "%s %s  home relay %s  coordinator %s\n", st.Self.Name, strings.Join(st.Self.IPs, ","), orDash(st.Self.HomeRelay), coord)
	if st.DNS != nil {
		fmt.Fprintf(w, "dns %s  domain %s", st.DNS.Mode, orDash(st.DNS.Domain))
		if st.DNS.Health != "" {
			fmt.Fprintf(w, "  warning: %s", st.DNS.Health)
		}
		fmt.Fprintln(w)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tIP\tONLINE\tPATH\tVIA\tRTT\tRX\tTX\tHANDSHAKE")
	for _, p := range st.Peers {
		via := p.Endpoint
		if p.Path == "relay" {
			via = p.Relay
		}
		rtt, hs := "-", "-"
		if p.RTTMs > 0 {
			rtt = fmt.Sprintf("%.1fms", p.RTTMs)
		}
		if p.LastHandshake != nil {
			hs = time.Since(*p.LastHandshake).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\t%s\t%d\t%d\t%s\n", p.Name, strings.Join(p.IPs, ","), p.Online, p.Path, orDash(via), rtt, p.RxBytes, p.TxBytes, hs)
	}
	tw.Flush()
	printRoutes(w, st)
}

// printRoutes adds the routing lines: the exit node in use, the peers
// that offer one, and the primary router of each route.
func printRoutes(w io.Writer, st localapi.Status) {
	if st.Self.ExitNode != "" {
		state := "up"
		if !st.Self.ExitNodeUp {
			state = "unreachable: non-local traffic is stopped"
		}
		fmt.Fprintf(w, "exit node %s (%s)\n", st.Self.ExitNode, state)
	}
	var offers []string
	for _, p := range st.Peers {
		if p.ExitNodeOption {
			offers = append(offers, p.Name)
		}
		if len(p.Routes) > 0 {
			fmt.Fprintf(w, "routes via %s: %s\n", p.Name, strings.Join(p.Routes, ","))
		}
	}
	if len(offers) > 0 {
		fmt.Fprintf(w, "exit nodes offered: %s\n", strings.Join(offers, ","))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printNetcheck(w io.Writer, nc localapi.Netcheck) {
	udp := "blocked"
	if nc.UDP {
		udp = "ok"
	}
	nat := "easy (same mapping for every relay)"
	if nc.MappingVariesByDest {
		nat = "hard (mapping varies by destination)"
	}
	fmt.Fprintf(w, "UDP: %s\npublic address: %s\nNAT: %s\nport mapping: %s\npreferred relay: %s\n\n", udp, orDash(nc.PublicAddr), nat,
		orDash(nc.PortMapping), orDash(nc.PreferredRelay))
	regions := make([]string, 0, len(nc.RelayLatencyMS))
	for r := range nc.RelayLatencyMS {
		regions = append(regions, r)
	}
	sort.Slice(regions, func(i, j int) bool { return nc.RelayLatencyMS[regions[i]] < nc.RelayLatencyMS[regions[j]] })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tLATENCY")
	for _, r := range regions {
		fmt.Fprintf(tw, "%s\t%.1fms\n", r, nc.RelayLatencyMS[r])
	}
	tw.Flush()
}

// usageWrap is cli.Usagef for a message that wraps an error with %w.
func usageWrap(format string, a ...any) error {
	return fmt.Errorf("%w: %w", cli.ErrUsage, fmt.Errorf(format, a...))
}
