package meshnode

import (
	"github.com/wiremesh/wiremesh/meshnode/router"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wiremesh/wiremesh/meshnode/bind"
	"github.com/wiremesh/wiremesh/meshnode/paths"
	"github.com/wiremesh/wiremesh/meshnode/portmap"
	"github.com/wiremesh/wiremesh/meshnode/punch"
)

// nodeMetrics are the meshnode_ metrics. None carries a per-peer label.
type nodeMetrics struct {
	router            *router.Metrics // subnet routes and exit nodes
	peers             prometheus.Gauge
	coordConnected    prometheus.Gauge
	filterDrops       *prometheus.CounterVec
	homeChanges       *prometheus.CounterVec
	discoRx           *prometheus.CounterVec
	pingRTT           *prometheus.HistogramVec
	relayPendingDrops prometheus.Counter
	discoPings        *prometheus.CounterVec
	pathChanges       *prometheus.CounterVec
	timeToDirect      prometheus.Histogram
	hardNAT           prometheus.Gauge
	regionRTT         *prometheus.GaugeVec
	regionLatency     *prometheus.HistogramVec
	// portmap holds meshnode_port_mapping_info and the mapping counters;
	// registered whether or not --port-mapping is on, so the info series
	// (kind "none" without a mapping) is always there.
	portmap  *portmap.Metrics
	birthday *punch.Metrics
}

func newNodeMetrics(reg prometheus.Registerer, n *Node) *nodeMetrics {
	m := &nodeMetrics{
		peers: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshnode_peers_configured",
			Help: "Peers configured in the WireGuard device."}),
		coordConnected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshnode_coordinator_connected",
			Help: "1 while the netmap stream from the coordinator is open."}),
		filterDrops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshnode_filter_drops_total",
			Help: "Inbound packets dropped by the packet filter, by reason."}, []string{"reason"}),
		homeChanges: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshnode_home_relay_changes_total",
			Help: "Home relay changes, by reason."}, []string{"reason"}),
		discoRx: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshnode_disco_received_total",
			Help: "Disco packets received, by kind or reason for dropping."}, []string{"kind"}),
		pingRTT: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "meshnode_peer_rtt_seconds",
			Help:    "Disco ping round trips to peers, by path.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1}}, []string{"path"}),
		relayPendingDrops: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshnode_relay_pending_drops_total",
			Help: "Packets dropped while waiting for a relay connection."}),
		discoPings: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshnode_disco_pings_total",
			Help: "Disco pings this node sent, by result (sent, pong, timeout)."}, []string{"result"}),
		pathChanges: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshnode_path_changes_total",
			Help: "Peer path changes: upgrade (relay to direct) and downgrade (direct to relay), by reason."}, []string{"direction", "reason"}),
		timeToDirect: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meshnode_time_to_direct_seconds",
			Help:    "From the start of an upgrade attempt to a confirmed direct path.",
			Buckets: []float64{.01, .025, .05, .1, .2, .3, .5, 1, 2, 5, 10}}),
		hardNAT: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshnode_hard_nat",
			Help: "1 when relays see different public ports for this node's socket (endpoint-dependent mapping)."}),
		regionRTT: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshnode_region_rtt_seconds",
			Help: "Latest measured round trip to each relay region."}, []string{"region"}),
		regionLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "meshnode_region_latency_seconds",
			Help:    "Relay region round trips measured by probes.",
			Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .2, .5, 1}}, []string{"region"}),
	}
	for _, r := range []string{"sent", "pong", "timeout"} {
		m.discoPings.WithLabelValues(r)
	}
	for _, dr := range pathChangeReasons {
		m.pathChanges.WithLabelValues(dr[0], dr[1])
	}
	for _, r := range []string{"no_rule", "malformed", "fragment"} {
		m.filterDrops.WithLabelValues(r)
	}
	reg.MustRegister(m.peers, m.coordConnected, m.filterDrops, m.homeChanges, m.discoRx, m.pingRTT, m.relayPendingDrops,
		m.discoPings, m.pathChanges, m.timeToDirect, m.hardNAT, m.regionRTT, m.regionLatency, &pathCollector{n: n})
	m.portmap = portmap.NewMetrics(reg)
	m.router = router.NewMetrics(reg)
	m.birthday = punch.NewMetrics(reg)
	return m
}

