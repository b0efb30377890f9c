package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/internal/nice"
	"github.com/wiremesh/wiremesh/relayproto"
)

type floodOpts struct {
	RelayFlags
	Size        int           `flag:"size" env:"SIZE" envDefault:"1280" help:"packet payload size in bytes"`
	Duration    time.Duration `flag:"duration" env:"DURATION" envDefault:"10s" help:"sending time"`
	Delivery    string        `flag:"delivery" env:"DELIVERY" envDefault:"fastpath" help:"fastpath, datagram or stream"`
	ClientBatch int           `flag:"client-batch" env:"CLIENT_BATCH" envDefault:"1" help:"fast-path clients send and receive up to this many datagrams per system call; 1: one per packet"`
	Nice        int           `flag:"nice" env:"NICE" help:"lower this process's CPU priority by this much (every thread) before dialling"`
	Idle        bool          `flag:"idle" env:"IDLE" help:"run every thread of this process under SCHED_IDLE (only CPU time nothing else on the machine wants) before dialling"`
	WaitStdin   bool          `flag:"wait-stdin" env:"WAIT_STDIN" help:"once dialled and warmed up, print ready on stdout and wait for a line on stdin before flooding"`
	ToggleStdin bool          `flag:"toggle-stdin" env:"TOGGLE_STDIN" help:"--wait-stdin, and then every further line on stdin pauses or resumes the flood (relay --flood-windows); the rate reported is over the time it flooded"`
	JSON        bool          `flag:"json" env:"JSON" help:"print one JSON object with the figures"`
}

// floodReadyTimeout bounds how long relay --flood waits for its child's
// ready line.
const floodReadyTimeout = 30 * time.Second

// runFlood is `loadtest flood`: one unpaced pair through an external
// relay. relay --flood runs it as a child process so the flood's CPU cost
// and busy threads do not share a scheduler priority with the paced pairs.
func runFlood(ctx context.Context, args []string, out, errOut io.Writer) error {
	o := floodOpts{}
	if err := parse("flood", &o, args, out, "loadtest flood --relay HOST:PORT --pin PIN --relay-key KEY --signing-key-file FILE [--size 1280] [--duration 10s] [--delivery fastpath] [--nice N] [--idle] [--wait-stdin] [--json]"); err != nil {
		return err
	}
	if o.Relay == "" {
		return errors.New("loadtest flood: --relay is required")
	}
	if o.Size < headerLen || o.Size > 65000 || o.Duration <= 0 {
		return fmt.Errorf("loadtest flood: need --size %d..65000, --duration > 0", headerLen)
	}
	if o.ClientBatch < 1 || o.ClientBatch > maxClientBatch {
		return fmt.Errorf("loadtest flood: --client-batch %d: want 1..%d", o.ClientBatch, maxClientBatch)
	}
	if o.ClientBatch > 1 && o.Size+relayproto.FastSendOverhead > relayproto.MaxFastDatagram {
		return fmt.Errorf("loadtest flood: --client-batch needs --size ≤ %d", relayproto.MaxFastDatagram-relayproto.FastSendOverhead)
	}
	switch o.Delivery {
	case "fastpath", "datagram", "stream":
	default:
		return fmt.Errorf("loadtest flood: --delivery %q: want fastpath, datagram or stream", o.Delivery)
	}
	if o.Nice != 0 {
		if err := nice.LowerProcess(o.Nice); err != nil {
			return fmt.Errorf("loadtest flood: %w", err)
		}
	}
	if o.Idle {
		if err := nice.IdleProcess(); err != nil {
			return fmt.Errorf("loadtest flood: %w", err)
		}
	}
	tgt, err := o.target(ctx, errOut)
	if err != nil {
		return err
	}
	defer tgt.stop()
	spec := pairSpec{delivery: o.Delivery, pairs: 0, flood: 1, size: o.Size, dur: o.Duration, batch: o.ClientBatch}
	if o.ToggleStdin {
		spec.gate = newGate()
	}
	if o.WaitStdin || o.ToggleStdin {
		spec.beforeDrive = func() error {
			if _, err := fmt.Fprintln(out, "ready"); err != nil {
				return err
			}
			rd := bufio.NewReader(os.Stdin)
			if _, err := rd.ReadString('\n'); err != nil {
				return fmt.Errorf("loadtest flood: waiting on stdin: %w", err)
			}
			if spec.gate != nil {
				spec.gate.flip(time.Now())
				// Ends when the parent closes stdin (or the process does).
				go spec.gate.follow(rd)
			}
			return nil
		}
	}
	r, err := runPairs(ctx, tgt, spec, 0, errOut)
	if err != nil {
		return err
	}
	return emit(out, o.JSON, r, func(w io.Writer) {
		fmt.Fprintf(w, "flood %s %s size=%d: %.3f Gbit/s (sent %d, received %d)\n", r.Delivery, r.Transport, r.Size, r.FloodGbitS, r.Sent, r.Received)
	})
}

