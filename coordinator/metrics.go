package coordinator

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wiremesh/wiremesh/netmap"
)

// serverMetrics are the coordinator's Prometheus metrics. None carries a
// per-node label; region labels are bounded by the operator's region count.
type serverMetrics struct {
	streams       prometheus.Gauge
	updates       *prometheus.CounterVec
	fanout        prometheus.Histogram
	push          *prometheus.HistogramVec
	registrations *prometheus.CounterVec
	authFailures  *prometheus.CounterVec
	relayEvents   *prometheus.CounterVec
	replicaEvents *prometheus.CounterVec
	leader        prometheus.Gauge
	storeErrors   *prometheus.CounterVec
	connsRefused  prometheus.Counter
	webSignIns    *prometheus.CounterVec
	logins        *prometheus.CounterVec
	// revocationsEvicted counts revocations dropped because the list was
	// full (maxRevocations).
	revocationsEvicted prometheus.Counter
}

// Results of console sign-ins and interactive logins (metric labels).
var (
	webSignInResults = []string{"ok", "used", "expired", "unknown", "error"}
	loginResults     = []string{"started", "approved", "expired", "limited"}
)

// fanoutBuckets span a loopback delivery (sub-millisecond) to the 2 s goal
// and beyond.
var fanoutBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2, 5, 10}

func newServerMetrics(reg prometheus.Registerer, s *Server) *serverMetrics {
	m := &serverMetrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "coordinator_map_streams", Help: "Open netmap streams.",
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coordinator_map_updates_sent_total", Help: "Netmap frames written to streams, by kind (full, delta, keepalive).",
		}, []string{"kind"}),
		fanout: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "coordinator_fanout_latency_seconds",
			Help:    "Time from a change being applied to a stream writing the frame that carries it.",
			Buckets: fanoutBuckets,
		}),
		push: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "coordinator_push_latency_seconds",
			Help:    "Time a stream takes to push one frame: build it, write it and flush it to the node, by kind (full, delta, keepalive).",
			Buckets: fanoutBuckets,
		}, []string{"kind"}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coordinator_registrations_total", Help: "Node registrations, by result.",
		}, []string{"result"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coordinator_auth_failures_total", Help: "Requests refused for a missing or bad proof of possession, by reason.",
		}, []string{"reason"}),
		relayEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coordinator_relay_events_total", Help: "Relay joins, heartbeats and state changes, by event.",
		}, []string{"event"}),
		revocationsEvicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coordinator_revocations_evicted_total", Help: "Node revocations dropped before their expiry because the list was full.",
		}),
		connsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coordinator_connections_refused_total", Help: "API connections closed on accept because their source address held its limit.",
		}),
	}
	m.webSignIns = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "coordinator_web_signins_total", Help: "Uses of console sign-in links, by result (ok, used, expired, unknown, error).",
	}, []string{"result"})
	m.logins = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "coordinator_interactive_logins_total", Help: "Interactive logins, by event (started, approved, expired: a waiting node was told so, limited: refused, too many waiting).",
	}, []string{"result"})
	for _, r := range webSignInResults {
		m.webSignIns.WithLabelValues(r)
	}
	for _, r := range loginResults {
		m.logins.WithLabelValues(r)
	}
	m.replicaEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "coordinator_replica_changes_total", Help: "Changes and events heard from other replicas, by kind; dropped counts own stream events not published (queue full).",
	}, []string{"kind"})
	m.leader = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "coordinator_jobs_leader", Help: "1 while this replica holds the jobs lock and runs the periodic jobs (ephemeral clean-up, relay liveness).",
	})
	m.storeErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "coordinator_store_errors_total", Help: "Requests that failed in the store, by reason (unavailable: the database could not be reached).",
	}, []string{"reason"})
	for _, k := range []string{"resync", "lost", "nodes", "node_deleted", "relay", "region", "policy", "dns", "revocation", "online", "alive", "dropped"} {
		m.replicaEvents.WithLabelValues(k)
	}
	for _, k := range []string{"unavailable", "other"} {
		m.storeErrors.WithLabelValues(k)
	}
	for _, k := range []string{"full", "delta", "keepalive"} {
		m.updates.WithLabelValues(k)
		m.push.WithLabelValues(k)
	}
	for _, r := range []string{resultOK, resultBadRequest, resultBadKey, resultUsedKey, resultExpiredKey, resultRevokedKey, resultExisting, resultError} {
		m.registrations.WithLabelValues(r)
	}
	// Pre-create every labelled series so dashboards see zeros, not gaps.
	for _, r := range []string{"malformed", "unknown_node", "expired", "invalid", "stale", "mismatch", "replay"} {
		m.authFailures.WithLabelValues(r)
	}
	for _, e := range []string{"join", "join_refused", "heartbeat", "state_change"} {
		m.relayEvents.WithLabelValues(e)
	}
	reg.MustRegister(m.streams, m.updates, m.fanout, m.push, m.registrations, m.authFailures, m.relayEvents, m.connsRefused, m.revocationsEvicted,
		m.replicaEvents, m.leader, m.storeErrors, m.webSignIns, m.logins, &stateCollector{s: s})
	return m
}

