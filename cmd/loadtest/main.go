// Command loadtest drives Wiremesh components with synthetic load. See
// `loadtest --help` and BENCHMARKS.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/loadtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := loadtest.Command(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, cli.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
