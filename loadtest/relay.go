package loadtest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayproto"
)

// Payload layout of every test packet: the latency is measured one way
// between a sender and a receiver in this process, on one monotonic clock.
//
//	magic  4 bytes  payloadMagic
//	phase  1 byte   phaseWarm or phaseMeasure
//	sent   8 bytes  nanoseconds since the run's start
const (
	payloadMagic = 0x574d4c54 // "WMLT"
	headerLen    = 13
	phaseWarm    = 0
	phaseMeasure = 1
	// drainWait is how long receivers keep counting after senders stop;
	// far above any queueing delay the relay may add.
	drainWait = 500 * time.Millisecond
	// dialParallel bounds concurrent dials while setting up pairs.
	dialParallel = 32
)

type relayOpts struct {
	RelayFlags
	Pairs        int           `flag:"pairs" env:"PAIRS" envDefault:"8" help:"client pairs (each pair: one sender, one receiver)"`
	Size         int           `flag:"size" env:"SIZE" envDefault:"1280" help:"packet payload size in bytes"`
	Duration     time.Duration `flag:"duration" env:"DURATION" envDefault:"10s" help:"measured sending time per run"`
	Rate         float64       `flag:"rate" env:"RATE" help:"total packets per second over all pairs (0: as fast as the relay takes them)"`
	Delivery     string        `flag:"delivery" env:"DELIVERY" envDefault:"both" help:"datagram, stream, fastpath, both (datagram and stream) or all three, side by side; fastpath needs relayd --fastpath-listen"`
	BaselineUDP  string        `flag:"baseline-udp" env:"BASELINE_UDP" help:"address of a running loadtest udpfwd, measured in the same run for a ratio"`
	Flood        bool          `flag:"flood" env:"FLOOD" help:"also measure p99 of paced pairs while one extra pair floods, against the same pairs unloaded"`
	ProbeRate    float64       `flag:"probe-rate" env:"PROBE_RATE" envDefault:"1000" help:"packets per second per paced pair in the --flood runs"`
	MaxLoss      float64       `flag:"max-loss" env:"MAX_LOSS" help:"also find, per delivery (and the baseline), the highest paced rate with loss below this fraction, e.g. 0.01 (0: skip)"`
	SearchTime   time.Duration `flag:"search-duration" env:"SEARCH_DURATION" envDefault:"3s" help:"length of each --max-loss trial run"`
	Progress     time.Duration `flag:"progress" env:"PROGRESS" envDefault:"1s" help:"progress interval on stderr (0: none)"`
	JSON         bool          `flag:"json" env:"JSON" help:"print one JSON object with the figures"`
	FloodNice    int           `flag:"flood-nice" env:"FLOOD_NICE" envDefault:"19" help:"with --flood and --relay, run the flooding pair as a child process (loadtest flood) this many nice levels lower; -1: in this process"`
	FloodIdle    bool          `flag:"flood-idle" env:"FLOOD_IDLE" envDefault:"true" help:"with a --flood child process, run it under SCHED_IDLE too, so it takes only CPU time the relay and the paced pairs leave, as a flooder on another host would; false: the nice value alone"`
	FloodWindows int           `flag:"flood-windows" env:"FLOOD_WINDOWS" help:"with a --flood child process, also measure interleaved: the paced pairs run for twice --duration, cut into this many loaded windows alternating with as many unloaded ones (the child paused), and the p99 ratio is between those (0: only the sequential phases)"`
	FloodSettle  time.Duration `flag:"flood-settle" env:"FLOOD_SETTLE" envDefault:"300ms" help:"with --flood-windows, the start of every window left out of both phases: the flood draining, or starting again with a full --client-burst"`
	ClientBatch  int           `flag:"client-batch" env:"CLIENT_BATCH" envDefault:"1" help:"fast-path and --baseline-udp clients send and receive up to this many datagrams per system call (sendmmsg/recvmmsg); 1: one per packet"`
}

// searchSteps are the fractions of the unpaced delivery rate tried, in
// order, by --max-loss; the first whose loss is below the limit is kept.
var searchSteps = []float64{1.0, 0.85, 0.7, 0.55, 0.4, 0.25, 0.1}

