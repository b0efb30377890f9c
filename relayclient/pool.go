package relayclient

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

var discardLog = slog.New(slog.DiscardHandler)

// DefaultIdleClose is how long a non-home relay connection may go unused
// before the Pool closes it. Peers' home relays are dialed on demand, so a
// minute of silence (well past WireGuard's 25 s persistent keep-alive)
// means the peer is idle or went direct.
const DefaultIdleClose = time.Minute

// ErrPoolNotRunning is returned by Pool methods called outside Run.
var ErrPoolNotRunning = errors.New("relayclient: pool is not running")

// Pool keeps several relay connections: the home relay always, others on
// demand, closing those idle for IdleClose.
type Pool struct {
	// Template is the Config for every connection; Relay is filled per relay.
	Template  Config
	IdleClose time.Duration // 0 means DefaultIdleClose

	mu struct {
		sync.Mutex
		ctx     context.Context // set while Run runs
		home    string
		clients map[string]*poolEntry
	}
	wg sync.WaitGroup
}

type poolEntry struct {
	c      *Client
	cancel context.CancelFunc
	done   chan struct{}
}

// Run keeps the pool until ctx ends, then closes every connection and
// returns after their goroutines exit.
func (p *Pool) Run(ctx context.Context) error {
	idle := p.IdleClose
	if idle <= 0 {
		idle = DefaultIdleClose
	}
	p.mu.Lock()
	p.mu.ctx = ctx
	if p.mu.clients == nil {
		p.mu.clients = map[string]*poolEntry{}
	}
	p.mu.Unlock()
	t := time.NewTicker(idle / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			p.mu.Lock()
			p.mu.ctx = nil
			for _, e := range p.mu.clients {
				e.cancel()
			}
			p.mu.Unlock()
			p.wg.Wait()
			return ctx.Err()
		case <-t.C:
			p.closeIdle(time.Now(), idle)
		}
	}
}

func (p *Pool) closeIdle(now time.Time, idle time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, e := range p.mu.clients {
		if addr == p.mu.home {
			continue
		}
		e.c.mu.Lock()
		if e.c.used.Swap(false) {
			e.c.mu.lastUsed = now // sent on since the last check
		}
		last := e.c.mu.lastUsed
		e.c.mu.Unlock()
		if now.Sub(last) >= idle {
			e.cancel()
			delete(p.mu.clients, addr)
		}
	}
}

// SetHome makes r the home relay (never closed for idleness) and connects,
// at once if its client was waiting out a reconnect backoff.
func (p *Pool) SetHome(r Relay) (*Client, error) {
	p.mu.Lock()
	p.mu.home = r.Addr
	p.mu.Unlock()
	c, err := p.Get(r)
	if err == nil && c.Conn() == nil {
		c.Redial()
	}
	return c, err
}

// Get returns the client for r, starting it if needed, and marks it used.
func (p *Pool) Get(r Relay) (*Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.ctx == nil {
		return nil, ErrPoolNotRunning
	}
	if e, ok := p.mu.clients[r.Addr]; ok {
		e.c.mu.Lock()
		e.c.mu.lastUsed = time.Now()
		e.c.mu.Unlock()
		return e.c, nil
	}
	cfg := p.Template
	cfg.Relay = r
	c := NewClient(cfg)
	c.mu.lastUsed = time.Now()
	ctx, cancel := context.WithCancel(p.mu.ctx)
	e := &poolEntry{c: c, cancel: cancel, done: make(chan struct{})}
	p.mu.clients[r.Addr] = e
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer close(e.done)
		c.Run(ctx)
	}()
	return c, nil
}

// Send relays payload to dst through relay r, connecting on demand. It
// returns ErrNotConnected while that connection is still being made.
func (p *Pool) Send(r Relay, dst key.NodePublic, payload []byte) error {
	c, err := p.Get(r)
	if err != nil {
		return err
	}
	return c.Send(dst, payload)
}

// Open returns the addresses of relays with a client in the pool.
func (p *Pool) Open() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for a := range p.mu.clients {
		out = append(out, a)
	}
	return out
}
