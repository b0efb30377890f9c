package coordinator

import (
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// The replay cache. A proof of possession is accepted once: its box nonce
// is remembered for one proof window. The cache is only ever written for a
// request whose credential already checked out (a registered node or relay
// key, a known auth key or join key) and whose proof opened, so
// unauthenticated input never takes a slot: a flood of bogus requests can
// neither fill it nor evict anyone. Each source address may hold at most
// maxReplayPerSource entries of a generation, so one authenticated but
// misbehaving host (or a stolen reusable auth key) cannot fill it for
// everyone else either.

// Replay cache bounds.
const (
	// maxReplayEntries is far above any honest rate: 1M proofs in two
	// minutes is over 8,000 requests per second; 1M entries cost about
	// 50 MB.
	maxReplayEntries = 1 << 20
	// maxReplayPerSource is 65,536 proofs per source address per window
	// (546 requests per second): a NAT with thousands of nodes behind one
	// address stays well below it (a node makes a few requests a minute),
	// and sixteen such sources are needed to fill the cache.
	maxReplayPerSource = 1 << 16
)

type replayGen struct {
	nonces   map[[key.NonceLen]byte]struct{}
	bySource map[netip.Addr]int
}

func newReplayGen() replayGen {
	return replayGen{nonces: map[[key.NonceLen]byte]struct{}{}, bySource: map[netip.Addr]int{}}
}

// replayCache remembers accepted proof nonces for one proof window, in two
// generations: a nonce is looked up in both, and the older generation is
// dropped once it is a full window old. Each generation holds at most max
// entries, perSource of them from one address; past either, requests are
// refused (503, 429) rather than letting memory grow.
type replayCache struct {
	mu             sync.Mutex
	window         time.Duration
	max, perSource int
	cur, prev      replayGen
	rotated        time.Time
}

func newReplayCache(window time.Duration, max, perSource int) *replayCache {
	return &replayCache{window: window, max: max, perSource: perSource, cur: newReplayGen(), prev: newReplayGen()}
}

// add records nonce n from src, or refuses it as a replay or for lack of
// room.
func (c *replayCache) add(n [key.NonceLen]byte, src netip.Addr, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now.Sub(c.rotated) > c.window {
		c.prev, c.cur, c.rotated = c.cur, newReplayGen(), now
	}
	if _, ok := c.cur.nonces[n]; ok {
		return errorf(http.StatusUnauthorized, "proof of possession already used (replay)")
	}
	if _, ok := c.prev.nonces[n]; ok {
		return errorf(http.StatusUnauthorized, "proof of possession already used (replay)")
	}
	if c.cur.bySource[src] >= c.perSource {
		return errorf(http.StatusTooManyRequests, "too many requests from %s; retry shortly", src)
	}
	if len(c.cur.nonces) >= c.max {
		return errorf(http.StatusServiceUnavailable, "too many requests; retry shortly")
	}
	c.cur.nonces[n] = struct{}{}
	c.cur.bySource[src]++
	return nil
}

// sourceAddr is the client's IP address (unmapped), or the zero address
// when RemoteAddr is not ip:port (tests calling the handler directly).
func sourceAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}
