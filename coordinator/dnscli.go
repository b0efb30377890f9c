package coordinator

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/wiremesh/wiremesh/coordinator/dnsconf"
)

// runDNSAdmin runs `coordinator dns get` and `coordinator dns set FILE`.
func runDNSAdmin(ctx context.Context, cmd string, args []string, stdout io.Writer) error {
	name := "coordinator " + cmd
	var f struct{ AdminFlags }
	if cmd == "dns get" {
		if err := parseAdmin(name, "--state-dir DIR", &f, args, stdout, 0); err != nil {
			return err
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		var text []byte
		if err := adminCall(ctx, hc, "GET", AdminPathDNS, nil, &text); err != nil {
			return err
		}
		_, err = stdout.Write(text)
		return err
	}
	pos, err := parseAdminPos(name, "FILE --state-dir DIR", &f, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("dns set needs exactly one FILE (HuJSON; `coordinator dns get` prints the current settings)")
	}
	text, err := readLimited(pos[0], dnsconf.MaxFileSize)
	if err != nil {
		return fmt.Errorf("dns set: %w", err)
	}
	hc, err := adminClient(f.StateDir)
	if err != nil {
		return err
	}
	if err := adminCall(ctx, hc, "PUT", AdminPathDNS, text, nil); err != nil {
		return fmt.Errorf("dns settings rejected, the old ones stay in force: %w", err)
	}
	fmt.Fprintln(stdout, "dns settings set")
	return nil
}

// readLimited reads a file of at most max bytes.
func readLimited(path string, max int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, max)
	}
	return b, nil
}
