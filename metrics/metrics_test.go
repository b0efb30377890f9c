package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestServer(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "relayd_test_packets_total", Help: "Packets."})
	reg.MustRegister(c)
	c.Add(3)
	var unhealthy atomic.Bool
	s, err := Listen("127.0.0.1:0", reg, func() error {
		if unhealthy.Load() {
			return errors.New("relay draining")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, slog.New(slog.DiscardHandler)) }()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + s.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "relayd_test_packets_total 3") || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("/metrics %d:\n%s", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	unhealthy.Store(true)
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "draining") {
		t.Fatalf("/healthz unhealthy: %d %q", code, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "relayd_packets", Help: "Packets."}))
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "relayd_latency_milliseconds", Help: "Latency."}))
	problems, err := Lint(reg)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(problems, "\n")
	if !strings.Contains(joined, "relayd_packets") || !strings.Contains(joined, "relayd_latency_milliseconds") {
		t.Fatalf("lint missed bad names:\n%s", joined)
	}
	good := NewRegistry()
	good.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "relayd_packets_total", Help: "Packets."}))
	if p, _ := Lint(good); len(p) != 0 {
		t.Fatalf("good registry has problems: %v", p)
	}
}
