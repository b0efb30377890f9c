package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestWindowsPhase(t *testing.T) {
	w := &windows{n: 2, length: 100 * time.Millisecond, settle: 10 * time.Millisecond}
	w.start.Store(int64(time.Second))
	ms := time.Millisecond
	for _, c := range []struct {
		sent time.Duration
		want int
	}{
		{999 * ms, -1},           // before the first window
		{time.Second, -1},        // the first window's settle
		{time.Second + 9*ms, -1}, // still settling
		{time.Second + 10*ms, phaseLoaded},
		{time.Second + 99*ms, phaseLoaded},
		{time.Second + 100*ms, -1}, // the second window settles
		{time.Second + 150*ms, phaseUnloaded},
		{time.Second + 250*ms, phaseLoaded},
		{time.Second + 399*ms, phaseUnloaded},
		{time.Second + 400*ms, -1}, // after the last
		{time.Second + 950*ms, -1},
	} {
		if got := w.phase(c.sent); got != c.want {
			t.Errorf("phase(%v) = %d, want %d", c.sent, got, c.want)
		}
	}
}

func TestGate(t *testing.T) {
	g := newGate()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if g.wait(ctx) {
		t.Fatal("a closed gate let a cancelled wait through")
	}
	t0 := time.Unix(100, 0)
	g.flip(t0) // open
	if !g.wait(context.Background()) {
		t.Fatal("an open gate blocked")
	}
	if d := g.openFor(t0.Add(2 * time.Second)); d != 2*time.Second {
		t.Errorf("open 2 s so far: %v", d)
	}
	g.flip(t0.Add(3 * time.Second))  // closed after 3 s open
	g.flip(t0.Add(10 * time.Second)) // open again
	g.flip(t0.Add(11 * time.Second)) // closed: 4 s in all
	if d := g.openFor(t0.Add(time.Minute)); d != 4*time.Second {
		t.Errorf("open 3 s + 1 s: %v", d)
	}
	// A waiter blocked on the closed gate is let through when it opens,
	// here by follow reading a line.
	done := make(chan bool, 1)
	go func() { done <- g.wait(context.Background()) }()
	g.follow(bufio.NewReader(strings.NewReader("toggle\n")))
	if !<-done || !g.open.Load() {
		t.Fatal("a line did not open the gate")
	}
}

func TestWindowsToggle(t *testing.T) {
	w := &windows{n: 3, length: time.Millisecond}
	var out bytes.Buffer
	w.toggle(context.Background(), time.Now(), &out)
	if got := strings.Count(out.String(), "\n"); got != 2*w.n-1 {
		t.Errorf("%d toggles for %d windows, want %d", got, 2*w.n, 2*w.n-1)
	}
}

// TestRelayFloodInterleaved: --flood-windows measures both phases in one
// run beside a child that floods every other window.
func TestRelayFloodInterleaved(t *testing.T) {
	t.Setenv(childEnv, "1")
	flags := externalRelay(t)
	var out, errOut bytes.Buffer
	args := append([]string{"relay", "--pairs", "2", "--duration", "400ms", "--delivery", "fastpath", "--flood", "--probe-rate", "500",
		"--flood-windows", "2", "--flood-settle", "20ms", "--json", "--progress", "0"}, flags...)
	if err := Command(context.Background(), args, &out, &errOut); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	var rep RelayReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out.String())
	}
	if len(rep.Flood) != 1 || rep.Flood[0].Interleaved == nil {
		t.Fatalf("flood %+v", rep.Flood)
	}
	iv := rep.Flood[0].Interleaved
	if iv.Windows != 2 || iv.WindowMs != 200 || iv.SettleMs != 20 {
		t.Errorf("schedule %+v", iv)
	}
	// 2 pairs × 500/s × 2 windows × 180 ms counted = 360 packets a phase.
	for name, r := range map[string]RunResult{"unloaded": iv.Unloaded, "loaded": iv.Loaded} {
		if r.Sent < 300 || r.Sent > 420 || r.Received == 0 || r.LatencyP99Ms <= 0 || r.DurationS != 0.36 {
			t.Errorf("%s phase %+v", name, r)
		}
	}
	if iv.Loaded.FloodPairs != 1 || iv.Loaded.FloodGbitS <= 0 || iv.Unloaded.FloodGbitS != 0 {
		t.Errorf("flood figures: loaded %+v unloaded %+v", iv.Loaded, iv.Unloaded)
	}
	if iv.P99Ratio <= 0 || iv.UnloadedBias <= 0 {
		t.Errorf("ratios %+v", iv)
	}
}

func TestFloodWindowsFlags(t *testing.T) {
	for _, args := range [][]string{
		{"relay", "--flood-windows", "2"},            // no --flood
		{"relay", "--flood", "--flood-windows", "2"}, // no external relay
		{"relay", "--flood", "--relay", "127.0.0.1:1", "--flood-windows", "-1"},
		{"relay", "--flood", "--relay", "127.0.0.1:1", "--flood-windows", "4", "--duration", "400ms", "--flood-settle", "100ms"},
	} {
		var out, errOut bytes.Buffer
		if err := Command(context.Background(), args, &out, &errOut); err == nil || !strings.Contains(err.Error(), "flood-") {
			t.Errorf("%v: %v", args, err)
		}
	}
}
