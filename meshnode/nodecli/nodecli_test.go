package nodecli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
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
		{[]string{"dns", "--state-dir", t.TempDir()}, 2},
		{[]string{"dns", "--state-dir", t.TempDir(), "lookup", "b"}, 2},
		{[]string{"dns", "--state-dir", t.TempDir(), "query", "b", "A", "extra"}, 2},
		{[]string{"dns", "--state-dir", t.TempDir(), "query", "b"}, 1}, // no daemon there
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

// TestRunRefusesBadUserspaceFlags: a bad --forward-ports (or its variable)
// and a non-loopback --socks5 without --socks5-allow-remote stop `meshnode
// run` at once with one line naming the flag.
func TestRunRefusesBadUserspaceFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  string
		want string
	}{
		{"port 0", []string{"--forward-ports", "0"}, "", "--forward-ports"},
		{"reversed range", []string{"--forward-ports", "90-80"}, "", "--forward-ports"},
		{"variable", nil, "22,x", "--forward-ports"},
		{"remote socks5", []string{"--socks5", "0.0.0.0:1080"}, "", "--socks5"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("MESHNODE_FORWARD_PORTS", tc.env)
			}
			args := append([]string{"run", "--state-dir", t.TempDir(), "--userspace"}, tc.args...)
			err := Command(context.Background(), args, io.Discard, io.Discard)
			if code := cli.ExitCode(err); code != 2 || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("exit %d, err %v", code, err)
			}
		})
	}
}

// TestRunFlagsPortMapping: --port-mapping is on by default, MESHNODE_PORT_MAPPING
// turns it off, and the flag beats the variable.
func TestRunFlagsPortMapping(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  string
		args []string
		want bool
	}{
		{"default", "", nil, true},
		{"flag off", "", []string{"--port-mapping=false"}, false},
		{"variable off", "false", nil, false},
		{"flag beats variable", "false", []string{"--port-mapping=true"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("MESHNODE_PORT_MAPPING", tc.env)
			}
			var f RunFlags
			if _, err := cli.Parse("meshnode run", "MESHNODE_", usage, &f, tc.args, io.Discard); err != nil {
				t.Fatal(err)
			}
			if f.PortMapping != tc.want {
				t.Fatalf("PortMapping %v, want %v", f.PortMapping, tc.want)
			}
		})
	}
}
