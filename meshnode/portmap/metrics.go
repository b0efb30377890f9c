package portmap

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the port-mapping client's Prometheus metrics. The node
// creates them once on its registry and passes them in Config; a nil
// *Metrics records nothing. Labels are bounded: kind is one of three
// protocols, result one of two values.
type Metrics struct {
	active   *prometheus.GaugeVec
	mappings *prometheus.CounterVec
	renewals *prometheus.CounterVec
	restarts *prometheus.CounterVec
}

// NewMetrics registers the port-mapping metrics on reg:
//
//	meshnode_port_mapping_active{kind}                 1 for the protocol holding the mapping
//	meshnode_port_mappings_total{kind}                 mappings made (first, after loss, after a restart)
//	meshnode_port_mapping_renewals_total{kind,result}  renewals, result "ok" or "error"
//	meshnode_port_mapping_gateway_restarts_total{kind} router restarts detected (epoch or lost mapping)
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshnode_port_mapping_active",
			Help: "1 for the protocol (nat-pmp, pcp, upnp) holding the node's port mapping, 0 for the others.",
		}, []string{"kind"}),
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
	reg.MustRegister(m.active, m.mappings, m.renewals, m.restarts)
	for _, k := range kinds {
		m.active.WithLabelValues(string(k))
		m.mappings.WithLabelValues(string(k))
		m.renewals.WithLabelValues(string(k), "ok")
		m.renewals.WithLabelValues(string(k), "error")
		m.restarts.WithLabelValues(string(k))
	}
	return m
}

func (m *Metrics) setKind(kind Kind) {
	if m == nil {
		return
	}
	for _, k := range kinds {
		v := 0.0
		if k == kind {
			v = 1
		}
		m.active.WithLabelValues(string(k)).Set(v)
	}
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
