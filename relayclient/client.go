package relayclient

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/backoff"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
)

// Reconnect backoff: start fast (a relay restart should cost well under a
// second), double per failure, cap at 10 s so a returning relay is found
// quickly, and jitter to [b/2, b] so a relay's clients do not return in
// lockstep after it restarts.
const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 10 * time.Second
)

// fastPathSetup bounds the fast-path negotiation after a connect: a few
// round trips on a working network; if UDP is blocked the connection goes
// on without it after this long.
const fastPathSetup = time.Second

// Client keeps one relay connection up: it dials, serves, and on failure
// redials with jittered exponential backoff. On a Restarting notice it
// waits the relay's hint (jittered) before redialing.
type Client struct {
	cfg    Config
	redial chan struct{} // Redial: skip the current backoff wait
	// conn mirrors mu.cur for the send path, which loads it with no lock.
	conn atomic.Pointer[Conn]
	// used is set by each Send and cleared by the Pool's idle check, so
	// the send path marks use without reading the clock.
	used atomic.Bool

	mu struct {
		sync.Mutex
		cur       *Conn
		lastErr   error
		connected chan struct{} // closed while cur != nil; replaced on loss
		restart   time.Duration // hint from the last Restarting notice
		lastUsed  time.Time
	}
}

// NewClient returns a Client for cfg; call Run to connect.
func NewClient(cfg Config) *Client {
	if cfg.Log == nil {
		cfg.Log = discardLog
	}
	c := &Client{cfg: cfg, redial: make(chan struct{}, 1)}
	c.mu.connected = make(chan struct{})
	user := cfg.OnNotice
	c.cfg.OnNotice = func(n Notice) {
		if n.Kind == NoticeRestarting {
			c.mu.Lock()
			c.mu.restart = n.Restarting.ReconnectIn
			c.mu.Unlock()
		}
		if user != nil {
			user(n)
		}
	}
	return c
}

// Run connects and reconnects until ctx ends, then closes the connection.
// It returns ctx's error.
func (c *Client) Run(ctx context.Context) error {
	bo := backoff.Backoff{Min: backoffMin, Max: backoffMax}
	for {
		conn, err := Dial(ctx, c.cfg)
		if err == nil {
			bo.Reset()
			if c.cfg.FastPath {
				fctx, cancel := context.WithTimeout(ctx, fastPathSetup)
				if ferr := conn.EnableFastPath(fctx); ferr != nil && !errors.Is(ferr, ErrNoFastPath) {
					c.cfg.Log.Debug("relay fast path unavailable", "relay", c.cfg.Relay.Addr, "err", ferr)
				}
				cancel()
			}
			c.setConn(conn)
			select {
			case <-ctx.Done():
				c.setConn(nil)
				conn.Close()
				return ctx.Err()
			case <-conn.Done():
			}
			c.setConn(nil)
			conn.Close()
			err = conn.Err()
			c.cfg.Log.Info("relay connection lost", "relay", c.cfg.Relay.Addr, "err", err)
		} else {
			c.cfg.Log.Warn("relay dial failed", "relay", c.cfg.Relay.Addr, "err", err)
		}
		c.mu.Lock()
		c.mu.lastErr = err
		wait := bo.Next()
		if c.mu.restart > 0 {
			wait = backoff.Jitter(c.mu.restart)
			c.mu.restart = 0
		}
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.redial:
			bo.Reset()
		case <-time.After(wait):
		}
	}
}

func (c *Client) setConn(conn *Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if conn != nil {
		c.mu.cur = conn
		c.conn.Store(conn)
		close(c.mu.connected)
		return
	}
	c.conn.Store(nil)
	if c.mu.cur != nil {
		c.mu.cur = nil
		c.mu.connected = make(chan struct{})
	}
}

// Conn returns the current connection, or nil while disconnected.
func (c *Client) Conn() *Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.cur
}

// LastError returns why the last connection or dial ended.
func (c *Client) LastError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.lastErr
}

// WaitConnected blocks until the client is connected or ctx ends.
func (c *Client) WaitConnected(ctx context.Context) (*Conn, error) {
	for {
		c.mu.Lock()
		cur, ch := c.mu.cur, c.mu.connected
		c.mu.Unlock()
		if cur != nil {
			return cur, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Send relays payload to dst over the current connection, or returns
// ErrNotConnected. It takes no lock and reads no clock: it is the relay
// send path of every packet.
func (c *Client) Send(dst key.NodePublic, payload []byte) error {
	if !c.used.Load() {
		c.used.Store(true)
	}
	cur := c.conn.Load()
	if cur == nil {
		return ErrNotConnected
	}
	return cur.Send(dst, payload)
}

// Ping measures the round trip to the relay.
func (c *Client) Ping(ctx context.Context) (time.Duration, error) {
	cur := c.Conn()
	if cur == nil {
		return 0, ErrNotConnected
	}
	return cur.Ping(ctx)
}

// IsReject reports whether err is a relay's refusal, and its reason.
func IsReject(err error) (relayproto.Reason, bool) {
	var rj relayproto.Reject
	if errors.As(err, &rj) {
		return rj.Reason, true
	}
	return 0, false
}

// Redial cuts short a reconnect backoff: a disconnected client dials again
// at once. Use it when the relay matters now (it just became the home
// relay) or is known to be back; it does nothing while connected.
func (c *Client) Redial() {
	select {
	case c.redial <- struct{}{}:
	default:
	}
}
