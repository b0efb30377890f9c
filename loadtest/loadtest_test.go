package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// These tests run each mode briefly on loopback and check the report's
// shape and internal consistency, never its speed.

// startForwarder runs the plain UDP forwarder on loopback until ctx ends.
func startForwarder(t *testing.T, ctx context.Context) *net.UDPConn {
	t.Helper()
	fwd, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	go forwardUDP(ctx, fwd)
	return fwd
}

func TestRelayModeJSON(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fwd := startForwarder(t, ctx)
	var out, errOut bytes.Buffer
	err := Command(ctx, []string{"relay", "--pairs", "2", "--duration", "300ms", "--rate", "2000", "--delivery", "all",
		"--baseline-udp", fwd.LocalAddr().String(), "--flood", "--probe-rate", "200", "--max-loss", "0.5", "--search-duration", "200ms", "--json", "--progress", "100ms"}, &out, &errOut)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	var rep RelayReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out.String())
	}
	if len(rep.Runs) != 3 || rep.Runs[0].Delivery != "datagram" || rep.Runs[1].Delivery != "stream" || rep.Runs[2].Delivery != "fastpath" {
		t.Fatalf("runs %+v", rep.Runs)
	}
	for _, r := range append(rep.Runs, *rep.Baseline) {
		if r.Sent == 0 || r.Received == 0 || r.Received > r.Sent || r.GbitPerS <= 0 || r.LatencyP99Ms < r.LatencyP50Ms {
			t.Errorf("inconsistent run %+v", r)
		}
	}
	if len(rep.Ratios) != 3 || len(rep.Flood) != 3 || rep.Flood[0].Loaded.FloodPairs != 1 {
		t.Errorf("ratios %v flood %+v", rep.Ratios, rep.Flood)
	}
	if len(rep.BelowLoss) != 4 || len(rep.LossRatios) != 3 {
		t.Errorf("below-loss search: %+v %v", rep.BelowLoss, rep.LossRatios)
	}
	for _, r := range rep.BelowLoss {
		if r.Loss >= 0.5 || r.TargetPPS <= 0 {
			t.Errorf("below-loss run %+v", r)
		}
	}
	if !strings.Contains(errOut.String(), "loadtest: datagram") {
		t.Errorf("no progress lines on stderr:\n%s", errOut.String())
	}
}

func TestConnectMode(t *testing.T) {
	var out, errOut bytes.Buffer
	err := Command(context.Background(), []string{"connect", "--clients", "20", "--per-socket", "5", "--hold", "0s", "--json"}, &out, &errOut)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	var rep ConnectReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Connected != 20 || rep.Failed != 0 || rep.ConnectsPerS <= 0 {
		t.Fatalf("report %+v\n%s", rep, errOut.String())
	}
}

func TestKeygenAndErrors(t *testing.T) {
	var out bytes.Buffer
	f := filepath.Join(t.TempDir(), "sign.key")
	if err := Command(context.Background(), []string{"keygen", "--out", f}, &out, &out); err != nil || !strings.HasPrefix(out.String(), "signkey:") {
		t.Fatalf("keygen: %v %q", err, out.String())
	}
	for _, args := range [][]string{
		{"nosuchmode"},
		{"relay", "--delivery", "carrier-pigeon"},
		{"relay", "--relay", "127.0.0.1:1"},
		{"connect", "--clients", "0"},
	} {
		if err := Command(context.Background(), args, &out, &out); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

func TestHistQuantiles(t *testing.T) {
	var h hist
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	p50, p99 := h.quantile(0.5), h.quantile(0.99)
	if p50 < 490*time.Microsecond || p50 > 510*time.Microsecond || p99 < 980*time.Microsecond || p99 > 1000*time.Microsecond {
		t.Fatalf("p50 %v p99 %v", p50, p99)
	}
}

// TestRelayClientBatch: with --client-batch the fast-path clients send
// FastSend datagrams from their own sockets with sendmmsg and count what
// arrives through recvmmsg (so a packet received proves that path), the
// UDP forwarder's clients likewise; a paced run still keeps to its rate.
func TestRelayClientBatch(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fwd := startForwarder(t, ctx)
	for _, rate := range []string{"0", "2000"} {
		t.Run("rate="+rate, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := Command(ctx, []string{"relay", "--pairs", "2", "--duration", "300ms", "--rate", rate, "--delivery", "fastpath",
				"--client-batch", "8", "--baseline-udp", fwd.LocalAddr().String(), "--json", "--progress", "0"}, &out, &errOut)
			if err != nil {
				t.Fatalf("%v\n%s", err, errOut.String())
			}
			var rep RelayReport
			if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
				t.Fatalf("output is not one JSON object: %v\n%s", err, out.String())
			}
			if len(rep.Runs) != 1 || rep.Runs[0].Delivery != "fastpath" || rep.Baseline == nil {
				t.Fatalf("runs %+v baseline %+v", rep.Runs, rep.Baseline)
			}
			for _, r := range []RunResult{rep.Runs[0], *rep.Baseline} {
				if r.Sent == 0 || r.Received == 0 || r.Received > r.Sent || r.LatencyP99Ms < r.LatencyP50Ms {
					t.Errorf("inconsistent run %+v", r)
				}
				// 2000 pkt/s for 0.3 s, plus at most one batch per pair
				// and a tick's worth of slack.
				if rate != "0" && float64(r.Sent) > 1.2*2000*0.3+2*8 {
					t.Errorf("%s sent %d packets, over its rate", r.Delivery, r.Sent)
				}
			}
		})
	}
	for _, bad := range [][]string{{"--client-batch", "0"}, {"--client-batch", "257"}, {"--client-batch", "2", "--size", "2040"}} {
		var out, errOut bytes.Buffer
		if err := Command(ctx, append([]string{"relay", "--delivery", "fastpath"}, bad...), &out, &errOut); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}
