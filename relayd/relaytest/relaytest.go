// Package relaytest runs real relays on loopback for tests of the relay,
// its client library and the programs built on them. Each relay gets a
// fresh state directory and trusts a fresh coordinator signing key, from
// which the test mints admission tokens.
package relaytest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayd"
)

// Region is the region code test relays serve.
const Region = "tst"

// Relay is a running test relay.
type Relay struct {
	Server   *relayd.Server
	Registry *prometheus.Registry
	Signer   key.SigningPrivate
	Config   relayd.Config
	cancel   context.CancelFunc
	done     chan struct{}
}

// Start starts a relay on 127.0.0.1 with an ephemeral port and stops it
// when the test ends. mod may adjust the config before the relay starts.
func Start(t testing.TB, mod func(*relayd.Config)) *Relay {
	t.Helper()
	signer := key.NewSigning()
	cfg := relayd.Config{
		Region:     Region,
		Listen:     "127.0.0.1:0",
		StateDir:   t.TempDir(),
		Trusted:    []key.SigningPublic{signer.Public()},
		DrainGrace: 100 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	return StartWith(t, cfg, signer)
}

// StartWith starts a relay with exactly cfg; signer mints its tokens.
func StartWith(t testing.TB, cfg relayd.Config, signer key.SigningPrivate) *Relay {
	t.Helper()
	var (
		reg *prometheus.Registry
		s   *relayd.Server
		err error
	)
	// With an ephemeral UDP port the TCP fallback takes the same port
	// number, which another process may hold: pick again a few times.
	for range 5 {
		reg = prometheus.NewRegistry()
		s, err = relayd.New(cfg, Logger(), reg)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || !strings.HasSuffix(cfg.Listen, ":0") {
			break
		}
	}
	if err != nil {
		t.Fatalf("relaytest: start relay: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{Server: s, Registry: reg, Signer: signer, Config: cfg, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		s.Run(ctx)
	}()
	t.Cleanup(r.Stop)
	return r
}

// Logger returns a logger for test relays: silent unless
// WIREMESH_TEST_LOG=1.
func Logger() *slog.Logger {
	if os.Getenv("WIREMESH_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Stop drains and stops the relay and waits for it. Safe to call twice.
func (r *Relay) Stop() {
	r.cancel()
	<-r.done
}

// Done is closed once the relay's Run has returned.
func (r *Relay) Done() <-chan struct{} { return r.done }

// Info returns what a client needs to reach the relay.
func (r *Relay) Info() relayclient.Relay {
	return relayclient.Relay{Addr: r.Server.Addr().String(), Pin: r.Server.Pin(), Key: r.Server.PublicKey(), Region: Region}
}

// Token mints a valid admission token for node.
func (r *Relay) Token(node key.NodePublic) []byte {
	tok, err := admit.Issue(r.Signer, node, Region, time.Now(), time.Hour)
	if err != nil {
		panic(err)
	}
	return tok
}

// ClientConfig returns a client config for node with a valid token.
func (r *Relay) ClientConfig(node key.NodePrivate, datagrams bool) relayclient.Config {
	tok := r.Token(node.Public())
	return relayclient.Config{
		Relay:     r.Info(),
		NodeKey:   node,
		Token:     func() []byte { return tok },
		Datagrams: datagrams,
	}
}
