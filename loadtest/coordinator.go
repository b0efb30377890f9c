// Package loadtest holds Wiremesh's load generators. Each mode is a function
// taking its command-line arguments; cmd/loadtest dispatches to them.
package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/cli"
	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// The coordinator mode simulates N nodes against a running coordinator:
//
//  1. register N nodes, each with its own node key (registration rate);
//  2. open one netmap stream per node, multiplexed over a few HTTP/2
//     connections, and wait for every full map;
//  3. change one node's endpoints --changes times and time how long each
//     change takes to reach every stream that should see it (p50/p99/max);
//  4. read the coordinator's memory from its /metrics.
//
// With --hubs H the first H nodes register with --hub-authkey (a tagged key)
// and the change is made on a hub; with a policy such as
// {"acls":[{"action":"accept","src":["*"],"dst":["tag:hub:*"]}]} every
// stream sees the hubs and a hub change fans out to all N streams while each
// full map stays small. Without hubs, every node sees every other (no
// policy), and the change is made on node 0.
//
// With a list of replicas (--coordinator URL1,URL2,...), node i registers
// and streams through replica i mod R (its list starts there), so the
// streams spread evenly and a change made through the first replica
// reaches the others' streams through the database's notifications.
// --metrics-url then takes the replicas' /metrics URLs in the same order:
// CPU is summed, memory is reported per replica.

// coordinatorFlags are the flags of `loadtest coordinator`.
type coordinatorFlags struct {
	Coordinator string        `flag:"coordinator" env:"COORDINATOR" help:"coordinator URL (https://HOST:PORT), or a comma-separated list of replicas to spread the nodes over"`
	AuthKey     string        `flag:"authkey" env:"AUTHKEY" help:"reusable auth key for the simulated nodes"`
	HubAuthKey  string        `flag:"hub-authkey" env:"HUB_AUTHKEY" help:"reusable tagged auth key for the hub nodes (with --hubs)"`
	Nodes       int           `flag:"nodes" env:"NODES" envDefault:"1000" help:"simulated nodes"`
	Hubs        int           `flag:"hubs" env:"HUBS" help:"how many of the nodes are hubs (registered with --hub-authkey)"`
	Concurrency int           `flag:"concurrency" env:"CONCURRENCY" envDefault:"64" help:"registrations in flight"`
	Conns       int           `flag:"conns" env:"CONNS" envDefault:"16" help:"HTTP/2 clients the streams are spread over"`
	Changes     int           `flag:"changes" env:"CHANGES" envDefault:"5" help:"endpoint changes to time"`
	Timeout     time.Duration `flag:"timeout" env:"TIMEOUT" envDefault:"10m" help:"give up after this long"`
	MetricsURL  string        `flag:"metrics-url" env:"METRICS_URL" help:"coordinator /metrics URL, to report its memory (a comma-separated list with replicas)"`
	JSON        bool          `flag:"json" env:"JSON" help:"print one JSON object with the figures"`
}