// paths returns the counters the path machine feeds.
func (m *nodeMetrics) paths() paths.Metrics {
	return paths.Metrics{DiscoRx: m.discoRx, DiscoPings: m.discoPings, PathChanges: m.pathChanges,
		PingRTT: m.pingRTT, TimeToDirect: m.timeToDirect}
}

// pathChangeReasons are meshnode_path_changes_total's (direction, reason)
// pairs, created at start so dashboards see every series.
var pathChangeReasons = [][2]string{{"upgrade", paths.ReasonFirstPong}, {"downgrade", paths.ReasonTrustExpired},
	{"downgrade", paths.ReasonPeerMoved}, {"downgrade", paths.ReasonNetworkChanged}, {"upgrade", paths.ReasonBirthday}}

// Health warnings: the values of meshnode_health_warnings's kind label.
// Each series is 1 while the condition holds and 0 otherwise, so a
// dashboard sees every kind even on a healthy node.
const (
	healthCoordinator = "coordinator_disconnected" // the netmap stream is not open
	healthNoHome      = "no_home_relay"            // no home relay connection: peers cannot reach us through a relay
	healthUDPBlocked  = "udp_blocked"              // STUN fails while relays answer: no direct paths possible
	healthHardNAT     = "hard_nat"                 // endpoint-dependent mapping: direct paths only to easy peers
	healthDNS         = "dns"                      // the OS is not pointed at MagicDNS (resolv.conf fought over, resolved failed)
)

// NAT kinds: the values of meshnode_nat_info's kind label.
const (
	natUnknown    = "unknown"     // no STUN answer yet
	natEasy       = "easy"        // every relay saw the same mapping (or only one answered)
	natHard       = "hard"        // relays saw different mappings (endpoint-dependent)
	natUDPBlocked = "udp_blocked" // STUN fails while relay pings work
)

// pathCollector reports per-path counts and bytes from the bind and status.
type pathCollector struct{ n *Node }

var (
	descPeersByPath = prometheus.NewDesc("meshnode_peers", "Peers by current path.", []string{"path"}, nil)
	descTxBytes     = prometheus.NewDesc("meshnode_tx_bytes_total", "WireGuard bytes sent, by path.", []string{"path"}, nil)
	descRxBytes     = prometheus.NewDesc("meshnode_rx_bytes_total", "WireGuard bytes received, by path.", []string{"path"}, nil)
	descRelayConns  = prometheus.NewDesc("meshnode_relay_connections", "Open relay connections, by region.", []string{"region"}, nil)
	descRelayDrops  = prometheus.NewDesc("meshnode_relay_queue_drops_total", "Relayed packets dropped because wireguard-go fell behind.", nil, nil)
	descRelayBatch  = prometheus.NewDesc("meshnode_relay_fastpath_batched_packets_total",
		"Relayed packets that went through the UDP socket's batches (the relay fast path on the shared socket), by direction.", []string{"direction"}, nil)
	descRelayBatchErrs = prometheus.NewDesc("meshnode_relay_fastpath_batch_errors_total",
		"Relayed batches the UDP socket refused; their packets went through the relay connection (QUIC or TCP).", nil, nil)
	descRegionInfo = prometheus.NewDesc("meshnode_region_info", "Relay regions in the relay map, with their metadata (value 1).",
		[]string{"region", "name", "latitude", "longitude"}, nil)
	descHomeRegion = prometheus.NewDesc("meshnode_home_region_info", "The current home relay region (value 1).", []string{"region"}, nil)
	descHealth     = prometheus.NewDesc("meshnode_health_warnings", "Health warnings, by kind: 1 while the condition holds, else 0.", []string{"kind"}, nil)
	descNATKind    = prometheus.NewDesc("meshnode_nat_info", "This node's NAT kind as its probes see it (value 1).", []string{"kind"}, nil)
	descKeyExpiry  = prometheus.NewDesc("meshnode_key_expiry_timestamp_seconds", "When this node's key expires (Unix time); absent when it never does.", nil, nil)
)

