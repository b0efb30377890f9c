package loadtest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayd"
)

// startLocalRelay runs a relay inside this process on 127.0.0.1 with a
// throwaway state dir and signing key. Handy for quick runs and tests;
// BENCHMARKS.md figures use a separate relayd process.
func startLocalRelay(ctx context.Context, errOut io.Writer) (*target, error) {
	dir, err := os.MkdirTemp("", "loadtest-relay-")
	if err != nil {
		return nil, err
	}
	signer := key.NewSigning()
	s, err := relayd.New(relayd.Config{
		Region: "lt", Listen: "127.0.0.1:0", ListenFast: "127.0.0.1:0", StateDir: dir,
		Trusted: []key.SigningPublic{signer.Public()},
	}, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { defer close(done); s.Run(rctx) }()
	fmt.Fprintf(errOut, "loadtest: started an in-process relay on %s\n", s.Addr())
	return &target{
		relay:  relayclient.Relay{Addr: s.Addr().String(), Pin: s.Pin(), Key: s.PublicKey(), Region: "lt"},
		signer: signer,
		region: "lt",
		stop:   func() { cancel(); <-done; os.RemoveAll(dir) },
	}, nil
}