// RunResult is one measured run.
type RunResult struct {
	Delivery     string  `json:"delivery"` // datagram, stream or udp
	Transport    string  `json:"transport"`
	Pairs        int     `json:"pairs"`
	Size         int     `json:"size"`
	DurationS    float64 `json:"duration_s"`
	TargetPPS    float64 `json:"target_pps,omitempty"`
	Sent         uint64  `json:"sent"`
	Received     uint64  `json:"received"`
	Loss         float64 `json:"loss"`
	PacketsPerS  float64 `json:"packets_per_s"`
	GbitPerS     float64 `json:"gbit_per_s"`
	LatencyP50Ms float64 `json:"latency_p50_ms"`
	LatencyP99Ms float64 `json:"latency_p99_ms"`
	FloodPairs   int     `json:"flood_pairs,omitempty"`
	FloodGbitS   float64 `json:"flood_gbit_per_s,omitempty"`
}

// FloodResult compares paced pairs' p99 with and without a flooding pair.
type FloodResult struct {
	Delivery string    `json:"delivery"`
	Unloaded RunResult `json:"unloaded"`
	Loaded   RunResult `json:"loaded"`
	P99Ratio float64   `json:"p99_ratio"`
	// FloodProcess says the flooding pair ran in a child process (loadtest
	// flood) at nice FloodNice, and FloodIdle that it ran under SCHED_IDLE,
	// as a client on another host would.
	FloodProcess bool `json:"flood_process"`
	FloodNice    int  `json:"flood_nice"`
	FloodIdle    bool `json:"flood_idle"`
	// Interleaved is the --flood-windows measurement, when asked for.
	Interleaved *InterleavedResult `json:"interleaved,omitempty"`
}

// InterleavedResult is a --flood-windows measurement: the paced pairs'
// figures over the loaded windows and over the unloaded ones of one run.
type InterleavedResult struct {
	Windows  int       `json:"windows"` // per phase
	WindowMs float64   `json:"window_ms"`
	SettleMs float64   `json:"settle_ms"`
	Unloaded RunResult `json:"unloaded"`
	Loaded   RunResult `json:"loaded"`
	P99Ratio float64   `json:"p99_ratio"`
	// UnloadedBias is the unloaded windows' p99 over the sequential
	// unloaded run's: near 1 when the windows do not tilt the baseline.
	UnloadedBias float64 `json:"unloaded_bias"`
}

// RelayReport is `loadtest relay --json` output.
type RelayReport struct {
	Mode     string             `json:"mode"`
	Relay    string             `json:"relay"`
	Runs     []RunResult        `json:"runs"`
	Baseline *RunResult         `json:"baseline_udp,omitempty"`
	Ratios   map[string]float64 `json:"gbit_ratio_to_udp,omitempty"`
	Flood    []FloodResult      `json:"flood,omitempty"`
	// BelowLoss holds, per delivery, the fastest paced run whose loss was
	// below MaxLoss (--max-loss), and LossRatios their Gbit/s over the
	// baseline's.
	MaxLoss    float64            `json:"max_loss,omitempty"`
	BelowLoss  []RunResult        `json:"below_max_loss,omitempty"`
	LossRatios map[string]float64 `json:"below_max_loss_ratio_to_udp,omitempty"`
}