func (c *pathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descPeersByPath
	ch <- descTxBytes
	ch <- descRxBytes
	ch <- descRelayConns
	ch <- descRelayDrops
	ch <- descRelayBatch
	ch <- descRelayBatchErrs
	ch <- descRegionInfo
	ch <- descHomeRegion
	ch <- descHealth
	ch <- descNATKind
	ch <- descKeyExpiry
}

func (c *pathCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.n.bind.Stats()
	for _, p := range []bind.Path{bind.PathRelay, bind.PathDirect} {
		ch <- prometheus.MustNewConstMetric(descTxBytes, prometheus.CounterValue, float64(st.TxBytes[p]), p.String())
		ch <- prometheus.MustNewConstMetric(descRxBytes, prometheus.CounterValue, float64(st.RxBytes[p]), p.String())
	}
	ch <- prometheus.MustNewConstMetric(descRelayDrops, prometheus.CounterValue, float64(st.RelayQueueDrops))
	ch <- prometheus.MustNewConstMetric(descRelayBatch, prometheus.CounterValue, float64(st.FastTxPackets), "tx")
	ch <- prometheus.MustNewConstMetric(descRelayBatch, prometheus.CounterValue, float64(st.FastRxPackets), "rx")
	ch <- prometheus.MustNewConstMetric(descRelayBatchErrs, prometheus.CounterValue, float64(st.FastSendErrors))
	counts := map[string]int{"direct": 0, "relay": 0, "none": 0}
	for _, p := range c.n.Status().Peers {
		counts[p.Path]++
	}
	for path, v := range counts {
		ch <- prometheus.MustNewConstMetric(descPeersByPath, prometheus.GaugeValue, float64(v), path)
	}
	byRegion := map[string]int{}
	regionOf := c.n.relayRegions()
	for _, addr := range c.n.pool.Open() {
		byRegion[regionOf[addr]]++
	}
	for region, v := range byRegion {
		ch <- prometheus.MustNewConstMetric(descRelayConns, prometheus.GaugeValue, float64(v), region)
	}
	c.n.mu.Lock()
	nm, coordUp := c.n.mu.nm, c.n.mu.coordUp
	c.n.mu.Unlock()
	home := c.n.relays.Home().Region
	nat := c.natKind()
	warn := map[string]bool{healthCoordinator: !coordUp, healthNoHome: home == "",
		healthUDPBlocked: nat == natUDPBlocked, healthHardNAT: nat == natHard, healthDNS: c.n.dnsHealth() != nil}
	for _, k := range []string{healthCoordinator, healthNoHome, healthUDPBlocked, healthHardNAT, healthDNS} {
		ch <- prometheus.MustNewConstMetric(descHealth, prometheus.GaugeValue, boolFloat(warn[k]), k)
	}
	ch <- prometheus.MustNewConstMetric(descNATKind, prometheus.GaugeValue, 1, nat)
	if nm != nil && !nm.Self.KeyExpiry.IsZero() {
		ch <- prometheus.MustNewConstMetric(descKeyExpiry, prometheus.GaugeValue, float64(nm.Self.KeyExpiry.Unix()))
	}
	if nm != nil {
		for _, r := range nm.RelayMap.Regions {
			ch <- prometheus.MustNewConstMetric(descRegionInfo, prometheus.GaugeValue, 1, r.Code, r.Name,
				strconv.FormatFloat(r.Lat, 'f', -1, 64), strconv.FormatFloat(r.Lon, 'f', -1, 64))
		}
	}
	if home != "" {
		ch <- prometheus.MustNewConstMetric(descHomeRegion, prometheus.GaugeValue, 1, home)
	}
}

// natKind reads the NAT kind from the latest STUN mappings and probe round.
func (c *pathCollector) natKind() string {
	c.n.mu.Lock()
	f := c.n.mu.nat
	c.n.mu.Unlock()
	switch {
	case f.udpBlocked:
		return natUDPBlocked
	case f.mapped == 0:
		return natUnknown
	case f.hard:
		return natHard
	default:
		return natEasy
	}
}