// CoordinatorResult is what `loadtest coordinator --json` prints.
type CoordinatorResult struct {
	Nodes             int     `json:"nodes"`
	Hubs              int     `json:"hubs"`
	Streams           int     `json:"streams"`
	RegisterSeconds   float64 `json:"register_seconds"`
	RegisterPerSecond float64 `json:"register_per_second"`
	StreamsSeconds    float64 `json:"streams_ready_seconds"`
	FullMapBytes      int64   `json:"full_map_bytes_total"`
	Changes           int     `json:"changes"`
	AffectedStreams   int     `json:"affected_streams"`
	Missed            int     `json:"missed"`
	FanoutP50MS       float64 `json:"fanout_p50_ms"`
	FanoutP99MS       float64 `json:"fanout_p99_ms"`
	FanoutMaxMS       float64 `json:"fanout_max_ms"`
	// CoordinatorCPUPerChangeMS is the coordinator's CPU time (from
	// process_cpu_seconds_total, 10 ms resolution) over the change phase,
	// per change: a measure of fan-out cost that other load on the machine
	// does not inflate the way it inflates latency.
	CoordinatorCPUPerChangeMS float64 `json:"coordinator_cpu_ms_per_change,omitempty"`
	// CoordinatorCPUPerStreamUS is the same per affected stream.
	CoordinatorCPUPerStreamUS float64 `json:"coordinator_cpu_us_per_stream,omitempty"`
	// CoordinatorRSSBytes is process_resident_memory_bytes from --metrics-url
	// (the largest replica's with several).
	CoordinatorRSSBytes  float64 `json:"coordinator_rss_bytes,omitempty"`
	CoordinatorHeapBytes float64 `json:"coordinator_heap_inuse_bytes,omitempty"`
	// Replicas is how many coordinators the nodes were spread over;
	// ReplicaRSSBytes is each one's resident memory, in --metrics-url order.
	Replicas          int       `json:"replicas"`
	ReplicaRSSBytes   []float64 `json:"replica_rss_bytes,omitempty"`
	LoadtestHeapBytes uint64    `json:"loadtest_heap_inuse_bytes"`
}

// simNode is one simulated node.
type simNode struct {
	priv   key.NodePrivate
	client *coordclient.Client
	name   string
	hub    bool

	mu     sync.Mutex
	marker []byte    // the endpoint text being waited for
	seen   time.Time // when a frame carrying marker arrived
	gotMap chan struct{}
	mapLen int64
	err    error
}

