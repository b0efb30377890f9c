package relayd_test

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayd"
)

// TestRevocationRealCoordinator deletes a node on a real coordinator and
// checks that the relay closes its session (the long poll end to end).
func TestRevocationRealCoordinator(t *testing.T) {
	coord := coordtest.Start(t, func(c *coordinator.Config) { c.HeartbeatInterval = 100 * time.Millisecond })
	joinKey, err := coord.CreateJoinKey(context.Background(), "nyc", "New York")
	if err != nil {
		t.Fatal(err)
	}
	dir, addr := t.TempDir(), freeUDP(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- relayd.Command(ctx, []string{"--region", "nyc", "--listen", addr, "--public-addr", addr, "--state-dir", dir,
			"--drain-grace", "100ms", "--coordinator", coord.URL(), "--join-key", joinKey}, io.Discard, io.Discard)
	}()
	defer func() { cancel(); <-done }()
	var info coordinator.RelayInfo
	waitUntil(t, "relay up", func() bool {
		for _, r := range coord.Relays() {
			if r.Addr == addr && r.State == "up" {
				info = r
				return true
			}
		}
		return false
	})
	relayKey, _ := key.ParseRelayPublic(info.Key)
	var signer key.SigningPrivate
	if err := key.ReadKeyFile(filepath.Join(coord.Dir, "signing.key"), &signer); err != nil {
		t.Fatal(err)
	}
	ak := coord.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	for i := range 5 {
		n := coord.Register(t, ak, "victim")
		tok, _ := admit.Issue(signer, n.Key.Public(), "", time.Now(), time.Hour)
		dctx, dcancel := context.WithTimeout(context.Background(), testWait)
		c, err := relayclient.Dial(dctx, relayclient.Config{
			Relay: relayclient.Relay{Addr: addr, Pin: info.Pin, Key: relayKey, Region: "nyc"}, NodeKey: n.Key,
			Token: func() []byte { return tok }, Datagrams: true,
		})
		dcancel()
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := coord.DeleteNode(context.Background(), n.Self.Name); err != nil {
			t.Fatal(err)
		}
		select {
		case <-c.Done():
			t.Logf("run %d: nodes delete → relay closed the session: %v", i, time.Since(start))
		case <-time.After(testWait):
			t.Fatal("session still open")
		}
	}
}
