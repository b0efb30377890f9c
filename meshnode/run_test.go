package meshnode

import (
	"context"
	"errors"
	"github.com/wiremesh/wiremesh/internal/poll"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/tlspin"
)

// deadCoordinator returns the URL of a coordinator that accepts
// connections and never answers, and a well-formed auth key for it.
func deadCoordinator(t *testing.T) (string, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	pin := tlspin.Prefix + strings.Repeat("A", 43)
	if !tlspin.ValidPin(pin) {
		t.Fatalf("test pin %q is not valid", pin)
	}
	return "http://" + ln.Addr().String(), netmap.FormatAuthKey(netmap.NewSecret(), pin)
}

// runAsync starts Run and returns its result channel.
func runAsync(ctx context.Context, cfg Config) <-chan error {
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	return done
}

// waitRun waits for Run to return; a node that does not stop within the
// bound hangs (the bound is a hang detector, not a timing assertion).
func waitRun(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return: the node hangs on shutdown")
		return nil
	}
}

func waitSocket(t *testing.T, api *localapi.Client) {
	t.Helper()
	poll.Until(t, "local API up", func() bool {
		_, err := api.Status(context.Background())
		return err == nil
	})
}

// TestDownBeforeFirstNetmap stops a node that never reached its
// coordinator, once by `meshnode down` and once by cancelling its context
// (SIGTERM): both must return, and leave no socket behind.
func TestDownBeforeFirstNetmap(t *testing.T) {
	for _, how := range []string{"down", "cancel"} {
		t.Run(how, func(t *testing.T) {
			url, ak := deadCoordinator(t)
			dir := t.TempDir()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := runAsync(ctx, Config{Coordinator: url, AuthKey: ak, StateDir: dir, Userspace: true, Log: testLogger(t, how)})
			api := localapi.NewClient(filepath.Join(dir, localapi.SocketName))
			waitSocket(t, api)
			if how == "down" {
				if err := api.Down(context.Background()); err != nil {
					t.Fatal(err)
				}
			} else {
				cancel()
			}
			if err := waitRun(t, done); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(dir, localapi.SocketName)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("socket left behind: %v", err)
			}
		})
	}
}

// TestRunEarlyReturnCleansUp fails start-up after the local API is up (the
// metrics address is unusable): Run must return the error, stop what it
// started and remove the socket.
func TestRunEarlyReturnCleansUp(t *testing.T) {
	url, ak := deadCoordinator(t)
	dir := t.TempDir()
	err := waitRun(t, runAsync(context.Background(), Config{Coordinator: url, AuthKey: ak, StateDir: dir,
		Userspace: true, Metrics: "256.0.0.1:http-nope", Log: testLogger(t, "early")}))
	if err == nil {
		t.Fatal("Run with an unusable metrics address succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, localapi.SocketName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
}

// TestMalformedAuthKey: a bad auth key is a one-line error at start-up,
// not a retry loop.
func TestMalformedAuthKey(t *testing.T) {
	url, good := deadCoordinator(t)
	badPin := good[:strings.LastIndex(good, ".")+1] + "not-a-pin"
	for _, ak := range []string{"x", badPin} {
		err := waitRun(t, runAsync(context.Background(), Config{Coordinator: url, AuthKey: ak, StateDir: t.TempDir(),
			Userspace: true, Log: testLogger(t, "badkey")}))
		if !errors.Is(err, netmap.ErrBadAuthKey) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("auth key %q: Run returned %v, want a one-line ErrBadAuthKey", ak, err)
		}
	}
}

// TestSecondRunRefuses: a second daemon on the same state directory must
// refuse to start and leave the first one's socket alone.
func TestSecondRunRefuses(t *testing.T) {
	url, ak := deadCoordinator(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	first := runAsync(ctx, Config{Coordinator: url, AuthKey: ak, StateDir: dir, Userspace: true, Log: testLogger(t, "first")})
	api := localapi.NewClient(filepath.Join(dir, localapi.SocketName))
	waitSocket(t, api)
	err := waitRun(t, runAsync(context.Background(), Config{Coordinator: url, AuthKey: ak, StateDir: dir,
		Userspace: true, Log: testLogger(t, "second")}))
	if !errors.Is(err, ErrStateDirLocked) {
		t.Fatalf("second Run: %v, want ErrStateDirLocked", err)
	}
	if _, err := api.Status(context.Background()); err != nil {
		t.Fatalf("first node's API after the second start: %v", err)
	}
	cancel()
	if err := waitRun(t, first); err != nil {
		t.Fatal(err)
	}
}
