// Command coordinator is the Wiremesh control plane: `coordinator serve`
// runs it, the other subcommands administer a running one through its admin
// socket. See docs/coordinator.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/wiremesh/wiremesh/coordinator"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := coordinator.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
