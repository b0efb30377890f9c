// Command relayd is the Wiremesh relay server. See docs/relayd.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/relayd"
)

func main() {
	// SIGTERM and SIGINT end the context: the relay drains, then exits.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := relayd.Command(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, cli.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
