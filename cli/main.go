package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Command is the one entry shape of every Wiremesh binary: it runs with
// args (without the program name) until done or ctx ends (SIGTERM or
// SIGINT), and returns nil, ErrHelp, an error wrapping ErrUsage (exit 2),
// or any other error (exit 1).
type Command func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// ErrUsage marks a command-line mistake: the binary exits 2.
var ErrUsage = errors.New("usage")

// Usagef returns an error wrapping ErrUsage.
func Usagef(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, a...))
}

// ExitCode is the process exit code for cmd's result.
func ExitCode(err error) int {
	switch {
	case err == nil, errors.Is(err, ErrHelp):
		return 0
	case errors.Is(err, ErrUsage):
		return 2
	}
	return 1
}

// Main is every cmd/*/main.go: it runs cmd with the process's arguments
// and a context that SIGTERM or SIGINT ends, prints an error as one line
// "name: error" on stderr, and exits with ExitCode.
func Main(name string, cmd Command) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	err := cmd(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, ErrHelp) {
		fmt.Fprintf(os.Stderr, "%s: %s\n", name, OneLine(err.Error()))
	}
	os.Exit(ExitCode(err))
}

// OneLine folds an error message onto one line.
func OneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