func runRelay(ctx context.Context, args []string, out, errOut io.Writer) error {
	o := relayOpts{}
	if err := parse("relay", &o, args, out, "loadtest relay [--relay HOST:PORT --pin PIN --relay-key KEY --signing-key-file FILE] [--pairs 8] [--size 1280] [--duration 10s] [--rate PPS] [--delivery both] [--baseline-udp ADDR] [--flood] [--json]"); err != nil {
		return err
	}
	if o.Pairs < 1 || o.Size < headerLen || o.Size > 65000 || o.Duration <= 0 {
		return fmt.Errorf("loadtest relay: need --pairs ≥ 1, --size %d..65000, --duration > 0", headerLen)
	}
	if o.ClientBatch < 1 || o.ClientBatch > maxClientBatch {
		return fmt.Errorf("loadtest relay: --client-batch %d: want 1..%d", o.ClientBatch, maxClientBatch)
	}
	if o.ClientBatch > 1 && o.Size+relayproto.FastSendOverhead > relayproto.MaxFastDatagram {
		return fmt.Errorf("loadtest relay: --client-batch needs --size ≤ %d", relayproto.MaxFastDatagram-relayproto.FastSendOverhead)
	}
	if o.FloodWindows != 0 {
		if !o.Flood || o.Relay == "" || o.FloodNice < 0 {
			return errors.New("loadtest relay: --flood-windows needs --flood with a --relay and a child process (--flood-nice ≥ 0)")
		}
		if o.FloodWindows < 0 || o.FloodWindows > maxFloodWindows {
			return fmt.Errorf("loadtest relay: --flood-windows %d: want 0..%d", o.FloodWindows, maxFloodWindows)
		}
		if o.FloodSettle < 0 || o.FloodSettle >= o.Duration/time.Duration(o.FloodWindows) {
			return fmt.Errorf("loadtest relay: --flood-settle %v must be shorter than a window (%v)", o.FloodSettle, o.Duration/time.Duration(o.FloodWindows))
		}
	}
	var deliveries []string
	switch o.Delivery {
	case "both":
		deliveries = []string{"datagram", "stream"}
	case "all":
		deliveries = []string{"datagram", "stream", "fastpath"}
	case "datagram", "stream", "fastpath":
		deliveries = []string{o.Delivery}
	default:
		return fmt.Errorf("loadtest relay: --delivery %q: want datagram, stream, fastpath, both or all", o.Delivery)
	}
	tgt, err := o.target(ctx, errOut)
	if err != nil {
		return err
	}
	defer tgt.stop()
	rep := RelayReport{Mode: "relay", Relay: tgt.relay.Addr}
	for _, d := range deliveries {
		r, err := runPairs(ctx, tgt, pairSpec{delivery: d, pairs: o.Pairs, size: o.Size, dur: o.Duration, rate: o.Rate, batch: o.ClientBatch}, o.Progress, errOut)
		if err != nil {
			return err
		}
		rep.Runs = append(rep.Runs, r)
	}
	if o.BaselineUDP != "" {
		b, err := runUDPPairs(ctx, o.BaselineUDP, pairSpec{delivery: "udp", pairs: o.Pairs, size: o.Size, dur: o.Duration, rate: o.Rate, batch: o.ClientBatch}, o.Progress, errOut)
		if err != nil {
			return err
		}
		rep.Baseline = &b
		rep.Ratios = map[string]float64{}
		for _, r := range rep.Runs {
			if b.GbitPerS > 0 {
				rep.Ratios[r.Delivery] = round(r.GbitPerS/b.GbitPerS, 3)
			}
		}
	}
	if o.MaxLoss > 0 {
		rep.MaxLoss = o.MaxLoss
		all := rep.Runs
		if rep.Baseline != nil {
			all = append(all, *rep.Baseline)
		}
		var base *RunResult
		for _, full := range all {
			spec := pairSpec{delivery: full.Delivery, pairs: o.Pairs, size: o.Size, dur: o.SearchTime, batch: o.ClientBatch}
			best, err := searchRate(ctx, tgt, o.BaselineUDP, spec, full.PacketsPerS, o.MaxLoss, errOut)
			if err != nil {
				return err
			}
			if best == nil {
				continue
			}
			rep.BelowLoss = append(rep.BelowLoss, *best)
			if best.Delivery == "udp" {
				base = best
			}
		}
		if base != nil && base.GbitPerS > 0 {
			rep.LossRatios = map[string]float64{}
			for _, r := range rep.BelowLoss {
				if r.Delivery != "udp" {
					rep.LossRatios[r.Delivery] = round(r.GbitPerS/base.GbitPerS, 3)
				}
			}
		}
	}
	if o.Flood {
		for _, d := range deliveries {
			spec := pairSpec{delivery: d, pairs: o.Pairs, size: o.Size, dur: o.Duration, rate: o.ProbeRate * float64(o.Pairs), batch: o.ClientBatch}
			un, err := runPairs(ctx, tgt, spec, o.Progress, errOut)
			if err != nil {
				return err
			}
			var lo RunResult
			proc := o.Relay != "" && o.FloodNice >= 0
			if proc {
				lo, err = runFloodChild(ctx, tgt, o, d, spec, errOut)
			} else {
				spec.flood = 1
				lo, err = runPairs(ctx, tgt, spec, o.Progress, errOut)
			}
			if err != nil {
				return err
			}
			fr := FloodResult{Delivery: d, Unloaded: un, Loaded: lo, FloodProcess: proc}
			if proc {
				fr.FloodNice, fr.FloodIdle = o.FloodNice, o.FloodIdle
			}
			if un.LatencyP99Ms > 0 {
				fr.P99Ratio = round(lo.LatencyP99Ms/un.LatencyP99Ms, 2)
			}
			if o.FloodWindows > 0 {
				if fr.Interleaved, err = runInterleaved(ctx, tgt, o, d, un, errOut); err != nil {
					return err
				}
			}
			rep.Flood = append(rep.Flood, fr)
		}
	}
	return emit(out, o.JSON, rep, func(w io.Writer) {
		fmt.Fprintf(w, "relay %s\n", rep.Relay)
		all := rep.Runs
		if rep.Baseline != nil {
			all = append(all, *rep.Baseline)
		}
		for _, r := range all {
			printRun(w, r)
		}
		for k, v := range rep.Ratios {
			fmt.Fprintf(w, "ratio %s/udp: %.3f\n", k, v)
		}
		for _, r := range rep.BelowLoss {
			fmt.Fprintf(w, "below %.1f%% loss: ", 100*rep.MaxLoss)
			printRun(w, r)
		}
		for k, v := range rep.LossRatios {
			fmt.Fprintf(w, "below-loss ratio %s/udp: %.3f\n", k, v)
		}
		for _, f := range rep.Flood {
			fmt.Fprintf(w, "flood %s: p99 unloaded %.3f ms, with one flooding pair %.3f ms (%.2fx); flood pair got %.3f Gbit/s\n",
				f.Delivery, f.Unloaded.LatencyP99Ms, f.Loaded.LatencyP99Ms, f.P99Ratio, f.Loaded.FloodGbitS)
			if iv := f.Interleaved; iv != nil {
				fmt.Fprintf(w, "flood %s interleaved (%d+%d windows of %.0f ms): p99 unloaded %.3f ms, loaded %.3f ms (%.2fx); unloaded bias %.2f; flood pair got %.3f Gbit/s\n",
					f.Delivery, iv.Windows, iv.Windows, iv.WindowMs, iv.Unloaded.LatencyP99Ms, iv.Loaded.LatencyP99Ms, iv.P99Ratio, iv.UnloadedBias, iv.Loaded.FloodGbitS)
			}
		}
	})
}

