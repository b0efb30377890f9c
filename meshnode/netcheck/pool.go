package netcheck

import (
	"context"
	"time"

	"github.com/wiremesh/wiremesh/relayclient"
)

// PoolPinger implements Relays over a relayclient.Pool.
type PoolPinger struct {
	Pool *relayclient.Pool
}

// Probe connects to r (through the pool) and pings it.
func (p PoolPinger) Probe(ctx context.Context, r relayclient.Relay) (time.Duration, string, error) {
	c, err := p.Pool.Get(r)
	if err != nil {
		return 0, "", err
	}
	conn, err := c.WaitConnected(ctx)
	if err != nil {
		return 0, "", err
	}
	rtt, err := conn.Ping(ctx)
	if err != nil {
		return 0, "", err
	}
	return rtt, conn.Transport(), nil
}

// PingHome pings r over its current connection.
func (p PoolPinger) PingHome(ctx context.Context, r relayclient.Relay) error {
	c, err := p.Pool.Get(r)
	if err != nil {
		return err
	}
	conn := c.Conn()
	if conn == nil {
		return relayclient.ErrNotConnected
	}
	_, err = conn.Ping(ctx)
	return err
}

// Reset closes r's current connection, if any.
func (p PoolPinger) Reset(r relayclient.Relay) {
	if c, err := p.Pool.Get(r); err == nil {
		if conn := c.Conn(); conn != nil {
			conn.Close()
		}
	}
}
