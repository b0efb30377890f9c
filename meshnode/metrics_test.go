package meshnode

import (
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/bind"
	"github.com/wiremesh/wiremesh/meshnode/filter"
	"github.com/wiremesh/wiremesh/meshnode/relays"
	"github.com/wiremesh/wiremesh/metrics"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/relayclient"
)

func TestMetricsLint(t *testing.T) {
	n := &Node{priv: key.NewNode(), filter: filter.New(nil)}
	n.mu.applied = map[key.NodePublic]netmap.Node{}
	n.mu.rtt = map[key.NodePublic]float64{}
	n.pool = &relayclient.Pool{}
	n.bind = bind.New(bind.Config{})
	n.relays = relays.New(relays.Config{Pool: n.pool, Bind: n.bind})
	reg := metrics.NewRegistry()
	n.metrics = newNodeMetrics(reg, n)
	n.metrics.homeChanges.WithLabelValues("initial").Inc()
	n.metrics.discoRx.WithLabelValues("ping").Inc()
	n.metrics.pingRTT.WithLabelValues("relay").Observe(0.001)
	problems, err := metrics.Lint(reg)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("metric naming problems:\n%s", strings.Join(problems, "\n"))
	}
	mfs, _ := reg.Gather()
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"meshnode_peers", "meshnode_tx_bytes_total", "meshnode_rx_bytes_total",
		"meshnode_filter_drops_total", "meshnode_coordinator_connected"} {
		if !names[want] {
			t.Fatalf("metric %s missing", want)
		}
	}
}
