package relayd

import (
	"sync"
	"time"
)

// limiter is a token bucket in bytes. Both reader goroutines of a QUIC
// client use it, hence the mutex. Time is passed in so tests control it.
type limiter struct {
	mu     sync.Mutex
	rate   float64 // bytes per second
	burst  float64
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst int, now time.Time) *limiter {
	return &limiter{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

// allow takes n bytes from the bucket if it holds them.
func (l *limiter) allow(n int, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if el := now.Sub(l.last).Seconds(); el > 0 {
		l.tokens = min(l.burst, l.tokens+el*l.rate)
		l.last = now
	}
	if l.tokens < float64(n) {
		return false
	}
	l.tokens -= float64(n)
	return true
}

// wait returns how long until the bucket holds n bytes (0 if it does now),
// at most max; a bucket shallower than n counts as full at its depth.
func (l *limiter) wait(n int, now time.Time, max time.Duration) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	tokens := l.tokens
	if el := now.Sub(l.last).Seconds(); el > 0 {
		tokens = min(l.burst, tokens+el*l.rate)
	}
	need := min(float64(n), l.burst) - tokens
	if need <= 0 || l.rate <= 0 {
		return 0
	}
	return min(time.Duration(need/l.rate*float64(time.Second)), max)
}
