// Command meshnode is the Wiremesh node daemon and its CLI. See
// docs/meshnode.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/meshnode"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	code, err := meshnode.Command(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, cli.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshnode:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}
