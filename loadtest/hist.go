package loadtest

import (
	"math"
	"sync"
	"time"
)

// hist is a log-bucketed latency histogram: bucket i holds durations in
// [base^i, base^(i+1)) nanoseconds, so quantiles are within 1% and memory
// is fixed (histBuckets counts) however long a run lasts.
type hist struct {
	mu     sync.Mutex
	counts [histBuckets]uint64
	n      uint64
	max    time.Duration
}

const (
	histBase    = 1.01
	histBuckets = 2400 // 1.01^2400 ns ≈ 2e10 ns = 20 s: anything slower is lost
)

var logBase = math.Log(histBase)

func (h *hist) add(d time.Duration) {
	i := 0
	if d > 1 {
		i = min(int(math.Log(float64(d))/logBase), histBuckets-1)
	}
	h.mu.Lock()
	h.counts[i]++
	h.n++
	h.max = max(h.max, d)
	h.mu.Unlock()
}

// merge adds o's counts to h.
func (h *hist) merge(o *hist) {
	o.mu.Lock()
	defer o.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile returns the upper edge of the bucket holding quantile q.
func (h *hist) quantile(q float64) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == 0 {
		return 0
	}
	target := uint64(math.Ceil(q * float64(h.n)))
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= target {
			return min(time.Duration(math.Pow(histBase, float64(i+1))), h.max)
		}
	}
	return h.max
}
