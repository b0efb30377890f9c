package nodecli

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/netmap"
)

func TestCommandExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
	}{
		{nil, 2},
		{[]string{"frobnicate"}, 2},
		{[]string{"status"}, 2},
		{[]string{"ping", "--state-dir", t.TempDir()}, 2},
		{[]string{"whois", "--state-dir", t.TempDir(), "not-an-ip"}, 2},
		{[]string{"run"}, 2},
		{[]string{"version"}, 0},
		{[]string{"--help"}, 0},
		{[]string{"status", "--state-dir", t.TempDir()}, 1}, // no daemon there
	} {
		var out bytes.Buffer
		err := Command(context.Background(), tc.args, &out, &out)
		if got := cli.ExitCode(err); got != tc.code {
			t.Errorf("meshnode %v: exit %d (%v), want %d", tc.args, got, err, tc.code)
		}
	}
}

// TestRunBadAuthKey: a malformed auth key is an error at once (exit 1).
func TestRunBadAuthKey(t *testing.T) {
	var out bytes.Buffer
	err := Command(context.Background(), []string{"run", "--userspace", "--state-dir", t.TempDir(),
		"--coordinator", "http://127.0.0.1:1", "--authkey", "x"}, &out, &out)
	if !errors.Is(err, netmap.ErrBadAuthKey) || cli.ExitCode(err) != 1 {
		t.Fatalf("run --authkey x: %v", err)
	}
}
