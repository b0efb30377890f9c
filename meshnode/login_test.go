package meshnode

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
)

// loginNode starts a node with no auth key against s and returns the URL
// it prints and the channel Run's result arrives on.
func loginNode(t *testing.T, s *coordtest.Server, hostname string) (string, chan error, context.CancelFunc) {
	t.Helper()
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := Config{Coordinator: s.URL(), CoordinatorPin: s.Pin(), Hostname: hostname, StateDir: t.TempDir(),
		Userspace: true, Socks5: freeAddr(t), Log: testLogger(t, hostname), LoginOut: pw,
		EndpointPrefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	go func() { done <- Run(ctx, cfg); pw.Close() }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Errorf("node %s did not stop", hostname)
		}
	})
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(sc.Text(), "To authenticate, visit: "); ok {
			go io.Copy(io.Discard, pr)
			return u, done, cancel
		}
	}
	t.Fatalf("node %s never printed its login URL", hostname)
	return "", nil, nil
}

// TestInteractiveLoginRegistersNode: a node started without --authkey
// prints a URL; once a console user approves it, the node registers as
// that user and streams.
func TestInteractiveLoginRegistersNode(t *testing.T) {
	s := coordtest.Start(t, func(c *coordinator.Config) { c.WebListen = "127.0.0.1:0" })
	ctx := context.Background()
	if err := s.CreateUser(ctx, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	u, _, _ := loginNode(t, s, "laptop")
	code, ok := strings.CutPrefix(u, s.WebURL()+"/login/")
	if !ok {
		t.Fatalf("login URL %q is not on the console %s", u, s.WebURL())
	}
	if err := s.ApproveLogin(ctx, code, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		nodes := s.Nodes()
		if len(nodes) == 1 && nodes[0].Online {
			if nodes[0].User != "alice@example.com" || nodes[0].Hostname != "laptop" {
				t.Fatalf("node after approval: %+v", nodes[0])
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node never came online after approval: %+v", nodes)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestInteractiveLoginExpires: a login nobody approves ends the daemon
// with an error saying so.
func TestInteractiveLoginExpires(t *testing.T) {
	s := coordtest.Start(t, func(c *coordinator.Config) {
		c.WebListen = "127.0.0.1:0"
		c.LoginLifetime = 2 * time.Second
	})
	_, done, _ := loginNode(t, s, "forgotten")
	select {
	case err := <-done:
		if !errors.Is(err, coordclient.ErrLoginExpired) {
			t.Fatalf("Run after an unapproved login: %v", err)
		}
		done <- nil // for the cleanup
	case <-time.After(30 * time.Second):
		t.Fatal("the node kept waiting after its login expired")
	}
	if n := s.Nodes(); len(n) != 0 {
		t.Fatalf("nodes: %+v", n)
	}
}
