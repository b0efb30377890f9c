package portmap

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/wiremesh/wiremesh/metrics"
)

// fakeGateway is one router speaking the fake protocols below. Its epoch is
// the fake clock's seconds since boot, so restart() behaves like a reboot.
type fakeGateway struct {
	mu       sync.Mutex
	boot     time.Time
	mappings map[Kind]bool // what the router holds, by protocol
	lost     bool          // UPnP: control URL gone until the next probe
}

func (g *fakeGateway) epoch() uint32 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return uint32(time.Since(g.boot) / time.Second)
}

// restart forgets every mapping and starts the epoch again.
func (g *fakeGateway) restart() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.boot = time.Now()
	g.mappings = map[Kind]bool{}
	g.lost = true
}

// fakeProto is a protocol on a fakeGateway; every call is recorded.
type fakeProto struct {
	k        Kind
	g        *fakeGateway
	ext      netip.AddrPort
	probeErr error
	probeDur time.Duration
	mapErr   error

	mu       sync.Mutex
	probedAt []time.Time
	maps     []time.Duration // lifetimes asked... granted below
	unmaps   int
	checks   int
	checkErr error
}

func (p *fakeProto) kind() Kind { return p.k }

func (p *fakeProto) probe(ctx context.Context) (status, error) {
	p.mu.Lock()
	p.probedAt = append(p.probedAt, time.Now())
	p.mu.Unlock()
	if p.probeDur > 0 {
		select {
		case <-time.After(p.probeDur):
		case <-ctx.Done():
			return status{}, ctx.Err()
		}
	}
	if p.probeErr != nil {
		return status{}, p.probeErr
	}
	if p.k == KindUPnP {
		p.g.mu.Lock()
		p.g.lost = false
		p.g.mu.Unlock()
	}
	return p.status(), nil
}

func (p *fakeProto) status() status {
	if p.k == KindUPnP {
		return status{}
	}
	return status{epoch: p.g.epoch(), hasEpoch: true}
}

func (p *fakeProto) mapPort(ctx context.Context, prev netip.AddrPort) (mapping, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mapErr != nil {
		return mapping{}, p.mapErr
	}
	p.g.mu.Lock()
	p.g.mappings[p.k] = true
	p.g.mu.Unlock()
	lifetime := 7200 * time.Second
	p.maps = append(p.maps, lifetime)
	return mapping{external: p.ext, lifetime: lifetime, st: p.status()}, nil
}

func (p *fakeProto) check(ctx context.Context, m mapping) (status, error) {
	p.mu.Lock()
	p.checks++
	err := p.checkErr
	p.mu.Unlock()
	if err != nil {
		return status{}, err
	}
	if p.k == KindUPnP {
		p.g.mu.Lock()
		defer p.g.mu.Unlock()
		if p.g.lost || !p.g.mappings[p.k] {
			return status{}, errors.New("connection refused")
		}
	}
	return p.status(), nil
}

func (p *fakeProto) unmap(ctx context.Context, m mapping) error {
	p.mu.Lock()
	p.unmaps++
	p.mu.Unlock()
	p.g.mu.Lock()
	delete(p.g.mappings, p.k)
	p.g.mu.Unlock()
	return nil
}

func (p *fakeProto) counts() (maps, unmaps, checks int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.maps), p.unmaps, p.checks
}

var (
	testGW   = netip.MustParseAddr("198.19.1.1")
	testSelf = netip.MustParseAddr("198.19.1.2")
)

// fakeSet is a gateway with the three protocols.
type fakeSet struct {
	g              *fakeGateway
	pmp, pcp, upnp *fakeProto
}

func newFakeSet() *fakeSet {
	g := &fakeGateway{boot: time.Now(), mappings: map[Kind]bool{}}
	return &fakeSet{
		g:    g,
		pmp:  &fakeProto{k: KindNATPMP, g: g, ext: netip.MustParseAddrPort("198.18.1.2:41641")},
		pcp:  &fakeProto{k: KindPCP, g: g, ext: netip.MustParseAddrPort("198.18.1.2:41642")},
		upnp: &fakeProto{k: KindUPnP, g: g, ext: netip.MustParseAddrPort("198.18.1.2:41643")},
	}
}

func (fs *fakeSet) config(m *Metrics) Config {
	return Config{
		Port:    41641,
		Metrics: m,
		Gateway: func() (netip.Addr, netip.Addr, error) { return testGW, testSelf, nil },
		newProtos: func(gw, self netip.Addr, cfg *Config) []proto {
			return []proto{fs.pmp, fs.pcp, fs.upnp}
		},
	}
}