func printRun(w io.Writer, r RunResult) {
	fmt.Fprintf(w, "%-8s %s pairs=%d size=%d: %.0f pkt/s, %.3f Gbit/s, loss %.2f%%, one-way p50 %.3f ms p99 %.3f ms (sent %d, received %d)\n",
		r.Delivery, r.Transport, r.Pairs, r.Size, r.PacketsPerS, r.GbitPerS, 100*r.Loss, r.LatencyP50Ms, r.LatencyP99Ms, r.Sent, r.Received)
}

// searchRate tries paced runs at searchSteps fractions of peak (the
// unpaced delivery rate) and returns the first with loss below maxLoss.
func searchRate(ctx context.Context, tgt *target, udpAddr string, spec pairSpec, peak, maxLoss float64, errOut io.Writer) (*RunResult, error) {
	for _, f := range searchSteps {
		spec.rate = round(peak*f, 0)
		if spec.rate < 1 {
			break
		}
		var r RunResult
		var err error
		if spec.delivery == "udp" {
			r, err = runUDPPairs(ctx, udpAddr, spec, 0, errOut)
		} else {
			r, err = runPairs(ctx, tgt, spec, 0, errOut)
		}
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(errOut, "loadtest: %s at %.0f pkt/s: loss %.2f%%\n", spec.delivery, spec.rate, 100*r.Loss)
		if r.Loss < maxLoss {
			return &r, nil
		}
	}
	return nil, nil
}

