package router

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics exports the router's counters:
//
//	meshnode_router_forward_drops_total{reason}  forwarded packets the filter dropped
//	meshnode_router_forwarded_packets_total      packets from the mesh accepted for forwarding
//	meshnode_router_spoofed_drops_total          packets with a mesh source dropped off the TUN
//	meshnode_router_routes{state}                accepted routes installed, "up" or "down" (blackholed)
//	meshnode_router_apply_errors_total           Set calls that failed
//
// No label carries a peer, key or prefix.
type Metrics struct {
	applyErrors prometheus.Counter
	routes      *prometheus.GaugeVec

	dropsDesc, forwardedDesc, spoofDesc *prometheus.Desc

	mu    sync.Mutex
	fwd   *Forwarder
	spoof func() uint64
}

// NewMetrics registers the router's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		applyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshnode_router_apply_errors_total",
			Help: "Router state changes that failed to apply to the kernel.",
		}),
		routes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshnode_router_routes",
			Help: "Accepted routes installed, by state: up (via the tunnel) or down (blackholed).",
		}, []string{"state"}),
		dropsDesc: prometheus.NewDesc("meshnode_router_forward_drops_total",
			"Packets from the mesh to a routed prefix dropped by the router's filter, by reason.", []string{"reason"}, nil),
		forwardedDesc: prometheus.NewDesc("meshnode_router_forwarded_packets_total",
			"Packets from the mesh accepted for forwarding to a routed prefix.", nil, nil),
		spoofDesc: prometheus.NewDesc("meshnode_router_spoofed_drops_total",
			"Packets carrying a mesh-assigned source address dropped because they arrived off the TUN device.", nil, nil),
	}
	m.routes.WithLabelValues("up")
	m.routes.WithLabelValues("down")
	reg.MustRegister(m.applyErrors, m.routes, m)
	return m
}

func (m *Metrics) bindForwarder(f *Forwarder) {
	m.mu.Lock()
	m.fwd = f
	m.mu.Unlock()
}

func (m *Metrics) bindSpoof(fn func() uint64) {
	m.mu.Lock()
	m.spoof = fn
	m.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.dropsDesc
	ch <- m.forwardedDesc
	ch <- m.spoofDesc
}

// Collect implements prometheus.Collector: it reads the forwarder's and the
// nftables counters at scrape time.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	f, spoof := m.fwd, m.spoof
	m.mu.Unlock()
	if f != nil {
		for r := Reason(0); r < numReasons; r++ {
			ch <- prometheus.MustNewConstMetric(m.dropsDesc, prometheus.CounterValue, float64(f.Drops(r)), r.String())
		}
		ch <- prometheus.MustNewConstMetric(m.forwardedDesc, prometheus.CounterValue, float64(f.Forwarded()))
	}
	if spoof != nil {
		ch <- prometheus.MustNewConstMetric(m.spoofDesc, prometheus.CounterValue, float64(spoof()))
	}
}