// Registration results.
const (
	resultOK         = "ok"
	resultExisting   = "existing"
	resultBadRequest = "bad_request"
	resultBadKey     = "bad_key"
	resultUsedKey    = "used_key"
	resultExpiredKey = "expired_key"
	resultRevokedKey = "revoked_key"
	resultError      = "error"
)

var (
	nodesDesc  = prometheus.NewDesc("coordinator_nodes", "Registered nodes, by state (online, offline, expired).", []string{"state"}, nil)
	relaysDesc = prometheus.NewDesc("coordinator_relays", "Relays in the relay map, by region and state.", []string{"region", "state"}, nil)
	routesDesc = prometheus.NewDesc("coordinator_routes", "Routes nodes advertise (advertised) and of those the ones approved and in effect (approved); an exit node counts as one route.", []string{"state"}, nil)
	revsDesc   = prometheus.NewDesc("coordinator_revocations", "Node keys revoked at relays and still in force.", nil, nil)
)

// stateCollector counts nodes and relays from the live state at scrape time.
type stateCollector struct{ s *Server }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- nodesDesc
	ch <- relaysDesc
	ch <- routesDesc
	ch <- revsDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	st := c.s.st
	st.mu.RLock()
	var online, offline, expired, advertised, approved int
	for _, n := range st.nodes {
		advertised += len(n.rec.AdvertisedRoutes)
		approved += len(n.subnets)
		if n.exit {
			approved++
		}
		switch {
		case n.expired(now):
			expired++
		case n.online():
			online++
		default:
			offline++
		}
	}
	st.mu.RUnlock()
	ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(online), "online")
	ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(offline), "offline")
	ch <- prometheus.MustNewConstMetric(nodesDesc, prometheus.GaugeValue, float64(expired), "expired")
	ch <- prometheus.MustNewConstMetric(routesDesc, prometheus.GaugeValue, float64(advertised), "advertised")
	ch <- prometheus.MustNewConstMetric(routesDesc, prometheus.GaugeValue, float64(approved), "approved")
	_, revs, _ := c.s.revs.list(now)
	ch <- prometheus.MustNewConstMetric(revsDesc, prometheus.GaugeValue, float64(len(revs)))

	counts := map[[2]string]int{}
	for _, r := range c.s.relays.relayMap().Regions {
		for _, states := range []string{netmap.RelayUp, netmap.RelayDown, netmap.RelayDraining, netmap.RelayOverloaded, netmap.RelayStatic} {
			counts[[2]string{r.Code, states}] += 0
		}
		for _, rl := range r.Relays {
			counts[[2]string{r.Code, rl.State}]++
		}
	}
	for k, v := range counts {
		ch <- prometheus.MustNewConstMetric(relaysDesc, prometheus.GaugeValue, float64(v), k[0], k[1])
	}
}
