// Command loadtest runs Wiremesh load generators. Each mode prints figures,
// or one JSON object with --json. See BENCHMARKS.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/loadtest"
)

const usage = `usage: loadtest MODE [flags]

modes:
  coordinator   simulate nodes registering and streaming netmaps; time fan-out
  version       print the version

Each mode takes --help.
`

// modes maps a mode name to its runner.
var modes = map[string]func(context.Context, []string, io.Writer) error{
	"coordinator": loadtest.RunCoordinator,
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	mode := os.Args[1]
	switch mode {
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	case "version", "--version":
		fmt.Println("loadtest", cli.Version())
		return
	}
	run, ok := modes[mode]
	if !ok {
		fmt.Fprintf(os.Stderr, "loadtest: unknown mode %q\n%s", mode, usage)
		os.Exit(2)
	}
	if err := run(ctx, os.Args[2:], os.Stdout); err != nil {
		if errors.Is(err, cli.ErrHelp) {
			return
		}
		fmt.Fprintf(os.Stderr, "loadtest %s: %v\n", mode, err)
		stop()
		os.Exit(1)
	}
}