func start(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestProbesAllAtOnceAndPrefersNATPMP(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSet()
		fs.pmp.probeDur = 100 * time.Millisecond // slower, but preferred
		t0 := time.Now()
		c := start(t, fs.config(nil))
		defer c.Close()
		<-c.Changed()
		ext, kind := c.Mapping()
		if kind != KindNATPMP || ext != fs.pmp.ext {
			t.Fatalf("mapping %v %q, want %v nat-pmp", ext, kind, fs.pmp.ext)
		}
		for _, p := range []*fakeProto{fs.pmp, fs.pcp, fs.upnp} {
			if len(p.probedAt) != 1 || p.probedAt[0].Sub(t0) > 250*time.Millisecond {
				t.Fatalf("%s probed at %v, want once within 250 ms of start", p.k, p.probedAt)
			}
		}
		if n, _, _ := fs.pcp.counts(); n != 0 {
			t.Fatalf("pcp mapped %d times; only the preferred protocol maps", n)
		}
	})
}

func TestFallsBackInOrder(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*fakeSet)
		want Kind
	}{
		{"no nat-pmp", func(fs *fakeSet) { fs.pmp.probeErr = errors.New("timeout") }, KindPCP},
		{"nat-pmp refuses to map", func(fs *fakeSet) { fs.pmp.mapErr = errors.New("refused") }, KindPCP},
		{"only upnp", func(fs *fakeSet) {
			fs.pmp.probeErr = errors.New("timeout")
			fs.pcp.probeErr = errors.New("timeout")
		}, KindUPnP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fs := newFakeSet()
				tc.set(fs)
				c := start(t, fs.config(nil))
				defer c.Close()
				<-c.Changed()
				if _, kind := c.Mapping(); kind != tc.want {
					t.Fatalf("kind %q, want %q", kind, tc.want)
				}
			})
		})
	}
}

func TestRenewsAtHalfLifetime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSet()
		reg := metrics.NewRegistry()
		m := NewMetrics(reg)
		c := start(t, fs.config(m))
		defer c.Close()
		<-c.Changed()
		time.Sleep(3600*time.Second - time.Millisecond)
		synctest.Wait()
		if n, _, _ := fs.pmp.counts(); n != 1 {
			t.Fatalf("%d maps before half the lifetime, want 1", n)
		}
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if n, _, _ := fs.pmp.counts(); n != 2 {
			t.Fatalf("%d maps at half the lifetime, want 2 (one renewal)", n)
		}
		if got := testutil.ToFloat64(m.renewals.WithLabelValues("nat-pmp", "ok")); got != 1 {
			t.Fatalf("renewals ok = %v, want 1", got)
		}
		time.Sleep(3600 * time.Second)
		synctest.Wait()
		if n, _, _ := fs.pmp.counts(); n != 3 {
			t.Fatalf("%d maps after a full lifetime, want 3", n)
		}
		select {
		case <-c.Changed():
			t.Fatal("a renewal to the same address signalled Changed")
		default:
		}
		if got := *m.kind.Load(); got != "nat-pmp" {
			t.Fatalf("info kind %q, want nat-pmp", got)
		}
	})
}

func TestRestartDetectedByEpochAndRemapped(t *testing.T) {
	for _, kind := range []Kind{KindNATPMP, KindPCP} {
		t.Run(string(kind), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fs := newFakeSet()
				if kind == KindPCP {
					fs.pmp.probeErr = errors.New("timeout")
				}
				p := map[Kind]*fakeProto{KindNATPMP: fs.pmp, KindPCP: fs.pcp}[kind]
				m := NewMetrics(metrics.NewRegistry())
				cfg := fs.config(m)
				cfg.CheckInterval = 10 * time.Second
				c := start(t, cfg)
				defer c.Close()
				<-c.Changed()
				time.Sleep(95 * time.Second) // nine quiet checks
				synctest.Wait()
				if n, _, checks := p.counts(); n != 1 || checks != 9 {
					t.Fatalf("before restart: %d maps, %d checks; want 1, 9", n, checks)
				}
				fs.g.restart()
				time.Sleep(5 * time.Second) // to the next check
				synctest.Wait()
				if n, _, _ := p.counts(); n != 2 {
					t.Fatalf("after restart: %d maps, want 2", n)
				}
				select {
				case <-c.Changed():
				default:
					t.Fatal("re-mapping after a restart did not signal Changed")
				}
				if !fs.g.mappings[kind] {
					t.Fatal("the gateway does not hold the mapping again")
				}
				if got := testutil.ToFloat64(m.restarts.WithLabelValues(string(kind))); got != 1 {
					t.Fatalf("restarts = %v, want 1", got)
				}
				// And it stays quiet afterwards.
				time.Sleep(100 * time.Second)
				synctest.Wait()
				if n, _, _ := p.counts(); n != 2 {
					t.Fatalf("%d maps after the restart settled, want 2", n)
				}
			})
		})
	}
}

func TestAnnouncementTriggersCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSet()
		cfg := fs.config(nil)
		cfg.CheckInterval = time.Hour
		c := start(t, cfg)
		defer c.Close()
		<-c.Changed()
		time.Sleep(10 * time.Minute)
		fs.g.restart()
		c.announced <- struct{}{} // what listenAnnouncements does
		synctest.Wait()
		if n, _, checks := fs.pmp.counts(); n != 2 || checks != 1 {
			t.Fatalf("after an announcement: %d maps, %d checks; want 2, 1 (at once, not in an hour)", n, checks)
		}
	})
}

func TestIsAnnouncement(t *testing.T) {
	for name, tc := range map[string]struct {
		b    []byte
		want bool
	}{
		"nat-pmp external address": {testdata(t, "pmp-ext.bin"), true},
		"pcp announce":             {testdata(t, "pcp-announce.bin"), true},
		"pcp map":                  {testdata(t, "pcp-map.bin"), false},
		"nat-pmp map":              {testdata(t, "pmp-map.bin"), false},
		"garbage":                  {[]byte("hello"), false},
		"empty":                    {nil, false},
	} {
		if got := isAnnouncement(tc.b); got != tc.want {
			t.Errorf("%s: %v, want %v", name, got, tc.want)
		}
	}
}

func TestUPnPLostMappingRemapped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSet()
		fs.pmp.probeErr = errors.New("timeout")
		fs.pcp.probeErr = errors.New("timeout")
		cfg := fs.config(nil)
		cfg.CheckInterval = 10 * time.Second
		c := start(t, cfg)
		defer c.Close()
		<-c.Changed()
		fs.g.restart()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		// The failed check drops the mapping (Changed), then probing
		// finds the gateway again and maps (Changed again, coalesced).
		<-c.Changed()
		if ext, kind := c.Mapping(); kind != KindUPnP || ext != fs.upnp.ext {
			t.Fatalf("after the restart: %v %q, want %v upnp", ext, kind, fs.upnp.ext)
		}
		if n, _, _ := fs.upnp.counts(); n != 2 {
			t.Fatalf("%d maps, want 2", n)
		}
		if !fs.g.mappings[KindUPnP] {
			t.Fatal("the gateway does not hold the mapping again")
		}
	})
}

func TestRenewalFailureStartsOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSet()
		m := NewMetrics(metrics.NewRegistry())
		cfg := fs.config(m)
		c := start(t, cfg)
		defer c.Close()
		<-c.Changed()
		fs.pmp.mu.Lock()
		fs.pmp.mapErr = errors.New("gone")
		fs.pmp.mu.Unlock()
		time.Sleep(3600 * time.Second)
		synctest.Wait()
		// The renewal failed: PMP is dropped and PCP takes over.
		if got := testutil.ToFloat64(m.renewals.WithLabelValues("nat-pmp", "error")); got != 1 {
			t.Fatalf("renewal errors = %v, want 1", got)
		}
		if _, kind := c.Mapping(); kind != KindPCP {
			t.Fatalf("kind %q after a failed renewal, want pcp", kind)
		}
	})
}

func TestNoGatewayRetries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSet()
		cfg := fs.config(nil)
		var mu sync.Mutex
		up := false
		cfg.Gateway = func() (netip.Addr, netip.Addr, error) {
			mu.Lock()
			defer mu.Unlock()
			if !up {
				return netip.Addr{}, netip.Addr{}, errors.New("no default route")
			}
			return testGW, testSelf, nil
		}
		c := start(t, cfg)
		defer c.Close()
		synctest.Wait()
		if _, kind := c.Mapping(); kind != KindNone {
			t.Fatalf("kind %q without a gateway", kind)
		}
		mu.Lock()
		up = true
		mu.Unlock()
		time.Sleep(DefaultRetryInterval)
		synctest.Wait()
		if _, kind := c.Mapping(); kind != KindNATPMP {
			t.Fatalf("kind %q one retry interval after the gateway appeared, want nat-pmp", kind)
		}
	})
}

