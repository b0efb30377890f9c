package lab

import (
	"errors"
	"os"
	"os/exec"
	"testing"
)

// Check reports why the lab cannot run here, or nil if it can: it needs
// root, /dev/net/tun, ip and nft.
func Check() error {
	if os.Geteuid() != 0 {
		return errors.New("lab needs root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return errors.New("lab needs /dev/net/tun")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return errors.New("lab needs " + tool + " (run `make deps`)")
		}
	}
	return nil
}

// Require skips tb when the lab cannot run here, or fails it when the
// environment says CI=true: in CI a lab test that would skip is a failure.
func Require(tb testing.TB) {
	tb.Helper()
	if err := Check(); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("CI=true and %v", err)
		}
		tb.Skipf("skipping lab test: %v", err)
	}
}

// New returns a Lab for tb, which Close removes when the test ends, pass,
// fail or panic. It skips or fails as Require does, and first sweeps
// namespaces left by killed runs.
func New(tb testing.TB) *Lab {
	tb.Helper()
	Require(tb)
	if swept, err := Sweep(); err != nil {
		tb.Logf("lab: sweep: %v", err)
	} else if len(swept) > 0 {
		tb.Logf("lab: swept %d stale namespaces", len(swept))
	}
	l, err := Open()
	if err != nil {
		tb.Fatalf("lab: %v", err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("lab: close: %v", err)
		}
	})
	return l
}
