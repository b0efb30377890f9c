// Package coordtest runs a real coordinator on loopback for tests of the
// coordinator itself and of its clients (nodes, relays, load tests).
package coordtest

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// Server is a coordinator serving on 127.0.0.1 with its state in a
// temporary directory.
type Server struct {
	*coordinator.Server
	Dir      string
	Registry *prometheus.Registry
	HTTP     *http.Client // trusts the server's pin
	Info     netmap.ServerInfo
	cancel   context.CancelFunc
	stopped  bool // Run returned within stopWait
	done     chan error
	stopOnce sync.Once
}

// Start starts a coordinator; opts adjust its config. It stops when the
// test ends. Pass the same Dir (via opts) to restart on existing state.
func Start(t testing.TB, opts ...func(*coordinator.Config)) *Server {
	t.Helper()
	cfg := coordinator.Config{Listen: "127.0.0.1:0", StateDir: t.TempDir(), NoAdminSocket: true}
	for _, o := range opts {
		o(&cfg)
	}
	reg := prometheus.NewRegistry()
	cfg.Registry = reg
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := coordinator.New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("coordinator.New: %v", err)
	}
	s := &Server{Server: srv, Dir: cfg.StateDir, Registry: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		if !s.stop() {
			// Said plainly: otherwise TempDir's RemoveAll fails later
			// with "directory not empty" and hides the cause.
			t.Errorf("coordtest: coordinator still running %v after cancel", stopWait)
		}
	})
	s.HTTP, err = coordclient.NewHTTPClient(srv.URL(), srv.Pin())
	if err != nil {
		t.Fatal(err)
	}
	s.Info, err = coordclient.FetchInfo(ctx, s.HTTP, srv.URL())
	if err != nil {
		t.Fatalf("fetch info: %v", err)
	}
	return s
}

// stopWait bounds how long Stop waits for Run to return.
const stopWait = 30 * time.Second

// Stop stops the server and waits for it. Safe to call twice.
func (s *Server) Stop() { s.stop() }

// stop stops the server and reports whether Run returned in time.
func (s *Server) stop() bool {
	s.stopOnce.Do(func() {
		s.HTTP.CloseIdleConnections() // else HTTP/2 shutdown waits out its GOAWAY timer
		s.cancel()
		select {
		case <-s.done:
			s.stopped = true
		case <-time.After(stopWait):
		}
		s.HTTP.CloseIdleConnections()
	})
	return s.stopped
}

// AuthKey makes an auth key.
func (s *Server) AuthKey(t testing.TB, req coordinator.AuthKeyRequest) string {
	t.Helper()
	k, err := s.CreateAuthKey(context.Background(), req)
	if err != nil {
		t.Fatalf("create auth key: %v", err)
	}
	return k.Key
}

// Node is a simulated node.
type Node struct {
	Key    key.NodePrivate
	Disco  key.DiscoPrivate
	Client *coordclient.Client
	Self   netmap.Node
}

// NewClient returns an unregistered node with fresh keys.
func (s *Server) NewClient() *Node {
	nk := key.NewNode()
	return &Node{Key: nk, Disco: key.NewDisco(), Client: coordclient.New(s.URL(), s.HTTP, s.Info, nk)}
}

// Register makes a node and registers it with authKey.
func (s *Server) Register(t testing.TB, authKey, hostname string) *Node {
	t.Helper()
	n := s.NewClient()
	resp, err := n.Client.Register(context.Background(), authKey, n.Disco.Public(), hostname, "linux")
	if err != nil {
		t.Fatalf("register %s: %v", hostname, err)
	}
	n.Self = resp.Node
	return n
}
