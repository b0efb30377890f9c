package relayd_test

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayd"
	"github.com/wiremesh/wiremesh/tlspin"
)

func TestCommandPin(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := relayd.Command(context.Background(), []string{"pin", "--state-dir", dir}, &out, &out); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "sha256/") || !strings.HasPrefix(lines[1], "relaykey:") {
		t.Fatalf("pin output %q", out.String())
	}
	_, cert, err := relayd.LoadState(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := tlspin.Pin(cert.Leaf); got != lines[0] {
		t.Fatalf("pin %s, certificate's pin %s", lines[0], got)
	}
	if _, err := key.ParseRelayPublic(lines[1]); err != nil {
		t.Fatal(err)
	}
}

func TestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	sk := key.NewSigning().Public().String()
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"no region", []string{"--state-dir", dir, "--trust-key", sk}, "--region"},
		{"no trust", []string{"--state-dir", dir, "--region", "x"}, "trust anchor"},
		{"bad trust key", []string{"--state-dir", dir, "--region", "x", "--trust-key", "signkey:zz"}, "--trust-key"},
		{"mesh without secret", []string{"--state-dir", dir, "--region", "x", "--trust-key", sk, "--mesh-with", "127.0.0.1:1"}, "mesh-secret"},
		{"pprof on all interfaces", []string{"--state-dir", dir, "--region", "x", "--trust-key", sk, "--pprof-listen", ":6060"}, "loopback"},
		{"pprof on a public address", []string{"--state-dir", dir, "--region", "x", "--trust-key", sk, "--pprof-listen", "198.18.0.1:6060"}, "loopback"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"bad flag", []string{"--nope"}, "nope"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			err := relayd.Command(context.Background(), tc.args, &out, &out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want mention of %q", err, tc.want)
			}
		})
	}
}

func TestCommandServesAndDrains(t *testing.T) {
	dir := t.TempDir()
	tf := filepath.Join(dir, "trust")
	os.WriteFile(tf, []byte("# coordinator\n"+key.NewSigning().Public().String()+"\n"), 0o600)
	ml, _ := net.Listen("tcp", "127.0.0.1:0")
	maddr := ml.Addr().String()
	ml.Close()
	t.Setenv("RELAYD_METRICS_LISTEN", maddr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		// --listen-tcp on its own ephemeral port: the default (the UDP
		// port's number on TCP) may be taken by another package's test.
		done <- relayd.Command(ctx, []string{"--region", "x", "--state-dir", dir, "--listen", "127.0.0.1:0",
			"--listen-tcp", "127.0.0.1:0", "--trust-key-file", tf, "--drain-grace", "50ms"}, &bytes.Buffer{}, &bytes.Buffer{})
	}()
	waitUntil(t, "metrics endpoint", func() bool {
		select {
		case err := <-done: // it should not stop on its own
			t.Fatalf("relayd exited before serving: %v", err)
		default:
		}
		c, err := net.Dial("tcp", maddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(testWait):
		t.Fatal("relayd did not exit after its context ended")
	}
}
