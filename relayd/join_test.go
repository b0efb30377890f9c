package relayd_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/internal/freeport"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayd"
)

// freeUDP returns a loopback address whose port is free on UDP (QUIC) and
// on TCP (the fallback relayd opens on the same number).
func freeUDP(t *testing.T) string {
	return fmt.Sprintf("127.0.0.1:%d", freeport.Both(t))
}

// TestJoin: relayd --coordinator --join-key joins the fleet, takes the
// coordinator's admission key (a node's token works), heartbeats, reports
// draining on SIGTERM, and restarts from its saved join while the
// coordinator is down.
func TestJoin(t *testing.T) {
	coord := coordtest.Start(t)
	joinKey, err := coord.CreateJoinKey(context.Background(), "nyc", "New York")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	addr := freeUDP(t)
	start := func(args ...string) (context.CancelFunc, chan error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		base := []string{"--region", "nyc", "--listen", addr, "--public-addr", addr, "--state-dir", dir, "--drain-grace", "100ms"}
		go func() { done <- relayd.Command(ctx, append(base, args...), io.Discard, io.Discard) }()
		return cancel, done
	}
	relayState := func() string {
		for _, r := range coord.Relays() {
			if r.Addr == addr {
				return r.State
			}
		}
		return ""
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s never happened", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	stop, done := start("--coordinator", coord.URL(), "--join-key", joinKey)
	waitFor("relay in the map", func() bool { return relayState() == "up" })

	// A node token signed by the coordinator is accepted.
	var signer key.SigningPrivate
	if err := key.ReadKeyFile(filepath.Join(coord.Dir, "signing.key"), &signer); err != nil {
		t.Fatal(err)
	}
	pin, relayKey := "", key.RelayPublic{}
	for _, r := range coord.Relays() {
		if r.Addr == addr {
			pin = r.Pin
			relayKey, _ = key.ParseRelayPublic(r.Key)
		}
	}
	dial := func() error {
		node := key.NewNode()
		tok, _ := admit.Issue(signer, node.Public(), "", time.Now(), time.Hour)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := relayclient.Dial(ctx, relayclient.Config{
			Relay: relayclient.Relay{Addr: addr, Pin: pin, Key: relayKey, Region: "nyc"}, NodeKey: node,
			Token: func() []byte { return tok }, Datagrams: true,
		})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial(); err != nil {
		t.Fatalf("node with a coordinator token: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "join.json")); err != nil {
		t.Fatalf("join not saved: %v", err)
	}

	// SIGTERM: the relay drains and says so.
	stop()
	if err := <-done; err != nil {
		t.Fatalf("relayd: %v", err)
	}
	waitFor("relay marked draining", func() bool { return relayState() == "draining" })

	// Restart with the coordinator down and no join key: the saved join
	// keeps the relay trusting the coordinator's key.
	coord.Stop()
	stop, done = start()
	defer func() { stop(); <-done }()
	waitFor("restarted relay admits nodes", func() bool { return dial() == nil })
}

// TestStaticTrustSurvivesHeartbeat: a joined relay started with its own
// --trust-key keeps honouring that key's tokens after heartbeats; before
// the fix the first heartbeat replaced the trusted keys with the
// coordinator's.
func TestStaticTrustSurvivesHeartbeat(t *testing.T) {
	coord := coordtest.Start(t, func(c *coordinator.Config) { c.HeartbeatInterval = 50 * time.Millisecond })
	joinKey, err := coord.CreateJoinKey(context.Background(), "nyc", "New York")
	if err != nil {
		t.Fatal(err)
	}
	static := key.NewSigning()
	dir := t.TempDir()
	addr := freeUDP(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- relayd.Command(ctx, []string{"--region", "nyc", "--listen", addr, "--public-addr", addr, "--state-dir", dir,
			"--drain-grace", "100ms", "--coordinator", coord.URL(), "--join-key", joinKey, "--trust-key", static.Public().String()}, io.Discard, io.Discard)
	}()
	defer func() { cancel(); <-done }()
	var info coordinator.RelayInfo
	waitUntil(t, "relay in the map", func() bool {
		for _, r := range coord.Relays() {
			if r.Addr == addr && r.State == "up" {
				info = r
				return true
			}
		}
		return false
	})
	relayKey, _ := key.ParseRelayPublic(info.Key)
	dial := func() (*relayclient.Conn, error) {
		node := key.NewNode()
		tok, _ := admit.Issue(static, node.Public(), "", time.Now(), time.Hour)
		dctx, dcancel := context.WithTimeout(context.Background(), testWait)
		defer dcancel()
		return relayclient.Dial(dctx, relayclient.Config{
			Relay: relayclient.Relay{Addr: addr, Pin: info.Pin, Key: relayKey, Region: "nyc"}, NodeKey: node,
			Token: func() []byte { return tok },
		})
	}
	first, err := dial()
	if err != nil {
		t.Fatalf("static-key token refused at start: %v", err)
	}
	defer first.Close()
	// A heartbeat reporting the client proves the relay has heard back
	// from the coordinator since.
	waitUntil(t, "a heartbeat after the first client", func() bool {
		for _, r := range coord.Relays() {
			if r.Addr == addr && r.Clients == 1 {
				return true
			}
		}
		return false
	})
	waitUntil(t, "another heartbeat", func() bool {
		for _, r := range coord.Relays() {
			if r.Addr == addr && r.LastHeartbeat.After(info.LastHeartbeat.Add(100*time.Millisecond)) {
				return true
			}
		}
		return false
	})
	second, err := dial()
	if err != nil {
		t.Fatalf("static-key token refused after heartbeats: %v", err)
	}
	second.Close()
}
