package relayd

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wiremesh/wiremesh/relayproto"
)

// Drop reasons: the values of relayd_dropped_packets_total's reason label.
const (
	dropQueueFull      = "queue_full"           // per-client data queue full; oldest packet dropped
	dropDiscoQueueFull = "disco_queue_full"     // per-client disco queue full; oldest dropped
	dropRateLimited    = "rate_limited"         // sender over its rate limit
	dropNoSuchPeer     = "no_such_peer"         // destination not connected here or in the region
	dropWriteError     = "write_error"          // the destination connection failed mid-write
	dropMeshQueueFull  = "mesh_queue_full"      // queue to a mesh peer full
	dropClosed         = "closed"               // destination went away with packets queued
	dropQueueBytes     = "queue_bytes_full"     // per-client byte cap reached; oldest packets dropped
	dropFastUnvalid    = "fastpath_unvalidated" // fast-path packet with an unknown session or unproven source
)

var dropReasons = []string{dropQueueFull, dropDiscoQueueFull, dropRateLimited, dropNoSuchPeer, dropWriteError, dropMeshQueueFull, dropClosed, dropFastUnvalid, dropQueueBytes}

// metrics holds every relayd_ series. No label carries a per-client value.
type metrics struct {
	regionInfo      *prometheus.GaugeVec   // region: this relay's own, value 1
	clients         *prometheus.GaugeVec   // transport
	connects        *prometheus.CounterVec // transport
	rejects         *prometheus.CounterVec // reason
	forwardedPkts   *prometheus.CounterVec // mode: datagram|stream
	forwardedBytes  *prometheus.CounterVec // mode
	drops           *prometheus.CounterVec // reason
	badFrames       *prometheus.CounterVec // reason
	meshForwarded   *prometheus.CounterVec // direction: out|in
	meshPeers       prometheus.Gauge
	queueDelay      prometheus.Histogram
	stunRequests    *prometheus.CounterVec // result
	clientRTT       prometheus.Histogram
	draining        prometheus.Gauge
	pending         prometheus.Gauge
	pendingDropped  *prometheus.CounterVec // reason
	quicRetries     prometheus.Counter
	revoked         prometheus.Gauge
	revokedClosed   prometheus.Counter
	revocationPolls *prometheus.CounterVec // result: ok|error|not_supported
	fastBatch       prometheus.Histogram
	fastBulkLoops   prometheus.Gauge       // client loops on a lowered-priority thread
	fastBulkMoves   prometheus.Counter     // times a client loop moved there
	fastPollKicks   prometheus.Counter     // pollKeeper wake-ups (fastKick)
	fastConfirms    *prometheus.CounterVec // result: ok|mismatch
	fastChallenges  *prometheus.CounterVec // result: sent|rate_limited

	// Children used per packet, resolved once: WithLabelValues hashes its
	// labels on every call, which showed up at 100k packets/s.
	fwdDgramPkts, fwdDgramBytes   prometheus.Counter
	fwdStreamPkts, fwdStreamBytes prometheus.Counter
	dropQueue, dropDisco          prometheus.Counter
	dropQueueBytes                prometheus.Counter
	meshOutPkts, meshInPkts       prometheus.Counter
	fwdFastPkts, fwdFastBytes     prometheus.Counter
	dropFastUnvalidated           prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relayd_clients", Help: "Connected clients by transport (quic or tcp).",
		}, []string{"transport"}),
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relayd_connects_total", Help: "Clients admitted, by transport.",
		}, []string{"transport"}),
		rejects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relayd_rejects_total", Help: "Client hellos refused, by reason.",
		}, []string{"reason"}),
		forwardedPkts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relayd_forwarded_packets_total", Help: "Packets delivered to clients, by mode (datagram, stream or fastpath).",
		}, []string{"mode"}),
		forwardedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relayd_forwarded_bytes_total", Help: "Payload bytes delivered to clients, by mode.",
		}, []string{"mode"}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relayd_dropped_packets_total", Help: "Packets dropped, by reason.",
		}, []string{"reason"}),
		badFrames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relayd_bad_frames_total", Help: "Garbage, truncated, oversized, unknown or unexpected frames; each closes its connection.",
		}, []string{"reason"}),
		meshForwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relayd_mesh_forwarded_packets_total", Help: "Packets forwarded over the regional mesh, by direction (out or in).",
		}, []string{"direction"}),
		meshPeers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relayd_mesh_peers", Help: "Regional mesh peers with an authenticated outbound connection.",
		}),
		queueDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "relayd_queue_delay_seconds", Help: "Time packets wait in a client's send queue.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 4, 10), // 10 µs .. 2.6 s
		}),
		stunRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relayd_stun_requests_total", Help: "STUN packets received, by result (ok, invalid, or rate_limited: over the per-source or global answer rate).",
		}, []string{"result"}),
		clientRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "relayd_client_rtt_seconds", Help: "Round trip of relay-to-client pings.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 3, 10), // 100 µs .. 2 s
		}),
		draining: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relayd_draining", Help: "1 while the relay drains before shutting down.",
		}),
		regionInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relayd_region_info", Help: "This relay's region (value 1), to group other relayd_ series by region.",
		}, []string{"region"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relayd_pending_connections", Help: "Connections (QUIC and TCP) accepted but not admitted yet: handshake or hello pending.",
		}),
		pendingDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relayd_pending_dropped_total", Help: "Not-yet-admitted connections closed or refused by the pending budget, by reason.",
		}, []string{"reason"}),
		quicRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "relayd_quic_retries_total", Help: "QUIC connection attempts answered with a Retry (address validation under load).",
		}),
	}
	m.fastConfirms = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "relayd_fastpath_confirms_total", Help: "Fast-path confirmations, by result (ok, or mismatch: the challenge matched no candidate address).",
	}, []string{"result"})
	m.fastChallenges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "relayd_fastpath_challenges_total", Help: "Fast-path address challenges, by result (sent, or rate_limited: over the per-session challenge rate).",
	}, []string{"result"})
	m.revoked = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "relayd_revoked_nodes", Help: "Node keys revoked by the coordinator and refused until their tokens expire.",
	})
	m.revokedClosed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "relayd_revoked_sessions_closed_total", Help: "Client sessions closed because their node key was revoked.",
	})
	m.revocationPolls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "relayd_revocation_polls_total", Help: "Revocation long polls to the coordinator, by result (ok, error, not_supported: a coordinator without them).",
	}, []string{"result"})
	for _, r := range []string{"ok", "error", "not_supported"} {
		m.revocationPolls.WithLabelValues(r)
	}
	m.fastBatch = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "relayd_fastpath_read_batch_datagrams", Help: "Datagrams per fast-path read (recvmmsg batch).",
		Buckets: []float64{1, 2, 4, 8, 16, 32},
	})
	m.fastBulkLoops = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "relayd_fastpath_bulk_loops", Help: "Fast-path client loops now served from a thread of lowered CPU priority (clients that keep their socket full; --fastpath-bulk-nice).",
	})
	m.fastBulkMoves = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "relayd_fastpath_bulk_demotions_total", Help: "Times a fast-path client loop moved to a thread of lowered CPU priority.",
	})
	m.fastPollKicks = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "relayd_fastpath_poll_kicks_total", Help: "Times a fast-path loop that read more than one datagram at once woke an idle thread to poll the other sockets.",
	})
	reg.MustRegister(m.revoked, m.revokedClosed, m.revocationPolls, m.fastBatch, m.fastBulkLoops, m.fastBulkMoves, m.fastPollKicks)
	reg.MustRegister(m.pending, m.pendingDropped, m.quicRetries, m.fastConfirms, m.fastChallenges)
	for _, r := range []string{"ok", "mismatch"} {
		m.fastConfirms.WithLabelValues(r)
	}
	for _, r := range []string{"sent", "rate_limited"} {
		m.fastChallenges.WithLabelValues(r)
	}
	for _, r := range pendingDropReasons {
		m.pendingDropped.WithLabelValues(r)
	}
	reg.MustRegister(m.clients, m.connects, m.rejects, m.forwardedPkts, m.forwardedBytes, m.drops,
		m.badFrames, m.meshForwarded, m.meshPeers, m.queueDelay, m.stunRequests, m.clientRTT, m.draining, m.regionInfo)
	// Pre-create every labelled series so dashboards see zeros, not gaps.
	for _, t := range []string{transportQUIC, transportTCP} {
		m.clients.WithLabelValues(t)
		m.connects.WithLabelValues(t)
	}
	for _, r := range relayproto.Reasons() {
		m.rejects.WithLabelValues(r.String())
	}
	for _, r := range dropReasons {
		m.drops.WithLabelValues(r)
	}
	for _, r := range []string{"truncated", "oversized", "unknown", "malformed", "unexpected", "other"} {
		m.badFrames.WithLabelValues(r)
	}
	for _, d := range []string{"datagram", "stream", "fastpath"} {
		m.forwardedPkts.WithLabelValues(d)
		m.forwardedBytes.WithLabelValues(d)
	}
	m.fwdDgramPkts, m.fwdDgramBytes = m.forwardedPkts.WithLabelValues("datagram"), m.forwardedBytes.WithLabelValues("datagram")
	m.fwdStreamPkts, m.fwdStreamBytes = m.forwardedPkts.WithLabelValues("stream"), m.forwardedBytes.WithLabelValues("stream")
	m.dropQueue, m.dropDisco = m.drops.WithLabelValues(dropQueueFull), m.drops.WithLabelValues(dropDiscoQueueFull)
	m.fwdFastPkts, m.fwdFastBytes = m.forwardedPkts.WithLabelValues("fastpath"), m.forwardedBytes.WithLabelValues("fastpath")
	m.dropFastUnvalidated = m.drops.WithLabelValues(dropFastUnvalid)
	m.dropQueueBytes = m.drops.WithLabelValues(dropQueueBytes)
	m.meshOutPkts, m.meshInPkts = m.meshForwarded.WithLabelValues("out"), m.meshForwarded.WithLabelValues("in")
	m.stunRequests.WithLabelValues("ok")
	m.stunRequests.WithLabelValues("invalid")
	m.stunRequests.WithLabelValues("rate_limited")
	return m
}
