package dns

import (
	"strings"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the resolver's and the OS configurators'. Labels are bounded
// sets: source (the Source* constants), result (an rcode name).
type metrics struct {
	queries        *prometheus.CounterVec
	forwardLatency *prometheus.HistogramVec
	inFlight       prometheus.Gauge
	forwardRefused prometheus.Counter
}

// OSMetrics are the OS configurators' metrics; one set per node, shared by
// whichever configurator runs.
type OSMetrics struct {
	reapplies prometheus.Counter
	warning   prometheus.Gauge
}

// NewOSMetrics registers the OS configurators' metrics with reg (nil: not
// registered).
func NewOSMetrics(reg prometheus.Registerer) *OSMetrics {
	m := &OSMetrics{
		reapplies: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshnode_dns_os_config_reapplied_total",
			Help: "Times the node re-applied its DNS configuration after another program rewrote it.",
		}),
		warning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshnode_dns_health_warning",
			Help: "1 while the OS DNS configuration is fought over and the node has stopped re-applying it.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.reapplies, m.warning)
	}
	return m
}

func (m *OSMetrics) reapplied() {
	if m != nil {
		m.reapplies.Inc()
	}
}

func (m *OSMetrics) setWarning(on bool) {
	if m == nil {
		return
	}
	if on {
		m.warning.Set(1)
	} else {
		m.warning.Set(0)
	}
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshnode_dns_queries_total",
			Help: "DNS queries answered, by the source that answered and the result (rcode).",
		}, []string{"source", "result"}),
		forwardLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "meshnode_dns_forward_duration_seconds",
			Help: "Time to answer a forwarded DNS query, failures included, by source (split, global, os).",
			// 1 ms (LAN) to the 10 s query limit.
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"source"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshnode_dns_forward_in_flight",
			Help: "Forwarded DNS queries waiting for an upstream (at most 256).",
		}),
		forwardRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshnode_dns_forward_refused_total",
			Help: "Queries answered SERVFAIL at once because 256 were already in flight.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.queries, m.forwardLatency, m.inFlight, m.forwardRefused)
	}
	return m
}

func (m *metrics) query(source string, rcode int) {
	result, ok := mdns.RcodeToString[rcode]
	if !ok {
		result = "other"
	}
	m.queries.WithLabelValues(source, strings.ToLower(result)).Inc()
}
