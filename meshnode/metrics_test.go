package meshnode

import (
	"context"
	"github.com/wiremesh/wiremesh/meshnode/dns"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

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
		"meshnode_filter_drops_total", "meshnode_coordinator_connected", "meshnode_health_warnings",
		"meshnode_nat_info", "meshnode_port_mapping_info", "meshnode_path_changes_total"} {
		if !names[want] {
			t.Fatalf("metric %s missing", want)
		}
	}
	if names["meshnode_key_expiry_timestamp_seconds"] {
		t.Fatal("key expiry reported before any netmap")
	}
}

// TestPathHealthMetrics checks the values the path-health collector derives
// from the node's state: every warning kind is present, set only while its
// condition holds; the NAT kind follows the STUN mappings; the key expiry
// follows the netmap.
// fakeOS is an OS configurator with a given health.
type fakeOS struct{ health error }

func (fakeOS) Set(context.Context, dns.OSConfig) error { return nil }
func (fakeOS) Restore(context.Context) error           { return nil }
func (f fakeOS) Health() error                         { return f.health }
func (fakeOS) Mode() string                            { return dns.ModeFile }

func TestPathHealthMetrics(t *testing.T) {
	n := &Node{priv: key.NewNode(), filter: filter.New(nil)}
	n.mu.applied = map[key.NodePublic]netmap.Node{}
	n.pool = &relayclient.Pool{}
	n.bind = bind.New(bind.Config{})
	n.relays = relays.New(relays.Config{Pool: n.pool, Bind: n.bind})
	reg := prometheus.NewRegistry()
	n.metrics = newNodeMetrics(reg, n)

	want := func(what string, expected string) {
		t.Helper()
		if err := testutil.GatherAndCompare(reg, strings.NewReader(expected), what); err != nil {
			t.Fatal(err)
		}
	}
	want("meshnode_health_warnings", `
# HELP meshnode_health_warnings Health warnings, by kind: 1 while the condition holds, else 0.
# TYPE meshnode_health_warnings gauge
meshnode_health_warnings{kind="coordinator_disconnected"} 1
meshnode_health_warnings{kind="dns"} 0
meshnode_health_warnings{kind="hard_nat"} 0
meshnode_health_warnings{kind="no_home_relay"} 1
meshnode_health_warnings{kind="udp_blocked"} 0
`)
	want("meshnode_nat_info", `
# HELP meshnode_nat_info This node's NAT kind as its probes see it (value 1).
# TYPE meshnode_nat_info gauge
meshnode_nat_info{kind="unknown"} 1
`)
	want("meshnode_port_mapping_info", `
# HELP meshnode_port_mapping_info The port-mapping protocol holding a mapping for this node, or none (value 1).
# TYPE meshnode_port_mapping_info gauge
meshnode_port_mapping_info{kind="none"} 1
`)

	n.mu.coordUp = true
	n.relays.SetHome(relayclient.Relay{Region: "nyc", Addr: "198.18.0.1:443"})
	n.mu.nm = &netmap.NetworkMap{Self: netmap.Node{KeyExpiry: time.Unix(1900000000, 0)}}
	n.setNAT(2, true) // two relays saw different ports
	want("meshnode_health_warnings", `
# HELP meshnode_health_warnings Health warnings, by kind: 1 while the condition holds, else 0.
# TYPE meshnode_health_warnings gauge
meshnode_health_warnings{kind="coordinator_disconnected"} 0
meshnode_health_warnings{kind="dns"} 0
meshnode_health_warnings{kind="hard_nat"} 1
meshnode_health_warnings{kind="no_home_relay"} 0
meshnode_health_warnings{kind="udp_blocked"} 0
`)
	want("meshnode_nat_info", `
# HELP meshnode_nat_info This node's NAT kind as its probes see it (value 1).
# TYPE meshnode_nat_info gauge
meshnode_nat_info{kind="hard"} 1
`)
	want("meshnode_key_expiry_timestamp_seconds", `
# HELP meshnode_key_expiry_timestamp_seconds When this node's key expires (Unix time); absent when it never does.
# TYPE meshnode_key_expiry_timestamp_seconds gauge
meshnode_key_expiry_timestamp_seconds 1.9e+09
`)
	n.setNAT(2, false)
	want("meshnode_nat_info", `
# HELP meshnode_nat_info This node's NAT kind as its probes see it (value 1).
# TYPE meshnode_nat_info gauge
meshnode_nat_info{kind="easy"} 1
`)
	n.mu.nat.udpBlocked = true
	want("meshnode_nat_info", `
# HELP meshnode_nat_info This node's NAT kind as its probes see it (value 1).
# TYPE meshnode_nat_info gauge
meshnode_nat_info{kind="udp_blocked"} 1
`)
	// The OS configuration fought over (resolv.conf rewritten by another
	// program): the dns warning.
	n.mu.nat.udpBlocked = false
	n.dns = &magicDNS{os: fakeOS{health: dns.ErrFoughtOver}}
	want("meshnode_health_warnings", `
# HELP meshnode_health_warnings Health warnings, by kind: 1 while the condition holds, else 0.
# TYPE meshnode_health_warnings gauge
meshnode_health_warnings{kind="coordinator_disconnected"} 0
meshnode_health_warnings{kind="dns"} 1
meshnode_health_warnings{kind="hard_nat"} 0
meshnode_health_warnings{kind="no_home_relay"} 0
meshnode_health_warnings{kind="udp_blocked"} 0
`)
	// With every series present (key expiry included), the names lint clean.
	problems, err := metrics.Lint(reg)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("metric naming problems:\n%s", strings.Join(problems, "\n"))
	}
}
