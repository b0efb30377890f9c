package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/wiremesh/wiremesh/key"
)

type keygenOpts struct {
	Out string `flag:"out" env:"OUT" help:"file to write the signing private key to (mode 0600)"`
}

// runKeygen makes a coordinator-style signing key for benchmarks: the
// relay trusts the printed public key (--trust-key) and loadtest mints
// tokens from the file (--signing-key-file).
func runKeygen(ctx context.Context, args []string, out, errOut io.Writer) error {
	o := keygenOpts{}
	if err := parse("keygen", &o, args, out, "loadtest keygen --out FILE   (prints the signkey:... to trust)"); err != nil {
		return err
	}
	if o.Out == "" {
		return errors.New("loadtest keygen: --out is required")
	}
	k, err := key.LoadOrCreate(o.Out, key.NewSigning)
	if err != nil {
		return fmt.Errorf("loadtest keygen: %w", err)
	}
	fmt.Fprintln(out, k.Public().String())
	return nil
}
