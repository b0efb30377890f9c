// Package loadtest drives Wiremesh components with synthetic nodes and
// reports throughput, latency and cost figures (BENCHMARKS.md records
// them). Each mode is one entry in the modes table; `loadtest MODE --help`
// lists a mode's flags, and every mode takes --json to print one JSON
// object with its figures on stdout. Progress goes to stderr.
package loadtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayclient"
)

// mode is one loadtest subcommand.
type mode struct {
	summary string
	run     func(ctx context.Context, args []string, out, errOut io.Writer) error
}

// modes lists every subcommand. Adding a mode is adding a line here.
var modes = map[string]mode{
	"relay":   {"N client pairs through one relay: packets/s, Gbit/s, latency, loss", runRelay},
	"connect": {"M concurrent idle relay clients: connects/s and relay memory per client", runConnect},
	"udpfwd":  {"a plain Go UDP forwarder, the baseline for `loadtest relay --baseline-udp`", runUDPFwd},
	"flood":   {"one pair through a relay at full speed, a flooding client (what relay --flood runs in a process of its own)", runFlood},
	"keygen":  {"make a signing key for relayd --trust-key and --signing-key-file", runKeygen},
	"coordinator": {"N simulated nodes registering and streaming netmaps: fan-out p50/p99, memory",
		func(ctx context.Context, args []string, out, _ io.Writer) error {
			return RunCoordinator(ctx, args, out)
		}},
}

// Command runs loadtest with args (without the program name).
func Command(ctx context.Context, args []string, out, errOut io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(out)
		if len(args) == 0 {
			return errors.New("loadtest: give a mode")
		}
		return cli.ErrHelp
	}
	if args[0] == "version" {
		fmt.Fprintln(out, cli.Version())
		return nil
	}
	m, ok := modes[args[0]]
	if !ok {
		usage(errOut)
		return fmt.Errorf("loadtest: unknown mode %q", args[0])
	}
	return m.run(ctx, args[1:], out, errOut)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: loadtest MODE [flags]   (loadtest MODE --help for flags)\n\nmodes:")
	names := make([]string, 0, len(modes))
	for n := range modes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, modes[n].summary)
	}
}

// RelayFlags select the relay under test and mint its admission tokens.
type RelayFlags struct {
	Relay          string `flag:"relay" env:"RELAY" help:"relay host:port (empty: start one in this process)"`
	Pin            string `flag:"pin" env:"PIN" help:"relay certificate pin (first line of relayd pin)"`
	RelayKey       string `flag:"relay-key" env:"RELAY_KEY" help:"relay key relaykey:... (second line of relayd pin)"`
	SigningKeyFile string `flag:"signing-key-file" env:"SIGNING_KEY_FILE" help:"coordinator signing key (signpriv:...) the relay trusts, to mint tokens"`
	Region         string `flag:"region" env:"REGION" help:"region the tokens are for (empty: any)"`
	TCP            bool   `flag:"tcp" env:"TCP" help:"use the TLS-over-TCP fallback instead of QUIC"`
}

// target is a relay to test and a way to mint tokens for it.
type target struct {
	relay  relayclient.Relay
	signer key.SigningPrivate
	region string
	tcp    bool
	stop   func()
}

func (f RelayFlags) target(ctx context.Context, errOut io.Writer) (*target, error) {
	if f.Relay == "" {
		return startLocalRelay(ctx, errOut)
	}
	if f.Pin == "" || f.RelayKey == "" || f.SigningKeyFile == "" {
		return nil, errors.New("loadtest: --relay needs --pin, --relay-key and --signing-key-file")
	}
	rk, err := key.ParseRelayPublic(f.RelayKey)
	if err != nil {
		return nil, fmt.Errorf("loadtest: --relay-key: %w", err)
	}
	var sk key.SigningPrivate
	if err := key.ReadKeyFile(f.SigningKeyFile, &sk); err != nil {
		return nil, fmt.Errorf("loadtest: --signing-key-file: %w", err)
	}
	return &target{relay: relayclient.Relay{Addr: f.Relay, Pin: f.Pin, Key: rk, Region: f.Region}, signer: sk, region: f.Region, tcp: f.TCP, stop: func() {}}, nil
}

// config returns a client config for a fresh node key.
func (t *target) config(datagrams bool) (relayclient.Config, error) {
	nk := key.NewNode()
	tok, err := admit.Issue(t.signer, nk.Public(), t.region, time.Now(), time.Hour)
	if err != nil {
		return relayclient.Config{}, err
	}
	return relayclient.Config{Relay: t.relay, NodeKey: nk, Token: func() []byte { return tok }, Datagrams: datagrams, DisableQUIC: t.tcp}, nil
}

// emit prints v as one JSON object, or as indented text lines.
func emit(out io.Writer, asJSON bool, v any, text func(io.Writer)) error {
	if asJSON {
		return json.NewEncoder(out).Encode(v)
	}
	text(out)
	return nil
}

// progress prints a status line to w every interval until ctx ends.
func progress(ctx context.Context, w io.Writer, interval time.Duration, line func() string) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				fmt.Fprintln(w, line())
			}
		}
	}()
	return func() { cancel(); <-done }
}

func parse(name string, cfg any, args []string, out io.Writer, usage string) error {
	_, err := cli.Parse("loadtest "+name, "LOADTEST_", usage, cfg, args, out)
	return err
}

func round(f float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	if f >= 0 {
		return float64(int64(f*p+0.5)) / p
	}
	return float64(int64(f*p-0.5)) / p
}
