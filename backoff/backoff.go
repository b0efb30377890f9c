// Package backoff is the one retry schedule every Wiremesh client uses:
// exponential from Min to Max, each wait jittered to [b/2, b] so that the
// clients of a restarted server do not return in lockstep.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is a retry schedule. The zero value is not useful: set Min and
// Max. It is not safe for concurrent use (each retry loop owns one).
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns how long to wait before the next try, and doubles the
// schedule (up to Max).
func (b *Backoff) Next() time.Duration {
	if b.cur < b.Min {
		b.cur = b.Min
	}
	wait := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(2*b.cur, b.Max)
	return wait
}

// Reset starts the schedule again from Min (the last try worked).
func (b *Backoff) Reset() { b.cur = 0 }

// Jitter returns d plus up to half of d again: a server's hint (say, a
// restarting relay's "come back in d"), spread over its clients.
func Jitter(d time.Duration) time.Duration { return d + rand.N(d/2+1) }

// Sleep waits d, or until ctx ends; it reports whether the full wait
// passed (false: ctx ended, stop retrying).
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
