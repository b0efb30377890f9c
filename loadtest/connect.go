package loadtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/wiremesh/wiremesh/relayclient"
)

type connectOpts struct {
	RelayFlags
	Clients      int           `flag:"clients" env:"CLIENTS" envDefault:"1000" help:"concurrent idle clients to hold"`
	Parallel     int           `flag:"parallel" env:"PARALLEL" envDefault:"64" help:"dials in flight at once"`
	PerSocket    int           `flag:"per-socket" env:"PER_SOCKET" envDefault:"100" help:"QUIC clients sharing one UDP socket"`
	Hold         time.Duration `flag:"hold" env:"HOLD" envDefault:"5s" help:"how long to hold the clients idle before measuring"`
	RelayMetrics string        `flag:"relay-metrics" env:"RELAY_METRICS" help:"the relay's /metrics URL, to measure its memory per client"`
	RelayPprof   string        `flag:"relay-pprof" env:"RELAY_PPROF" help:"the relay's --pprof-listen base URL; if set, a GC is forced there before each memory reading so heap figures are live memory, not garbage"`
	Progress     time.Duration `flag:"progress" env:"PROGRESS" envDefault:"1s" help:"progress interval on stderr (0: none)"`
	JSON         bool          `flag:"json" env:"JSON" help:"print one JSON object with the figures"`
}

// giveUpAfter is how many failed dials, outnumbering the successful
// ones, end a connect run early.
const giveUpAfter = 100

// ConnectReport is `loadtest connect --json` output.
type ConnectReport struct {
	Mode              string  `json:"mode"`
	Relay             string  `json:"relay"`
	Transport         string  `json:"transport"`
	Clients           int     `json:"clients"`
	Connected         int     `json:"connected"`
	Failed            int     `json:"failed"`
	ConnectSeconds    float64 `json:"connect_s"`
	ConnectsPerS      float64 `json:"connects_per_s"`
	RelayClients      float64 `json:"relay_clients,omitempty"`
	RelayRSSBefore    float64 `json:"relay_rss_bytes_before,omitempty"`
	RelayRSSAfter     float64 `json:"relay_rss_bytes_after,omitempty"`
	RelayHeapBefore   float64 `json:"relay_heap_bytes_before,omitempty"`
	RelayHeapAfter    float64 `json:"relay_heap_bytes_after,omitempty"`
	RSSPerClient      float64 `json:"relay_rss_bytes_per_client,omitempty"`
	HeapPerClient     float64 `json:"relay_heap_bytes_per_client,omitempty"`
	RelayMemoryFigure string  `json:"relay_memory,omitempty"`
}

