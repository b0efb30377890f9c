package coordinator

import (
	"fmt"
	"io"
	"os"

	"github.com/wiremesh/wiremesh/coordinator/dnsconf"
)

// dnsGetCommand is `coordinator dns get`: the settings in force, as JSON.
func dnsGetCommand() adminCommand {
	return &admin[plainFlags, []byte]{
		cmd: "dns get", usage: "--state-dir DIR",
		request: func(*plainFlags, []string) (string, string, any, error) { return "GET", AdminPathDNS, nil, nil },
		print: func(w io.Writer, _ *plainFlags, _ []string, text *[]byte) error {
			_, err := w.Write(*text)
			return err
		},
	}
}

// dnsSetCommand is `coordinator dns set FILE`: replace the settings with a
// HuJSON file; a bad one is refused and the old settings stay in force.
func dnsSetCommand() adminCommand {
	return &admin[plainFlags, noBody]{
		cmd: "dns set", usage: "FILE --state-dir DIR", args: 1,
		argsErr: "dns set needs exactly one FILE (HuJSON; `coordinator dns get` prints the current settings)",
		request: func(_ *plainFlags, pos []string) (string, string, any, error) {
			text, err := readLimited(pos[0], dnsconf.MaxFileSize)
			if err != nil {
				return "", "", nil, fmt.Errorf("dns set: %w", err)
			}
			return "PUT", AdminPathDNS, text, nil
		},
		wrap: func(err error) error { return fmt.Errorf("dns settings rejected, the old ones stay in force: %w", err) },
		print: func(w io.Writer, _ *plainFlags, _ []string, _ *noBody) error {
			_, err := fmt.Fprintln(w, "dns settings set")
			return err
		},
	}
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
