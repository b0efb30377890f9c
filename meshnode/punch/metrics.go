package punch

import "github.com/prometheus/client_golang/prometheus"

// The sides, as metric label values.
const (
	SideEasy = "easy"
	SideHard = "hard"
)

// Metrics count birthday searches. The node creates them once on its
// registry; a nil *Metrics records nothing. side is "easy" or "hard",
// result "found", "not_found" or "error".
type Metrics struct {
	searches *prometheus.CounterVec
	packets  *prometheus.CounterVec
}

// NewMetrics registers on reg:
//
//	meshnode_birthday_searches_total{side,result}  searches run, by outcome
//	meshnode_birthday_packets_total{side}           probe packets sent
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		searches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshnode_birthday_searches_total",
			Help: "Easy-hard birthday searches by side (easy, hard) and result (found, not_found, error).",
		}, []string{"side", "result"}),
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshnode_birthday_packets_total",
			Help: "Probe packets sent by birthday searches, by side.",
		}, []string{"side"}),
	}
	reg.MustRegister(m.searches, m.packets)
	for _, side := range []string{SideEasy, SideHard} {
		m.packets.WithLabelValues(side)
		for _, r := range []string{"found", "not_found", "error"} {
			m.searches.WithLabelValues(side, r)
		}
	}
	return m
}

// Observe records one search's outcome: pass what Hard or Run returned.
func (m *Metrics) Observe(side string, r Result, err error) {
	if m == nil {
		return
	}
	result := "found"
	switch {
	case err == ErrNotFound:
		result = "not_found"
	case err != nil:
		result = "error"
	}
	m.searches.WithLabelValues(side, result).Inc()
	m.packets.WithLabelValues(side).Add(float64(r.Sent))
}
