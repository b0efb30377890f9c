package relayd

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
)

// fakeConn is a client connection with no network under it, for driving
// a client's frame handling directly. Writes are kept (up to a bound) or
// block while blocked is set, reads block until close.
type fakeConn struct {
	mu      sync.Mutex
	written int
	closed  chan struct{}
	once    sync.Once
	block   bool
}

func newFakeConn() *fakeConn { return &fakeConn{closed: make(chan struct{})} }

func (f *fakeConn) Read([]byte) (int, error) { <-f.closed; return 0, io.EOF }
func (f *fakeConn) Write(b []byte) (int, error) {
	f.mu.Lock()
	block := f.block
	f.written += len(b)
	f.mu.Unlock()
	if block {
		<-f.closed
		return 0, io.ErrClosedPipe
	}
	return len(b), nil
}
func (f *fakeConn) sendDatagram([]byte) error { return errNoDatagrams }
func (f *fakeConn) receiveDatagram(ctx context.Context) ([]byte, error) {
	return nil, errNoDatagrams
}
func (f *fakeConn) exporter(string) ([]byte, error) { return make([]byte, 32), nil }
func (f *fakeConn) setReadDeadline(time.Time)       {}
func (f *fakeConn) setIdleDeadline(time.Time)       {}
func (f *fakeConn) setWriteDeadline(time.Time)      {}
func (f *fakeConn) close(string)                    { f.once.Do(func() { close(f.closed) }) }
func (f *fakeConn) transport() string               { return transportTCP }
func (f *fakeConn) remoteAddr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

// newTestServer returns an unstarted server on loopback.
func newTestServer(tb testing.TB, mod func(*Config)) *Server {
	tb.Helper()
	cfg := Config{Region: "tst", Listen: "127.0.0.1:0", ListenTCP: "off", StateDir: tb.TempDir()}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg, discardLogger(), prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.closeSockets)
	return s
}

// fakeClient registers a client on s over a fakeConn, without starting
// its goroutines.
func fakeClient(s *Server) (*client, *fakeConn) {
	fc := newFakeConn()
	cl := s.register(fc, relayproto.ClientHello{Version: relayproto.Version, Node: key.NewNode().Public()})
	return cl, fc
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