type pairSpec struct {
	delivery string
	pairs    int
	size     int
	dur      time.Duration
	rate     float64 // total pps over the measured pairs; 0 = unpaced
	flood    int     // extra unpaced pairs, not measured
	batch    int     // datagrams per system call of batched clients (≤ 1: none)
	// beforeDrive, when set, runs after the pairs are dialled and warmed
	// up, just before the senders start.
	beforeDrive func() error
	// win, when set, is an interleaved run's schedule: summarize then
	// also fills phases with the measured pairs' figures per phase.
	win    *windows
	phases *[2]RunResult
	// gate, when set, pauses the flooding pairs' senders while closed.
	gate *gate
}

// counters are one receiver's figures.
type counters struct {
	sent, recv, bytes atomic.Uint64
	h                 hist
	win               *windows // an interleaved run's schedule, or nil
	ph                [2]phaseCounters
}

// phaseCounters are one receiver's figures in one phase of an
// interleaved run, by the time each packet was sent.
type phaseCounters struct {
	sent, recv atomic.Uint64
	h          hist
}

// record is the receive path: it must stay cheap (it runs in the client's
// datagram loop).
func (c *counters) record(t0 time.Time, p []byte) {
	if len(p) < headerLen || binary.BigEndian.Uint32(p) != payloadMagic || p[4] != phaseMeasure {
		return
	}
	sent := time.Duration(binary.BigEndian.Uint64(p[5:]))
	lat := time.Since(t0) - sent
	c.h.add(lat)
	c.recv.Add(1)
	if c.win != nil {
		if ph := c.win.phase(sent); ph >= 0 {
			c.ph[ph].h.add(lat)
			c.ph[ph].recv.Add(1)
		}
	}
	c.bytes.Add(uint64(len(p)))
}

// sender sends packets to one destination, in order. It may keep the
// slice only until it returns.
type sender func(payloads [][]byte) error