// RunCoordinator runs the coordinator load test.
func RunCoordinator(ctx context.Context, args []string, stdout io.Writer) error {
	var f coordinatorFlags
	pos, err := cli.Parse("loadtest coordinator", "LOADTEST_", "loadtest coordinator --coordinator URL --authkey KEY [--nodes N] [--hubs H --hub-authkey KEY] [--json]", &f, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("unexpected argument %q", pos[0])
	}
	switch {
	case f.Coordinator == "" || f.AuthKey == "":
		return errors.New("--coordinator and --authkey are required")
	case f.Nodes < 2 || f.Nodes > 100000:
		return errors.New("--nodes must be 2 to 100000")
	case f.Hubs < 0 || f.Hubs >= f.Nodes:
		return errors.New("--hubs must be 0 or more and fewer than --nodes")
	case f.Hubs > 0 && f.HubAuthKey == "":
		return errors.New("--hubs needs --hub-authkey")
	case f.Concurrency < 1 || f.Conns < 1 || f.Changes < 1:
		return errors.New("--concurrency, --conns and --changes must be at least 1")
	}
	ctx, cancel := context.WithTimeout(ctx, f.Timeout)
	defer cancel()
	_, pin, err := netmap.ParseAuthKey(f.AuthKey)
	if err != nil {
		return fmt.Errorf("--authkey: %w", err)
	}
	urls, err := coordclient.ParseURLs(f.Coordinator)
	if err != nil {
		return fmt.Errorf("--coordinator: %w", err)
	}
	var metricsURLs []string
	if f.MetricsURL != "" {
		metricsURLs = strings.Split(f.MetricsURL, ",")
	}
	// rotated is the replica list starting at replica i mod R.
	rotated := func(i int) string {
		i %= len(urls)
		return strings.Join(append(slices.Clone(urls[i:]), urls[:i]...), ",")
	}
	clients := make([]*http.Client, f.Conns)
	for i := range clients {
		if clients[i], err = coordclient.NewHTTPClient(f.Coordinator, pin); err != nil {
			return err
		}
		defer clients[i].CloseIdleConnections()
	}
	info, err := coordclient.FetchInfo(ctx, clients[0], f.Coordinator)
	if err != nil {
		return err
	}
	res := CoordinatorResult{Nodes: f.Nodes, Hubs: f.Hubs, Changes: f.Changes, Replicas: len(urls)}
	run := fmt.Sprintf("%x", time.Now().UnixNano()&0xffffff)

	// 1. Register.
	nodes := make([]*simNode, f.Nodes)
	for i := range nodes {
		priv := key.NewNode()
		nodes[i] = &simNode{priv: priv, hub: i < f.Hubs, gotMap: make(chan struct{}),
			client: coordclient.New(rotated(i), clients[i%len(clients)], info, priv)}
	}
	start := time.Now()
	if err := forEach(ctx, nodes, f.Concurrency, func(i int, n *simNode) error {
		ak := f.AuthKey
		if n.hub {
			ak = f.HubAuthKey
		}
		resp, err := n.client.Register(ctx, ak, key.NewDisco().Public(), fmt.Sprintf("lt-%s-%06d", run, i), "loadtest")
		if err != nil {
			return fmt.Errorf("register node %d: %w", i, err)
		}
		n.name = resp.Node.Name
		return nil
	}); err != nil {
		return err
	}
	res.RegisterSeconds = time.Since(start).Seconds()
	res.RegisterPerSecond = float64(f.Nodes) / res.RegisterSeconds

	// 2. Stream.
	sctx, scancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		scancel()
		wg.Wait()
	}()
	start = time.Now()
	var opened atomic.Int64
	sem := make(chan struct{}, f.Concurrency)
	for _, n := range nodes {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.stream(sctx, sem)
			opened.Add(1)
		}()
	}
	for i, n := range nodes {
		select {
		case <-n.gotMap:
			if n.err != nil {
				return fmt.Errorf("stream of node %d: %w", i, n.err)
			}
			res.FullMapBytes += n.mapLen
		case <-ctx.Done():
			return fmt.Errorf("waiting for full maps: %w", ctx.Err())
		}
	}
	res.Streams = f.Nodes
	res.StreamsSeconds = time.Since(start).Seconds()

	// 3. Change one node's endpoints and time the fan-out.
	var cpu0 float64
	if f.MetricsURL != "" {
		time.Sleep(time.Second) // let the online deltas of stream opening drain
		if cpu0, err = scrapeSum(ctx, metricsURLs, "process_cpu_seconds_total"); err != nil {
			return fmt.Errorf("--metrics-url: %w", err)
		}
	}
	changer := nodes[0]
	var lat []float64
	for c := 0; c < f.Changes; c++ {
		ep := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 250, byte(c)}), uint16(40000+c))
		marker := []byte(strconv.Quote(ep.String()))
		for _, n := range nodes[1:] {
			n.mu.Lock()
			n.marker, n.seen = marker, time.Time{}
			n.mu.Unlock()
		}
		t0 := time.Now()
		eps := []netip.AddrPort{ep}
		if err := changer.client.Update(ctx, netmap.UpdateRequest{Endpoints: &eps}); err != nil {
			return fmt.Errorf("update endpoints: %w", err)
		}
		deadline := time.Now().Add(30 * time.Second)
		affected, missed := 0, 0
		var this []float64
		for _, n := range nodes[1:] {
			for {
				n.mu.Lock()
				seen, err := n.seen, n.err
				n.mu.Unlock()
				if !seen.IsZero() {
					this = append(this, seen.Sub(t0).Seconds()*1000)
					affected++
					break
				}
				if err != nil || time.Now().After(deadline) {
					missed++
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
		res.AffectedStreams = affected
		res.Missed += missed
		lat = append(lat, this...)
	}
	slices.Sort(lat)
	res.FanoutP50MS, res.FanoutP99MS = percentile(lat, 50), percentile(lat, 99)
	if len(lat) > 0 {
		res.FanoutMaxMS = lat[len(lat)-1]
	}

	// 4. CPU and memory.
	if f.MetricsURL != "" {
		cpu1, err := scrapeSum(ctx, metricsURLs, "process_cpu_seconds_total")
		if err != nil {
			return fmt.Errorf("--metrics-url: %w", err)
		}
		res.CoordinatorCPUPerChangeMS = (cpu1 - cpu0) * 1000 / float64(f.Changes)
		if res.AffectedStreams > 0 {
			res.CoordinatorCPUPerStreamUS = res.CoordinatorCPUPerChangeMS * 1000 / float64(res.AffectedStreams)
		}
		for _, u := range metricsURLs {
			m, err := scrapeNamed(ctx, u, "process_resident_memory_bytes", "go_memstats_heap_inuse_bytes")
			if err != nil {
				return fmt.Errorf("--metrics-url: %w", err)
			}
			res.ReplicaRSSBytes = append(res.ReplicaRSSBytes, m[0])
			res.CoordinatorRSSBytes, res.CoordinatorHeapBytes = max(res.CoordinatorRSSBytes, m[0]), max(res.CoordinatorHeapBytes, m[1])
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.LoadtestHeapBytes = ms.HeapInuse

	if f.JSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	fmt.Fprintf(stdout, "nodes %d (hubs %d): registered in %.2fs (%.0f/s); %d streams ready in %.2fs (full maps %d bytes)\n",
		res.Nodes, res.Hubs, res.RegisterSeconds, res.RegisterPerSecond, res.Streams, res.StreamsSeconds, res.FullMapBytes)
	fmt.Fprintf(stdout, "fan-out of %d endpoint changes to %d streams each: p50 %.1f ms, p99 %.1f ms, max %.1f ms, missed %d\n",
		res.Changes, res.AffectedStreams, res.FanoutP50MS, res.FanoutP99MS, res.FanoutMaxMS, res.Missed)
	if res.CoordinatorRSSBytes > 0 {
		fmt.Fprintf(stdout, "coordinator CPU per change: %.1f ms (%.1f µs per affected stream)\n", res.CoordinatorCPUPerChangeMS, res.CoordinatorCPUPerStreamUS)
		fmt.Fprintf(stdout, "coordinator memory: RSS %.0f MiB, heap in use %.0f MiB\n", res.CoordinatorRSSBytes/(1<<20), res.CoordinatorHeapBytes/(1<<20))
	}
	return nil
}

// stream opens n's netmap stream and reads it until ctx ends, recording
// when a frame carrying the current marker arrives. It releases sem once
// the first frame (the full map) is in.
func (n *simNode) stream(ctx context.Context, sem chan struct{}) {
	released := false
	release := func(err error) {
		if !released {
			released = true
			n.err = err
			close(n.gotMap)
			<-sem
		}
	}
	s, err := n.client.OpenStream(ctx, netmap.MapRequest{DiscoKey: key.NewDisco().Public()})
	if err != nil {
		release(err)
		return
	}
	defer s.Close()
	for {
		b, err := s.NextRaw()
		if err != nil {
			if !released {
				release(err)
			} else if ctx.Err() == nil {
				n.mu.Lock()
				n.err = err
				n.mu.Unlock()
			}
			return
		}
		if !released {
			n.mapLen = int64(len(b))
			release(nil)
			continue
		}
		n.mu.Lock()
		if n.marker != nil && n.seen.IsZero() && bytes.Contains(b, n.marker) {
			n.seen = time.Now()
		}
		n.mu.Unlock()
	}
}

// forEach runs f on every item with at most conc in flight and returns the
// first error.
func forEach[T any](ctx context.Context, items []T, conc int, f func(int, T) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(items) {
					return
				}
				if err := f(i, items[i]); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// scrapeSum adds one unlabelled metric over several endpoints.
func scrapeSum(ctx context.Context, urls []string, name string) (float64, error) {
	var sum float64
	for _, u := range urls {
		v, err := scrapeNamed(ctx, u, name)
		if err != nil {
			return 0, err
		}
		sum += v[0]
	}
	return sum, nil
}

// scrapeNamed reads the named unlabelled metrics from a Prometheus text
// endpoint (see scrape).
func scrapeNamed(ctx context.Context, url string, names ...string) ([]float64, error) {
	m, err := scrape(ctx, url)
	if err != nil {
		return nil, err
	}
	out := make([]float64, len(names))
	for i, n := range names {
		out[i] = m[n]
	}
	return out, nil
}
