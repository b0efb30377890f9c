package loadtest

import (
	"bufio"
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Interleaved flood measurement (relay --flood-windows N). Measured one
// after the other, an unloaded and a loaded phase of several seconds each
// meet different machines: on a noisy 2-core host the background changes
// between them, and a single p99 ratio then varied by 2× from run to run.
// Interleaved, the paced pairs run once, for twice --duration, cut into 2N
// windows that alternate loaded (the flood child sending) and unloaded
// (the child paused), starting loaded. Every packet counts toward the phase
// of the window it was sent in, and packets sent in the first settle of a
// window toward neither: the relay draining the flood, or the flooder
// starting again with its token bucket full (relayd's --client-burst) and
// sending unshaped until it empties.
// Slow drifts then hit both phases alike.

// maxFloodWindows bounds --flood-windows.
const maxFloodWindows = 1000

// Phases of a window.
const (
	phaseLoaded   = 0
	phaseUnloaded = 1
)

// windows is the schedule of an interleaved run, in offsets from the run's
// t0 (the clock the packets are stamped with).
type windows struct {
	n      int           // windows per phase
	length time.Duration // one window
	settle time.Duration // skipped at the start of each window
	start  atomic.Int64  // offset of the first window, set when sending starts
	wall   time.Time     // the same start on the wall clock, for toggle
}

// begin marks now as the start of the first window, for a run whose
// packets are stamped relative to t0, and returns it.
func (w *windows) begin(t0 time.Time) time.Time {
	now := time.Now()
	w.start.Store(int64(now.Sub(t0)))
	w.wall = now
	return now
}

// phase returns the phase of a packet sent at offset sent, or -1 for one
// sent before the first window, after the last, or in a settle.
func (w *windows) phase(sent time.Duration) int {
	d := sent - time.Duration(w.start.Load())
	if d < 0 || w.length <= 0 {
		return -1
	}
	k := int64(d / w.length)
	if k >= int64(2*w.n) || d%w.length < w.settle {
		return -1
	}
	return int(k % 2)
}

// toggle writes a line to w at every window boundary after start until
// the last window or ctx ends, each line flipping the flood child between
// sending and paused. It returns when done.
func (w *windows) toggle(ctx context.Context, start time.Time, out io.Writer) {
	for k := 1; k < 2*w.n; k++ {
		t := time.NewTimer(time.Until(start.Add(time.Duration(k) * w.length)))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if _, err := io.WriteString(out, "toggle\n"); err != nil {
			return
		}
	}
}

// gate pauses a flood's senders: loadtest flood --toggle-stdin flips it
// for every line on stdin. It also adds up the time it was open, so the
// flood's rate is over the time it was sending.
type gate struct {
	open atomic.Bool

	mu     sync.Mutex
	opened chan struct{} // closed while open
	since  time.Time     // when it last opened
	total  time.Duration // open time before since
}

func newGate() *gate { return &gate{opened: make(chan struct{})} }

// flip opens a closed gate and closes an open one.
func (g *gate) flip(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open.Load() {
		g.open.Store(false)
		g.total += now.Sub(g.since)
		g.opened = make(chan struct{})
		return
	}
	g.open.Store(true)
	g.since = now
	close(g.opened)
}

// wait returns true once the gate is open, false if ctx ends first.
func (g *gate) wait(ctx context.Context) bool {
	if g.open.Load() {
		return true
	}
	g.mu.Lock()
	ch := g.opened
	g.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// openFor returns how long the gate has been open in all, as of now.
func (g *gate) openFor(now time.Time) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open.Load() {
		return g.total + now.Sub(g.since)
	}
	return g.total
}

// follow flips g once for every line read from r until r ends (the parent
// closed the pipe) or fails.
func (g *gate) follow(r *bufio.Reader) {
	for {
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		g.flip(time.Now())
	}
}