func TestGatewayChangeDropsMapping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSet()
		cfg := fs.config(nil)
		var mu sync.Mutex
		gw := testGW
		cfg.Gateway = func() (netip.Addr, netip.Addr, error) {
			mu.Lock()
			defer mu.Unlock()
			return gw, testSelf, nil
		}
		c := start(t, cfg)
		defer c.Close()
		<-c.Changed()
		mu.Lock()
		gw = netip.MustParseAddr("198.19.9.1")
		mu.Unlock()
		time.Sleep(DefaultCheckInterval)
		synctest.Wait()
		if _, unmaps, _ := fs.pmp.counts(); unmaps != 1 {
			t.Fatalf("%d unmaps after the gateway changed, want 1", unmaps)
		}
		// and maps again through the new gateway at once
		if n, _, _ := fs.pmp.counts(); n != 2 {
			t.Fatalf("%d maps, want 2", n)
		}
	})
}

func TestCloseDeletesMapping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSet()
		c := start(t, fs.config(nil))
		<-c.Changed()
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if _, unmaps, _ := fs.pmp.counts(); unmaps != 1 {
			t.Fatalf("%d unmaps on close, want 1", unmaps)
		}
		if fs.g.mappings[KindNATPMP] {
			t.Fatal("the gateway still holds the mapping")
		}
		if ext, kind := c.Mapping(); ext.IsValid() || kind != KindNone {
			t.Fatalf("mapping %v %q after close", ext, kind)
		}
		if err := c.Close(); !errors.Is(err, ErrClosed) {
			t.Fatalf("second close: %v, want ErrClosed", err)
		}
	})
}

func TestContextCancelDeletesMapping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSet()
		ctx, cancel := context.WithCancel(t.Context())
		c, err := Start(ctx, fs.config(nil))
		if err != nil {
			t.Fatal(err)
		}
		<-c.Changed()
		cancel()
		synctest.Wait()
		if _, unmaps, _ := fs.pmp.counts(); unmaps != 1 {
			t.Fatalf("%d unmaps after cancel, want 1", unmaps)
		}
		c.Close()
	})
}

// TestCloseWhileProbing: Close during a slow probe returns once the probe
// goroutines are done, with nothing mapped.
func TestCloseWhileProbing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fs := newFakeSet()
		fs.pmp.probeDur = time.Hour // cut short by the probe timeout
		fs.pcp.probeErr = errors.New("timeout")
		fs.upnp.probeErr = errors.New("timeout")
		c := start(t, fs.config(nil))
		time.Sleep(100 * time.Millisecond)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if n, unmaps, _ := fs.pmp.counts(); n != 0 || unmaps != 0 {
			t.Fatalf("%d maps, %d unmaps; want none", n, unmaps)
		}
	})
}

func TestStartValidates(t *testing.T) {
	if _, err := Start(t.Context(), Config{}); err == nil {
		t.Fatal("Start without a port succeeded")
	}
	if _, err := Start(t.Context(), Config{Port: 1, Protocols: []Kind{"igd"}}); err == nil || !strings.Contains(err.Error(), "igd") {
		t.Fatalf("unknown protocol: %v", err)
	}
}

func TestMetricsLint(t *testing.T) {
	reg := metrics.NewRegistry()
	m := NewMetrics(reg)
	m.setKind(KindPCP)
	m.renewal(KindPCP, true)
	m.restart(KindPCP)
	m.mapped(KindPCP)
	problems, err := metrics.Lint(reg)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("metric naming problems:\n%s", strings.Join(problems, "\n"))
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"meshnode_port_mapping_info", "meshnode_port_mappings_total",
		"meshnode_port_mapping_renewals_total", "meshnode_port_mapping_gateway_restarts_total"} {
		if !names[want] {
			t.Fatalf("metric %s missing", want)
		}
	}
	want := func(kind string) {
		t.Helper()
		exp := "# HELP meshnode_port_mapping_info The port-mapping protocol holding a mapping for this node, or none (value 1).\n" +
			"# TYPE meshnode_port_mapping_info gauge\n" +
			"meshnode_port_mapping_info{kind=\"" + kind + "\"} 1\n"
		if err := testutil.GatherAndCompare(reg, strings.NewReader(exp), "meshnode_port_mapping_info"); err != nil {
			t.Fatal(err)
		}
	}
	want("pcp")
	m.setKind(KindNone)
	want("none")
	var nilm *Metrics // a nil *Metrics records nothing and does not crash
	nilm.setKind(KindPCP)
	nilm.renewal(KindPCP, false)
	nilm.restart(KindPCP)
	nilm.mapped(KindPCP)
}
