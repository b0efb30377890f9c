//go:build lab

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// iperf3 runs a TCP iperf3 test from client to server's addr for d and
// returns the receiver's bits per second and the sender's retransmits.
func iperf3(b testing.TB, client, server *lab.Namespace, addr netip.Addr, d time.Duration) (float64, int) {
	r := iperf3Run(b, client, server, addr, d)
	return r.bps, r.retransmits
}

// iperfResult is one iperf3 TCP run: the receiver's rate, the sender's
// retransmits and bytes sent.
type iperfResult struct {
	bps         float64
	retransmits int
	sentBytes   float64
}

func iperf3Run(b testing.TB, client, server *lab.Namespace, addr netip.Addr, d time.Duration) iperfResult {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	srv, err := server.Start(ctx, "iperf3", "-s", "-B", addr.String(), "-p", "5201")
	if err != nil {
		b.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	for try := 0; ; try++ {
		out, _ := server.Command(ctx, "ss", "-Hltn", "sport", "= :5201").Output()
		if len(out) > 0 {
			break
		}
		if try == 100 {
			b.Fatal("iperf3 server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, err := client.Command(ctx, "iperf3", "-c", addr.String(), "-p", "5201", "-t", fmt.Sprint(int(d.Seconds())), "-J").Output()
	if err != nil {
		b.Fatalf("iperf3: %v\n%s", err, out)
	}
	var r struct {
		End struct {
			SumSent struct {
				Retransmits int     `json:"retransmits"`
				Bytes       float64 `json:"bytes"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.End.SumReceived.BitsPerSecond == 0 {
		b.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	return iperfResult{bps: r.End.SumReceived.BitsPerSecond, retransmits: r.End.SumSent.Retransmits, sentBytes: r.End.SumSent.Bytes}
}

// relayCPUSeconds reads the relay's process_cpu_seconds_total.
func relayCPUSeconds(b testing.TB, w *world) float64 {
	b.Helper()
	r := w.relays[0]
	out := metricsOf(r.Host.Namespace, "http://"+netip.AddrPortFrom(r.Host.Addr, 9100).String()+"/metrics", "process_cpu_seconds_total")
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "process_cpu_seconds_total" {
			v, err := strconv.ParseFloat(f[1], 64)
			if err == nil {
				return v
			}
		}
	}
	b.Fatalf("relay has no process_cpu_seconds_total:\n%s", out)
	return 0
}

// relayMSS is the inner TCP segment size on the tunnel (MTU 1280 minus
// 40 bytes of IPv4 and TCP headers), to turn bytes sent into segments.
const relayMSS = 1280 - 40

// BenchmarkLabRelayVsDirect measures, in one lab run, iperf3 TCP over the
// relay path (two kernel-TUN nodes behind hard NATs, through the relay's
// fast path) and over the direct path (two nodes behind easy NATs), one
// after the other each iteration, and reports their ratio, the relayed
// run's retransmits as a share of its segments, and the relay's CPU
// seconds per gigabit relayed (from its process_cpu_seconds_total).
func BenchmarkLabRelayVsDirect(b *testing.B) {
	w := newWorld(b, "nyc")
	a := w.startNode("a", hardNATHost(b, w, "a"))
	bn := w.startNode("b", hardNATHost(b, w, "b"))
	c := w.startNode("c", easy.host(b, w, "c"))
	d := w.startNode("d", easy.host(b, w, "d"))
	for _, n := range []*node{a, bn, c, d} {
		n.waitStatus("three peers", func(st localapi.Status) bool { return len(st.Peers) == 3 })
	}
	bIP, dIP := bn.ip(), d.ip()
	if err := a.ping(bIP, 1); err != nil {
		b.Fatal(err)
	}
	w.waitEndpoints("c", "d")
	c.ping(dIP, 3)
	c.waitStatus("direct path to d", func(st localapi.Status) bool { p, _ := peerOf(st, "d"); return p.Path == "direct" })
	const dur = 5 * time.Second
	var relayed, direct, retrPct, cpuPerGbit []float64
	for i := 0; i < b.N; i++ {
		cpu0 := relayCPUSeconds(b, w)
		r := iperf3Run(b, a.host.Namespace, bn.host.Namespace, bIP, dur)
		cpu := relayCPUSeconds(b, w) - cpu0
		dr := iperf3Run(b, c.host.Namespace, d.host.Namespace, dIP, dur)
		st, _ := a.status()
		p, _ := peerOf(st, "b")
		if p.Path != "relay" {
			b.Fatalf("a's path to b is %q, want relay", p.Path)
		}
		gbit := r.bps * dur.Seconds() / 1e9
		pct := 100 * float64(r.retransmits) / (r.sentBytes / relayMSS)
		relayed, direct = append(relayed, r.bps), append(direct, dr.bps)
		retrPct, cpuPerGbit = append(retrPct, pct), append(cpuPerGbit, cpu/gbit)
		b.Logf("run %d: relay path %.0f Mbit/s (%d retr, %.2f%% of segments), direct path %.0f Mbit/s (%d retr), ratio %.3f; relay CPU %.2f s for %.2f Gbit = %.2f CPU-s/Gbit",
			i, r.bps/1e6, r.retransmits, pct, dr.bps/1e6, dr.retransmits, r.bps/dr.bps, cpu, gbit, cpu/gbit)
		if testing.Verbose() {
			b.Logf("a metrics:\n%s", metricsOf(a.host.Namespace, "http://127.0.0.1:9100/metrics", "meshnode_relay_fastpath"))
		}
	}
	b.ReportMetric(median(relayed)/1e6, "relay-Mbit/s")
	b.ReportMetric(median(direct)/1e6, "direct-Mbit/s")
	b.ReportMetric(median(relayed)/median(direct), "ratio")
	b.ReportMetric(median(retrPct), "relay-retr-%")
	b.ReportMetric(median(cpuPerGbit), "relay-CPU-s/Gbit")
}

// BenchmarkLabRelayIperf3 measures iperf3 TCP over the relay path between
// two kernel-TUN nodes behind hard NATs, beside plain TCP between the same
// two namespaces' routers... measured without the tunnel, in the same run.
func BenchmarkLabRelayIperf3(b *testing.B) {
	w := newWorld(b, "nyc")
	ha, hb := hardNATHost(b, w, "a"), hardNATHost(b, w, "b")
	a := w.startNode("a", ha)
	bn := w.startNode("b", hb)
	for _, n := range []*node{a, bn} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	bIP := bn.ip()
	if err := a.ping(bIP, 1); err != nil {
		b.Fatal(err)
	}
	// Baseline: plain TCP from a to the relay host (no tunnel, through a's
	// NAT), the same path the relayed packets take first.
	relay := w.relays[0].Host
	const d = 5 * time.Second
	var mesh, plain []float64
	for i := 0; i < b.N; i++ {
		bps, retr := iperf3(b, a.host.Namespace, bn.host.Namespace, bIP, d)
		mesh = append(mesh, bps)
		pbps, _ := iperf3(b, a.host.Namespace, relay.Namespace, relay.Addr, d)
		plain = append(plain, pbps)
		if testing.Verbose() {
			r := w.relays[0]
			b.Logf("relay metrics:\n%s", metricsOf(r.Host.Namespace, "http://"+netip.AddrPortFrom(r.Host.Addr, 9100).String()+"/metrics", "relayd_"))
			b.Logf("a metrics:\n%s", metricsOf(a.host.Namespace, "http://127.0.0.1:9100/metrics", "meshnode_"))
			b.Logf("b metrics:\n%s", metricsOf(bn.host.Namespace, "http://127.0.0.1:9100/metrics", "meshnode_"))
		}
		b.Logf("run %d: relay path %.0f Mbit/s (%d retransmits), plain TCP %.0f Mbit/s, ratio %.3f", i, bps/1e6, retr, pbps/1e6, bps/pbps)
	}
	b.ReportMetric(median(mesh)/1e6, "relay-Mbit/s")
	b.ReportMetric(median(plain)/1e6, "plain-Mbit/s")
	b.ReportMetric(median(mesh)/median(plain), "ratio")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkLabTimeToFirstPing measures, per run, the time from starting an
// already registered node's `meshnode run` to the first successful kernel
// ping to it from a peer (both behind hard NATs, so over the relay). ping
// sends every 10 ms until the first reply.
func BenchmarkLabTimeToFirstPing(b *testing.B) {
	w := newWorld(b, "nyc")
	a, bn, bIP := relayedPair(b, w)
	var runs []float64
	for i := 0; i < b.N; i++ {
		bn.stop()
		time.Sleep(500 * time.Millisecond) // let a's WireGuard session to b go stale
		start := time.Now()
		bn.start()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := a.host.Command(ctx, "ping", "-c", "1", "-i", "0.01", "-w", "15", bIP.String()).CombinedOutput()
		cancel()
		if err != nil {
			b.Fatalf("run %d: no ping: %v\n%s", i, err, out)
		}
		d := time.Since(start)
		runs = append(runs, d.Seconds())
		b.Logf("run %d: first ping after %v", i, d.Round(time.Millisecond))
	}
	b.ReportMetric(median(runs)*1000, "median-ms")
	b.ReportMetric(slices.Max(runs)*1000, "worst-ms")
}

// plainWireGuard sets up the wireguard-go binary (our module's version)
// between two hosts with tunnel addresses 100.100.0.1 and .2, configured by
// wg(8), each peer pointed at the other's public address.
func plainWireGuard(b testing.TB, w *world, x, y *lab.Host) netip.Addr {
	b.Helper()
	type side struct {
		h    *lab.Host
		ip   string
		dev  string // distinct: wireguard-go's UAPI socket path is global
		priv string
		pub  string
	}
	tag := fmt.Sprintf("%d", os.Getpid()%10000)
	sides := []*side{{h: x, ip: "100.100.0.1", dev: "wga" + tag}, {h: y, ip: "100.100.0.2", dev: "wgb" + tag}}
	for _, s := range sides {
		priv, err := exec.Command("wg", "genkey").Output()
		if err != nil {
			b.Fatalf("wg genkey: %v (install wireguard-tools)", err)
		}
		pubCmd := exec.Command("wg", "pubkey")
		pubCmd.Stdin = strings.NewReader(string(priv))
		pub, err := pubCmd.Output()
		if err != nil {
			b.Fatal(err)
		}
		s.priv, s.pub = strings.TrimSpace(string(priv)), strings.TrimSpace(string(pub))
		w.proc(s.h.Namespace, "wireguard", "-f", s.dev) // go build names it after the module
	}
	for i, s := range sides {
		o := sides[1-i]
		kf := filepath.Join(b.TempDir(), "k")
		os.WriteFile(kf, []byte(s.priv), 0o600)
		deadline := time.Now().Add(10 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			out, err := s.h.Command(ctx, "wg", "set", s.dev, "private-key", kf, "listen-port", "51820",
				"peer", o.pub, "endpoint", netip.AddrPortFrom(o.h.PublicAddr(), 51820).String(),
				"allowed-ips", o.ip+"/32", "persistent-keepalive", "1").CombinedOutput()
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("wg set: %v: %s", err, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := s.h.IP("addr add "+s.ip+"/32 dev "+s.dev, "link set "+s.dev+" mtu 1420 up", "route add "+o.ip+"/32 dev "+s.dev); err != nil {
			b.Fatal(err)
		}
	}
	peer := netip.MustParseAddr("100.100.0.2")
	n := &node{w: w, name: "wg-a", host: x}
	deadline := time.Now().Add(30 * time.Second)
	for n.ping(peer, 1) != nil {
		if time.Now().After(deadline) {
			b.Fatal("plain wireguard-go tunnel never came up")
		}
	}
	return peer
}

// BenchmarkLabDirectIperf3 measures iperf3 TCP over meshnode's direct path
// between two hosts behind easy NATs, beside plain wireguard-go (our
// module's version, configured with wg) between the same two hosts, in the
// same run, and reports the ratio.
func BenchmarkLabDirectIperf3(b *testing.B) {
	w := newWorld(b, "nyc")
	ha, hb := easy.host(b, w, "a"), easy.host(b, w, "b")
	a := w.startNode("a", ha)
	bn := w.startNode("b", hb)
	for _, n := range []*node{a, bn} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	w.waitEndpoints("a", "b")
	bIP := bn.ip()
	a.ping(bIP, 3)
	a.waitStatus("direct path", func(st localapi.Status) bool { p, _ := peerOf(st, "b"); return p.Path == "direct" })
	wgIP := plainWireGuard(b, w, ha, hb)
	const d = 5 * time.Second
	var mesh, plain []float64
	for i := 0; i < b.N; i++ {
		bps, retr := iperf3(b, a.host.Namespace, bn.host.Namespace, bIP, d)
		pbps, pretr := iperf3(b, a.host.Namespace, bn.host.Namespace, wgIP, d)
		mesh, plain = append(mesh, bps), append(plain, pbps)
		st, _ := a.status()
		p, _ := peerOf(st, "b")
		b.Logf("run %d: meshnode direct (%s) %.0f Mbit/s (%d retr), plain wireguard-go %.0f Mbit/s (%d retr), ratio %.3f",
			i, p.Path, bps/1e6, retr, pbps/1e6, pretr, bps/pbps)
	}
	b.ReportMetric(median(mesh)/1e6, "direct-Mbit/s")
	b.ReportMetric(median(plain)/1e6, "wggo-Mbit/s")
	b.ReportMetric(median(mesh)/median(plain), "ratio")
}

// BenchmarkLabTimeToDirect measures, per run, the time from the first
// packet between two nodes behind double NAT (home routers) to a confirmed
// direct path: node b restarts (a new disco key, so a forgets the path),
// a pings b once, and a's meshnode_time_to_direct_seconds records the
// upgrade. The first packet starts the attempt.
func BenchmarkLabTimeToDirect(b *testing.B) {
	w := newWorld(b, "nyc")
	a := w.startNode("a", double.host(b, w, "a"))
	bn := w.startNode("b", double.host(b, w, "b"))
	for _, n := range []*node{a, bn} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	bIP := bn.ip()
	sumCount := func() (float64, float64) {
		out := metricsOf(a.host.Namespace, "http://127.0.0.1:9100/metrics", "meshnode_time_to_direct_seconds_")
		var s, c float64
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 2 {
				v, _ := strconv.ParseFloat(f[1], 64)
				switch f[0] {
				case "meshnode_time_to_direct_seconds_sum":
					s = v
				case "meshnode_time_to_direct_seconds_count":
					c = v
				}
			}
		}
		return s, c
	}
	var runs []float64
	for i := 0; i < b.N; i++ {
		// The sample is a's upgrade to b in this run, whatever starts it
		// (a's first packet, or b's call-me-maybe once b is back).
		s0, c0 := sumCount()
		bn.stop()
		bn.start()
		bn.waitStatus("peer", func(st localapi.Status) bool { return len(st.Peers) == 1 && st.Coordinator.Connected })
		a.waitStatus("b's new disco key applied", func(st localapi.Status) bool {
			p, _ := peerOf(st, "b")
			return p.Path != "direct"
		})
		if err := a.ping(bIP, 1); err != nil {
			b.Fatal(err)
		}
		a.waitStatus("direct", func(st localapi.Status) bool { p, _ := peerOf(st, "b"); return p.Path == "direct" })
		var s1, c1 float64
		for deadline := time.Now().Add(5 * time.Second); c1 <= c0 && time.Now().Before(deadline); {
			s1, c1 = sumCount()
		}
		if c1 <= c0 {
			b.Fatalf("run %d: no time-to-direct sample", i)
		}
		ttd := (s1 - s0) / (c1 - c0)
		runs = append(runs, ttd)
		b.Logf("run %d: time to direct %.1f ms", i, ttd*1000)
	}
	b.ReportMetric(median(runs)*1000, "median-ms")
	b.ReportMetric(slices.Max(runs)*1000, "worst-ms")
}

// BenchmarkLabProbe10Regions times `meshnode netcheck` (a full probe of
// every region, STUN from the node's socket) against ten relay regions that
// all answer, beside the CLI's own round trip to the daemon (status) as the
// baseline in the same run.
func BenchmarkLabProbe10Regions(b *testing.B) {
	codes := []string{"r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"}
	w := newWorld(b, codes...)
	a := w.startNode("a", easy.host(b, w, "a"))
	a.waitStatus("netmap", func(st localapi.Status) bool { return st.Self.HomeRelay != "" })
	var probe, base []float64
	for i := 0; i < b.N; i++ {
		start := time.Now()
		nc := a.netcheck(b)
		probe = append(probe, time.Since(start).Seconds())
		if len(nc.RelayLatencyMS) != len(codes) {
			b.Fatalf("netcheck measured %d of %d regions: %+v", len(nc.RelayLatencyMS), len(codes), nc)
		}
		start = time.Now()
		a.status()
		base = append(base, time.Since(start).Seconds())
	}
	b.Logf("full probe of 10 regions: median %.0f ms, worst %.0f ms (CLI round trip alone: median %.0f ms)",
		median(probe)*1000, slices.Max(probe)*1000, median(base)*1000)
	b.ReportMetric(median(probe)*1000, "probe-ms")
	b.ReportMetric(slices.Max(probe)*1000, "worst-ms")
	b.ReportMetric(median(base)*1000, "cli-ms")
}

// homeCheckSettle lets the previous run's restarted relay be connected and
// probed before the next kill.
const homeCheckSettle = 500 * time.Millisecond

// BenchmarkLabFailover kills node a's home relay (two relay-only nodes
// behind hard NATs) and times b's first ping to a through another region;
// the killed relay is restarted and the next run kills a's new home.
func BenchmarkLabFailover(b *testing.B) {
	w := newWorld(b, "nyc", "fra")
	a := w.startNode("a", hardNATHost(b, w, "a"))
	bn := w.startNode("b", hardNATHost(b, w, "b"))
	for _, n := range []*node{a, bn} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 && st.Self.HomeRelay != "" })
	}
	aIP := a.ip()
	var runs []float64
	for i := 0; i < b.N; i++ {
		if err := bn.ping(aIP, 1); err != nil {
			b.Fatal(err)
		}
		// Kill a's home: b reaches a through it, so b's pings return only
		// once a has moved and b knows.
		home := a.home(b)
		time.Sleep(homeCheckSettle)
		idx := slices.IndexFunc(w.relays, func(r relayInfo) bool { return r.Region == home })
		victim := &w.relays[idx]
		victim.Cmd.Process.Kill()
		victim.Cmd.Wait()
		killed := time.Now()
		if err := bn.ping(aIP, 1); err != nil {
			b.Fatalf("run %d: %v", i, err)
		}
		d := time.Since(killed)
		runs = append(runs, d.Seconds())
		b.Logf("run %d: %s killed, traffic back through %s after %v", i, home, a.home(b), d.Round(time.Millisecond))
		victim.Cmd = w.proc(victim.Host.Namespace, "relayd", victim.Args...)
		time.Sleep(time.Second) // the restarted relay is probed back into the choice
	}
	b.ReportMetric(median(runs)*1000, "median-ms")
	b.ReportMetric(slices.Max(runs)*1000, "worst-ms")
}