// runFloodChild is the loaded run of relay --flood with the flooding pair
// in a child `loadtest flood` process at nice o.FloodNice (and under
// SCHED_IDLE with o.FloodIdle): the child dials
// and warms up, says ready, and floods from the moment the paced pairs
// start.
func runFloodChild(ctx context.Context, tgt *target, o relayOpts, delivery string, spec pairSpec, errOut io.Writer) (RunResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return RunResult{}, fmt.Errorf("loadtest: flood child: %w", err)
	}
	args := []string{"flood", "--relay", o.Relay, "--pin", o.Pin, "--relay-key", o.RelayKey, "--signing-key-file", o.SigningKeyFile}
	if o.Region != "" {
		args = append(args, "--region", o.Region)
	}
	if o.TCP {
		args = append(args, "--tcp")
	}
	// The child floods a little longer than the paced run lasts (its
	// sending time plus the drain), so the whole measurement is loaded.
	args = append(args, "--size", strconv.Itoa(o.Size), "--duration", (spec.dur + 2*drainWait).String(),
		"--delivery", delivery, "--client-batch", strconv.Itoa(o.ClientBatch), "--nice", strconv.Itoa(o.FloodNice), "--wait-stdin", "--json")
	if spec.win != nil {
		args = append(args, "--toggle-stdin")
	}
	if o.FloodIdle {
		args = append(args, "--idle")
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(cctx, exe, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return RunResult{}, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return RunResult{}, err
	}
	if err := cmd.Start(); err != nil {
		return RunResult{}, fmt.Errorf("loadtest: flood child: %w", err)
	}
	rd := bufio.NewReader(stdout)
	// readyc has the first line's verdict; readDone closes once the
	// reader is done with the pipe, which Wait must not close before.
	readyc, readDone := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(readDone)
		line, err := rd.ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected line %q", line)
		}
		readyc <- err
	}()
	fail := func(err error) (RunResult, error) {
		cancel()
		stdin.Close()
		<-readDone // the pipe closes once the killed child is gone
		cmd.Wait()
		return RunResult{}, fmt.Errorf("loadtest: flood child: %w; its stderr: %s", err, strings.TrimSpace(stderr.String()))
	}
	timer := time.NewTimer(floodReadyTimeout)
	defer timer.Stop()
	select {
	case err := <-readyc:
		if err != nil {
			return fail(fmt.Errorf("waiting for ready: %w", err))
		}
	case <-timer.C:
		return fail(errors.New("no ready line within " + floodReadyTimeout.String()))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	// With windows, toggling follows the first one: tctx ends it, and
	// toggled says it has returned (before stdin closes).
	tctx, tcancel := context.WithCancel(ctx)
	toggled := make(chan struct{})
	spec.beforeDrive = func() error {
		if _, err := io.WriteString(stdin, "go\n"); err != nil {
			close(toggled)
			return err
		}
		if spec.win == nil {
			close(toggled)
			return nil
		}
		go func() {
			defer close(toggled)
			spec.win.toggle(tctx, spec.win.wall, stdin)
		}()
		return nil
	}
	lo, err := runPairs(ctx, tgt, spec, o.Progress, errOut)
	tcancel()
	if err != nil {
		return fail(err)
	}
	<-toggled
	stdin.Close()
	rest, rerr := io.ReadAll(rd)
	if werr := cmd.Wait(); werr != nil || rerr != nil {
		return RunResult{}, fmt.Errorf("loadtest: flood child: %w; its stderr: %s", errors.Join(werr, rerr), strings.TrimSpace(stderr.String()))
	}
	var fr RunResult
	if err := json.Unmarshal(rest, &fr); err != nil {
		return RunResult{}, fmt.Errorf("loadtest: flood child output %q: %w", rest, err)
	}
	lo.FloodPairs = 1
	lo.FloodGbitS = fr.FloodGbitS
	return lo, nil
}

// runInterleaved is the --flood-windows measurement of delivery d: the
// paced pairs for twice o.Duration in 2×o.FloodWindows alternating windows
// beside a flood child that sends in every other one. un is the same
// pairs' sequential unloaded run, for the bias check.
func runInterleaved(ctx context.Context, tgt *target, o relayOpts, d string, un RunResult, errOut io.Writer) (*InterleavedResult, error) {
	n := o.FloodWindows
	w := &windows{n: n, length: o.Duration / time.Duration(n), settle: o.FloodSettle}
	var phases [2]RunResult
	spec := pairSpec{delivery: d, pairs: o.Pairs, size: o.Size, dur: 2 * time.Duration(n) * w.length,
		rate: o.ProbeRate * float64(o.Pairs), batch: o.ClientBatch, win: w, phases: &phases}
	lo, err := runFloodChild(ctx, tgt, o, d, spec, errOut)
	if err != nil {
		return nil, err
	}
	iv := &InterleavedResult{Windows: n, WindowMs: round(w.length.Seconds()*1e3, 1), SettleMs: round(w.settle.Seconds()*1e3, 1),
		Unloaded: phases[phaseUnloaded], Loaded: phases[phaseLoaded]}
	iv.Loaded.FloodPairs, iv.Loaded.FloodGbitS = 1, lo.FloodGbitS
	if p := iv.Unloaded.LatencyP99Ms; p > 0 {
		iv.P99Ratio = round(iv.Loaded.LatencyP99Ms/p, 2)
	}
	if p := un.LatencyP99Ms; p > 0 {
		iv.UnloadedBias = round(iv.Unloaded.LatencyP99Ms/p, 2)
	}
	return iv, nil
}