// runPairs measures one run through the relay.
func runPairs(ctx context.Context, tgt *target, spec pairSpec, prog time.Duration, errOut io.Writer) (RunResult, error) {
	datagrams := spec.delivery != "stream"
	fast := spec.delivery == "fastpath"
	n := spec.pairs + spec.flood
	t0 := time.Now()
	stats := make([]*counters, n)
	sends := make([]sender, n)
	var conns []*relayclient.Conn
	var socks []*batchSocket
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		for _, s := range socks {
			s.close()
		}
	}()
	batched := fast && spec.batch > 1
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		sem      = make(chan struct{}, dialParallel)
	)
	transport := ""
	for i := range n {
		stats[i] = &counters{}
		if i < spec.pairs {
			stats[i].win = spec.win
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var sa, sb *batchSocket
			if batched {
				var err error
				if sa, sb, err = batchPair(stats[i], t0, spec.batch); err != nil {
					mu.Lock()
					firstErr = errors.Join(firstErr, err)
					mu.Unlock()
					return
				}
				mu.Lock()
				socks = append(socks, sa, sb)
				mu.Unlock()
			}
			a, b, err := dialPair(ctx, tgt, datagrams, stats[i], t0, sa, sb)
			if err == nil && fast {
				for _, c := range []*relayclient.Conn{a, b.Conn} {
					if ferr := c.EnableFastPath(ctx); ferr != nil {
						err = fmt.Errorf("fast path: %w", ferr)
					}
				}
				if err != nil {
					a.Close()
					b.Close()
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				firstErr = errors.Join(firstErr, err)
				return
			}
			conns = append(conns, a, b.Conn)
			transport = a.Transport()
			if fast {
				transport = "udp+" + transport
			}
			dst := b.peerKey
			if batched {
				sends[i], err = fastBatchSender(a, sa, dst, spec)
				if err != nil {
					firstErr = errors.Join(firstErr, err)
				}
				return
			}
			sends[i] = func(ps [][]byte) error {
				for _, p := range ps {
					if err := a.Send(dst, p); err != nil {
						return err
					}
				}
				return nil
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return RunResult{}, firstErr
	}
	// Warm up: the first packets go by key and earn handles.
	warm := make([]byte, spec.size)
	binary.BigEndian.PutUint32(warm, payloadMagic)
	for range 3 {
		for _, s := range sends {
			s([][]byte{warm})
		}
	}
	time.Sleep(200 * time.Millisecond)

	res := RunResult{Delivery: spec.delivery, Transport: transport, Pairs: spec.pairs, Size: spec.size, TargetPPS: spec.rate, FloodPairs: spec.flood}
	if spec.win != nil {
		spec.win.begin(t0)
	}
	if spec.beforeDrive != nil {
		if err := spec.beforeDrive(); err != nil {
			return res, err
		}
	}
	err := drive(ctx, t0, sends, stats, spec, prog, errOut)
	if err != nil {
		return res, err
	}
	summarize(&res, stats, spec)
	if spec.win != nil && spec.phases != nil {
		base := RunResult{Delivery: res.Delivery, Transport: res.Transport, Pairs: res.Pairs, Size: res.Size,
			TargetPPS: res.TargetPPS, FloodPairs: res.FloodPairs}
		for ph := range spec.phases {
			spec.phases[ph] = summarizePhase(base, stats, spec, ph)
		}
	}
	return res, nil
}

// peerConn is a relay connection plus the key others address it by.
type peerConn struct {
	*relayclient.Conn
	peerKey key.NodePublic
}

// dialPair dials a sender and a receiver; sa and sb, when not nil, are
// their fast paths' sockets (batched clients).
func dialPair(ctx context.Context, tgt *target, datagrams bool, st *counters, t0 time.Time, sa, sb *batchSocket) (*relayclient.Conn, peerConn, error) {
	ca, err := tgt.config(datagrams)
	if err != nil {
		return nil, peerConn{}, err
	}
	cb, err := tgt.config(datagrams)
	if err != nil {
		return nil, peerConn{}, err
	}
	cb.Handler = func(p relayclient.Packet) { st.record(t0, p.Payload) }
	if sa != nil {
		ca.Shared, cb.Shared = sa, sb
	}
	a, err := relayclient.Dial(ctx, ca)
	if err != nil {
		return nil, peerConn{}, err
	}
	b, err := relayclient.Dial(ctx, cb)
	if err != nil {
		a.Close()
		return nil, peerConn{}, err
	}
	return a, peerConn{b, cb.NodeKey.Public()}, nil
}

// drive runs the senders for spec.dur, then waits drainWait for stragglers.
func drive(ctx context.Context, t0 time.Time, sends []sender, stats []*counters, spec pairSpec, prog time.Duration, errOut io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, spec.dur)
	defer cancel()
	if prog > 0 {
		start := time.Now()
		stop := progress(ctx, errOut, prog, func() string {
			var s, r, b uint64
			for _, c := range stats[:spec.pairs] {
				s += c.sent.Load()
				r += c.recv.Load()
				b += c.bytes.Load()
			}
			el := time.Since(start).Seconds()
			return fmt.Sprintf("loadtest: %s %4.1fs/%.0fs sent %d received %d (%.3f Gbit/s)", spec.delivery, el, spec.dur.Seconds(), s, r, float64(b)*8/el/1e9)
		})
		defer stop()
	}
	var wg sync.WaitGroup
	for i, send := range sends {
		rate := 0.0
		if i < spec.pairs && spec.rate > 0 {
			rate = spec.rate / float64(spec.pairs)
		}
		var g *gate
		if i >= spec.pairs {
			g = spec.gate
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sendLoop(ctx, t0, send, stats[i], spec.size, rate, spec.batch, g)
		}()
	}
	wg.Wait()
	select {
	case <-time.After(drainWait):
	case <-context.WithoutCancel(ctx).Done():
	}
	return nil
}

// pacingTick is the pacing granularity: each tick sends the packets due.
const pacingTick = time.Millisecond

// sendLoop sends size-byte packets at rate per second (0: as fast as
// send returns) until ctx ends; an unpaced loop with a gate g sends only
// while g is open.
func sendLoop(ctx context.Context, t0 time.Time, send sender, c *counters, size int, rate float64, batch int, g *gate) {
	batch = max(batch, 1)
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, size)
		binary.BigEndian.PutUint32(bufs[i], payloadMagic)
		bufs[i][4] = phaseMeasure
	}
	// some sends n packets in one call, each stamped just before.
	some := func(n int) bool {
		for _, b := range bufs[:n] {
			binary.BigEndian.PutUint64(b[5:], uint64(time.Since(t0)))
		}
		if err := send(bufs[:n]); err != nil {
			return false
		}
		c.sent.Add(uint64(n))
		if c.win != nil {
			for _, b := range bufs[:n] {
				if ph := c.win.phase(time.Duration(binary.BigEndian.Uint64(b[5:]))); ph >= 0 {
					c.ph[ph].sent.Add(1)
				}
			}
		}
		return true
	}
	if rate <= 0 {
		for ctx.Err() == nil {
			if g != nil && !g.wait(ctx) {
				return
			}
			if !some(batch) {
				return
			}
		}
		return
	}
	start := time.Now()
	t := time.NewTicker(pacingTick)
	defer t.Stop()
	var done float64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		due := time.Since(start).Seconds() * rate
		for done+1 <= due {
			n := min(batch, int(due-done))
			if !some(n) {
				return
			}
			done += float64(n)
		}
	}
}

