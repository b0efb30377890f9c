//go:build lab

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// iperf3 runs a TCP iperf3 test from client to server's addr for d and
// returns the receiver's bits per second and the sender's retransmits.
func iperf3(b testing.TB, client, server *lab.Namespace, addr netip.Addr, d time.Duration) (float64, int) {
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
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.End.SumReceived.BitsPerSecond == 0 {
		b.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	return r.End.SumReceived.BitsPerSecond, r.End.SumSent.Retransmits
}

// BenchmarkLabRelayIperf3 measures iperf3 TCP over the relay path between
// two kernel-TUN nodes behind hard NATs, beside plain TCP between the same
// two namespaces' routers... measured without the tunnel, in the same run.
func BenchmarkLabRelayIperf3(b *testing.B) {
	w := newWorld(b, "nyc")
	ha, hb := hardNATHostB(b, w, "a"), hardNATHostB(b, w, "b")
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

func hardNATHostB(b testing.TB, w *world, name string) *lab.Host {
	r, err := w.l.AddRouter("r-"+name, lab.RouterConfig{NAT: lab.Hard})
	if err != nil {
		b.Fatal(err)
	}
	h, err := w.l.AddHost(name, r)
	if err != nil {
		b.Fatal(err)
	}
	return h
}

// BenchmarkLabTimeToFirstPing measures, per run, the time from starting an
// already registered node's `meshnode run` to the first successful kernel
// ping to it from a peer (both behind hard NATs, so over the relay). ping
// sends every 10 ms until the first reply.
func BenchmarkLabTimeToFirstPing(b *testing.B) {
	w := newWorld(b, "nyc")
	a := w.startNode("a", hardNATHostB(b, w, "a"))
	bn := w.startNode("b", hardNATHostB(b, w, "b"))
	for _, n := range []*node{a, bn} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	bIP := bn.ip()
	if err := a.ping(bIP, 1); err != nil {
		b.Fatal(err)
	}
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