func runConnect(ctx context.Context, args []string, out, errOut io.Writer) error {
	o := connectOpts{}
	if err := parse("connect", &o, args, out, "loadtest connect [--relay HOST:PORT --pin PIN --relay-key KEY --signing-key-file FILE] [--clients 1000] [--relay-metrics URL] [--json]"); err != nil {
		return err
	}
	if o.Clients < 1 || o.Parallel < 1 || o.PerSocket < 1 {
		return errors.New("loadtest connect: --clients, --parallel and --per-socket must be at least 1")
	}
	tgt, err := o.target(ctx, errOut)
	if err != nil {
		return err
	}
	defer tgt.stop()
	rep := ConnectReport{Mode: "connect", Relay: tgt.relay.Addr, Transport: "quic", Clients: o.Clients}
	if tgt.tcp {
		rep.Transport = "tcp"
	}
	before := map[string]float64{}
	if o.RelayMetrics != "" {
		if err := forceGC(ctx, o.RelayPprof); err != nil {
			return err
		}
		if before, err = scrape(ctx, o.RelayMetrics); err != nil {
			return err
		}
	}
	// Shared UDP sockets: 10,000 clients must not need 10,000 sockets.
	var trs []*quic.Transport
	defer func() {
		for _, t := range trs {
			t.Close()
			t.Conn.Close()
		}
	}()
	nSock := (o.Clients + o.PerSocket - 1) / o.PerSocket
	if !tgt.tcp {
		for range nSock {
			uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				return err
			}
			trs = append(trs, &quic.Transport{Conn: uc})
		}
	}
	conns := make([]*relayclient.Conn, o.Clients)
	defer func() {
		var wg sync.WaitGroup
		sem := make(chan struct{}, o.Parallel)
		for _, c := range conns {
			if c != nil {
				wg.Add(1)
				sem <- struct{}{}
				go func() { defer wg.Done(); c.Close(); <-sem }()
			}
		}
		wg.Wait()
	}()
	var done, failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	stopProg := func() {}
	if o.Progress > 0 {
		stopProg = progress(ctx, errOut, o.Progress, func() string {
			return fmt.Sprintf("loadtest: connect %d/%d connected, %d failed, %.1fs", done.Load(), o.Clients, failed.Load(), time.Since(start).Seconds())
		})
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, o.Parallel)
	for i := range o.Clients {
		// Give up early on a relay that refuses most dials instead of
		// waiting out a timeout for every remaining client.
		if ctx.Err() != nil || (failed.Load() > giveUpAfter && failed.Load() > done.Load()) {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cfg, err := tgt.config(false)
			if err == nil {
				if len(trs) > 0 {
					cfg.Transport = trs[i%len(trs)]
				}
				cfg.DisableTCP = !tgt.tcp
				conns[i], err = relayclient.Dial(ctx, cfg)
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			done.Add(1)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopProg()
	rep.Connected = int(done.Load())
	rep.Failed = int(failed.Load())
	rep.ConnectSeconds = round(elapsed.Seconds(), 3)
	rep.ConnectsPerS = round(float64(rep.Connected)/elapsed.Seconds(), 1)
	if e, ok := firstErr.Load().(error); ok {
		fmt.Fprintf(errOut, "loadtest: first dial error: %v\n", e)
	}
	select {
	case <-time.After(o.Hold):
	case <-ctx.Done():
	}
	if o.RelayMetrics != "" && rep.Connected > 0 {
		if err := forceGC(ctx, o.RelayPprof); err != nil {
			return err
		}
		after, err := scrape(ctx, o.RelayMetrics)
		if err != nil {
			return err
		}
		rep.RelayClients = after[`relayd_clients{transport="quic"}`] + after[`relayd_clients{transport="tcp"}`]
		rep.RelayRSSBefore, rep.RelayRSSAfter = before["process_resident_memory_bytes"], after["process_resident_memory_bytes"]
		rep.RelayHeapBefore, rep.RelayHeapAfter = before["go_memstats_heap_inuse_bytes"], after["go_memstats_heap_inuse_bytes"]
		n := float64(rep.Connected)
		rep.RSSPerClient = round((rep.RelayRSSAfter-rep.RelayRSSBefore)/n, 0)
		rep.HeapPerClient = round((rep.RelayHeapAfter-rep.RelayHeapBefore)/n, 0)
		rep.RelayMemoryFigure = fmt.Sprintf("%.1f KB RSS, %.1f KB heap per client", rep.RSSPerClient/1000, rep.HeapPerClient/1000)
	}
	return emit(out, o.JSON, rep, func(w io.Writer) {
		fmt.Fprintf(w, "connect %s %s: %d/%d connected (%d failed) in %.3fs = %.1f connects/s\n",
			rep.Relay, rep.Transport, rep.Connected, rep.Clients, rep.Failed, rep.ConnectSeconds, rep.ConnectsPerS)
		if rep.RelayMemoryFigure != "" {
			fmt.Fprintf(w, "relay memory: %s (RSS %.1f→%.1f MB, heap %.1f→%.1f MB, relay reports %.0f clients)\n", rep.RelayMemoryFigure,
				rep.RelayRSSBefore/1e6, rep.RelayRSSAfter/1e6, rep.RelayHeapBefore/1e6, rep.RelayHeapAfter/1e6, rep.RelayClients)
		}
	})
}

// forceGC asks the relay's pprof endpoint for a heap profile with gc=1,
// which runs a garbage collection first. No-op when base is empty.
func forceGC(ctx context.Context, base string) error {
	if base == "" {
		return nil
	}
	// Twice: sync.Pool keeps objects through one GC (its victim cache),
	// and quic-go pools 64 KiB send buffers that are not per-client memory.
	for range 2 {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/debug/pprof/heap?gc=1", nil)
		if err != nil {
			return fmt.Errorf("loadtest: --relay-pprof: %w", err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("loadtest: --relay-pprof: %w", err)
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<20))
		resp.Body.Close()
	}
	return nil
}

// scrape reads a Prometheus text endpoint into series → value. Bounded:
// it reads at most maxScrape bytes.
func scrape(ctx context.Context, url string) (map[string]float64, error) {
	const maxScrape = 8 << 20
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("loadtest: --relay-metrics: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("loadtest: scrape relay metrics: %w", err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, maxScrape))
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
			out[l[:i]] = v
		}
	}
	return out, sc.Err()
}
