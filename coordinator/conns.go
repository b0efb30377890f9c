package coordinator

import (
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Connection and request-body limits. Only request headers had a deadline
// (ReadHeaderTimeout), so a client that declared a body and trickled it
// held its connection, and a file descriptor, for ever. Now:
//
//   - every request's body must arrive within the body timeout
//     (DefaultBodyTimeout); the deadline is set per request with
//     http.ResponseController, which works for HTTP/1 and per HTTP/2
//     stream, and cleared once the body is read, so a netmap stream or a
//     revocation long poll (which read their small body at once and then
//     only write) live as long as they need;
//   - each source address may hold at most DefaultMaxConnsPerSource
//     connections; past that, new ones are closed on accept, before the
//     TLS handshake.

// Defaults, with reasons.
const (
	// DefaultBodyTimeout is how long a request body may take to arrive:
	// the largest body (MaxRequestBody, 64 KiB) at 6.5 KiB/s.
	DefaultBodyTimeout = 10 * time.Second
	// DefaultMaxConnsPerSource is how many connections one address may
	// hold. A node needs one (two while reconnecting), so 1,024 lets a NAT
	// with several hundred nodes behind it in, while one host can pin at
	// most that many file descriptors.
	DefaultMaxConnsPerSource = 1024
)

// sourceLimitListener closes connections from an address that already has
// max open.
type sourceLimitListener struct {
	net.Listener
	max     int
	refused func() // counts a refused connection; may be nil

	mu    sync.Mutex
	count map[netip.Addr]int
}

func newSourceLimitListener(ln net.Listener, max int, refused func()) *sourceLimitListener {
	return &sourceLimitListener{Listener: ln, max: max, refused: refused, count: map[netip.Addr]int{}}
}

// Accept returns the next connection whose source is under its limit.
func (l *sourceLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src := addrOf(c.RemoteAddr())
		l.mu.Lock()
		if l.count[src] >= l.max {
			l.mu.Unlock()
			c.Close()
			if l.refused != nil {
				l.refused()
			}
			continue
		}
		l.count[src]++
		l.mu.Unlock()
		return &limitedConn{Conn: c, l: l, src: src}, nil
	}
}

func (l *sourceLimitListener) release(src netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.count[src]--; l.count[src] <= 0 {
		delete(l.count, src)
	}
}

type limitedConn struct {
	net.Conn
	l    *sourceLimitListener
	src  netip.Addr
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.src) })
	return err
}

func addrOf(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// withBodyDeadline gives every request's body d to arrive (see readBody,
// which lifts the deadline once the body is in).
func withBodyDeadline(d time.Duration, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Not every ResponseWriter supports deadlines (httptest's does
		// not); then there is no connection to protect.
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
		h.ServeHTTP(w, r)
	})
}