func summarize(res *RunResult, stats []*counters, spec pairSpec) {
	var h hist
	floodSecs := spec.dur.Seconds()
	if spec.gate != nil {
		floodSecs = spec.gate.openFor(time.Now()).Seconds()
	}
	for i, c := range stats {
		if i >= spec.pairs {
			if floodSecs > 0 {
				res.FloodGbitS += round(float64(c.bytes.Load())*8/floodSecs/1e9, 3)
			}
			continue
		}
		res.Sent += c.sent.Load()
		res.Received += c.recv.Load()
		h.merge(&c.h)
	}
	if spec.pairs == 0 {
		// Only flooding pairs (loadtest flood): report what they sent.
		for _, c := range stats {
			res.Sent += c.sent.Load()
			res.Received += c.recv.Load()
		}
	}
	var bytes uint64
	for _, c := range stats[:spec.pairs] {
		bytes += c.bytes.Load()
	}
	secs := spec.dur.Seconds()
	res.DurationS = secs
	if res.Sent > 0 {
		res.Loss = round(1-float64(res.Received)/float64(res.Sent), 4)
	}
	res.PacketsPerS = round(float64(res.Received)/secs, 0)
	res.GbitPerS = round(float64(bytes)*8/secs/1e9, 3)
	res.LatencyP50Ms = round(h.quantile(0.50).Seconds()*1e3, 3)
	res.LatencyP99Ms = round(h.quantile(0.99).Seconds()*1e3, 3)
}

// summarizePhase is summarize for one phase of an interleaved run.
func summarizePhase(base RunResult, stats []*counters, spec pairSpec, ph int) RunResult {
	res := base
	var h hist
	for _, c := range stats[:spec.pairs] {
		res.Sent += c.ph[ph].sent.Load()
		res.Received += c.ph[ph].recv.Load()
		h.merge(&c.ph[ph].h)
	}
	secs := float64(spec.win.n) * (spec.win.length - spec.win.settle).Seconds()
	res.DurationS = round(secs, 3)
	if res.Sent > 0 {
		res.Loss = round(1-float64(min(res.Received, res.Sent))/float64(res.Sent), 4)
	}
	res.PacketsPerS = round(float64(res.Received)/secs, 0)
	res.GbitPerS = round(float64(res.Received)*float64(spec.size)*8/secs/1e9, 3)
	res.LatencyP50Ms = round(h.quantile(0.50).Seconds()*1e3, 3)
	res.LatencyP99Ms = round(h.quantile(0.99).Seconds()*1e3, 3)
	return res
}
