package portmap

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// KindNoneLabel is meshnode_port_mapping_info's kind while no mapping is
// held (the node's dashboards expect it).
const KindNoneLabel = "none"

// kindLabel is k as an info label.
func kindLabel(k Kind) string {
	if k == KindNone {
		return KindNoneLabel
	}
	return string(k)
}

// Metrics are the port-mapping client's Prometheus metrics. The node
// creates them once on its registry and passes them in Config; a nil
// *Metrics records nothing. Labels are bounded: kind is one of three
// protocols, result one of two values.
type Metrics struct {
	kind     atomic.Pointer[string] // the info metric's label
	info     *prometheus.Desc
	mappings *prometheus.CounterVec
	renewals *prometheus.CounterVec
	restarts *prometheus.CounterVec
}

// NewMetrics registers the port-mapping metrics on reg:
//
//	meshnode_port_mapping_info{kind}                   one series, value 1: the protocol holding the mapping, or "none"
//	meshnode_port_mappings_total{kind}                 mappings made (first, after loss, after a restart)
//	meshnode_port_mapping_renewals_total{kind,result}  renewals, result "ok" or "error"
//	meshnode_port_mapping_gateway_restarts_total{kind} router restarts detected (epoch or lost mapping)
//
// The node's own placeholder for meshnode_port_mapping_info (kind "none")
// goes when it registers these.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		info: prometheus.NewDesc("meshnode_port_mapping_info",
			"The port-mapping protocol holding a mapping for this node, or none (value 1).", []string{"kind"}, nil),
		mappings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshnode_port_mappings_total",
			Help: "Port mappings made at the gateway: the first, and again after a loss or a gateway restart.",
		}, []string{"kind"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshnode_port_mapping_renewals_total",
			Help: "Port-mapping renewals by protocol and result (ok, error).",
		}, []string{"kind", "result"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshnode_port_mapping_gateway_restarts_total",
			Help: "Gateway restarts detected (NAT-PMP/PCP epoch reset) that forced a new mapping.",
		}, []string{"kind"}),
	}
	none := KindNoneLabel
	m.kind.Store(&none)
	reg.MustRegister(infoCollector{m}, m.mappings, m.renewals, m.restarts)
	for _, k := range kinds {
		m.mappings.WithLabelValues(string(k))
		m.renewals.WithLabelValues(string(k), "ok")
		m.renewals.WithLabelValues(string(k), "error")
		m.restarts.WithLabelValues(string(k))
	}
	return m
}

// infoCollector exports meshnode_port_mapping_info: one series, so a scrape
// never sees two kinds or none.
type infoCollector struct{ m *Metrics }

func (c infoCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.m.info }

func (c infoCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.m.info, prometheus.GaugeValue, 1, *c.m.kind.Load())
}

func (m *Metrics) setKind(kind Kind) {
	if m == nil {
		return
	}
	l := kindLabel(kind)
	m.kind.Store(&l)
}

func (m *Metrics) mapped(kind Kind) {
	if m != nil {
		m.mappings.WithLabelValues(string(kind)).Inc()
	}
}

func (m *Metrics) renewal(kind Kind, ok bool) {
	if m == nil {
		return
	}
	result := "ok"
	if !ok {
		result = "error"
	}
	m.renewals.WithLabelValues(string(kind), result).Inc()
}

func (m *Metrics) restart(kind Kind) {
	if m != nil {
		m.restarts.WithLabelValues(string(kind)).Inc()
	}
}
