package dashboards

// The label filters every query carries: the instance variable everywhere,
// the region variable where the series has (or joins) a region label.
const (
	inst    = `instance=~"$instance"`
	instReg = `instance=~"$instance", region=~"$region"`
	// byRegion joins a relayd_ series to its relay's region.
	byRegion = ` * on (instance) group_left (region) relayd_region_info{region=~"$region"}`
)

func q(expr, legend string) Query { return Query{Expr: expr, Legend: legend} }

func p50p99(metric, filter, by, legend string) []Query {
	sel := metric + `_bucket{` + filter + `}`
	grp := "le"
	if by != "" {
		grp += ", " + by
	}
	return []Query{
		q(`histogram_quantile(0.5, sum by (`+grp+`) (rate(`+sel+`[5m])))`, "p50 "+legend),
		q(`histogram_quantile(0.99, sum by (`+grp+`) (rate(`+sel+`[5m])))`, "p99 "+legend),
	}
}

// Boards returns every dashboard, in the order the README lists them.
func Boards() []Board {
	return []Board{fleet(), paths(), relayLatency(), relaydBoard(), coordinatorBoard(), meshnodeBoard()}
}

func fleet() Board {
	return Board{File: "fleet.json", UID: "wiremesh-fleet", Title: "Wiremesh / Fleet overview",
		About: "relays up, clients per region, coordinator streams, registrations, change fan-out and push latency",
		Panels: []Panel{
			{Title: "Relays up by region", Kind: TimeSeries, Unit: "short",
				Shows: "relays the coordinator counts as up (heartbeating or static in the relay map), and relay scrape targets answering",
				Queries: []Query{
					q(`sum by (region) (coordinator_relays{state=~"up|static", region=~"$region"})`, "{{region}}"),
					q(`sum(up{job="relayd", `+inst+`})`, "scraped and up"),
				}},
			{Title: "Clients per region", Kind: TimeSeries, Unit: "short",
				Shows: "nodes connected to the relays of each region, by transport",
				Queries: []Query{
					q(`sum by (region, transport) (relayd_clients{`+inst+`}`+byRegion+`)`, "{{region}} {{transport}}"),
				}},
			{Title: "Coordinator map streams", Kind: TimeSeries, Unit: "short",
				Shows: "nodes holding an open netmap stream, and nodes by state",
				Queries: []Query{
					q(`sum(coordinator_map_streams{`+inst+`})`, "streams"),
					q(`sum by (state) (coordinator_nodes{`+inst+`})`, "nodes {{state}}"),
				}},
			{Title: "Registrations by result", Kind: TimeSeries, Unit: "reqps",
				Shows: "nodes registering (and failing to)",
				Queries: []Query{
					q(`sum by (result) (rate(coordinator_registrations_total{`+inst+`}[5m]))`, "{{result}}"),
				}},
			{Title: "Change fan-out latency p50 / p99", Kind: TimeSeries, Unit: "s",
				Shows:   "a change (registration, endpoint, home relay) reaching the streams of the nodes it touches",
				Queries: p50p99("coordinator_fanout_latency_seconds", inst, "", "fan-out")},
			{Title: "Push latency p99 by kind", Kind: TimeSeries, Unit: "s",
				Shows: "streams building, writing and flushing frames to nodes",
				Queries: []Query{
					q(`histogram_quantile(0.99, sum by (le, kind) (rate(coordinator_push_latency_seconds_bucket{`+inst+`}[5m])))`, "p99 {{kind}}"),
				}},
			{Title: "Map updates sent", Kind: TimeSeries, Unit: "ops",
				Shows: "frames written to netmap streams",
				Queries: []Query{
					q(`sum by (kind) (rate(coordinator_map_updates_sent_total{`+inst+`}[5m]))`, "{{kind}}"),
				}},
			{Title: "Nodes per home region", Kind: TimeSeries, Unit: "short",
				Shows: "nodes whose home relay is in each region, as the nodes report it",
				Queries: []Query{
					q(`sum by (region) (meshnode_home_region_info{`+instReg+`})`, "{{region}}"),
				}},
		}}
}

func paths() Board {
	return Board{File: "paths.json", UID: "wiremesh-paths", Title: "Wiremesh / Paths",
		About: "peers and bytes by path, time to direct, path changes, NAT and port-mapping kind per node, drops, health warnings",
		Panels: []Panel{
			{Title: "Peers by path", Kind: TimeSeries, Unit: "short",
				Shows: "peers reached directly, through a relay, or not at all",
				Queries: []Query{
					q(`sum by (path) (meshnode_peers{`+inst+`})`, "{{path}}"),
				}},
			{Title: "Bytes by path", Kind: TimeSeries, Unit: "Bps",
				Shows: "WireGuard traffic sent and received over direct UDP and over relays",
				Queries: []Query{
					q(`sum by (path) (rate(meshnode_tx_bytes_total{`+inst+`}[5m]))`, "tx {{path}}"),
					q(`sum by (path) (rate(meshnode_rx_bytes_total{`+inst+`}[5m]))`, "rx {{path}}"),
				}},
			{Title: "Time to direct p50 / p99", Kind: TimeSeries, Unit: "s",
				Shows: "peers upgrading from the relay to a direct path",
				Queries: []Query{
					q(`histogram_quantile(0.5, sum by (le) (rate(meshnode_time_to_direct_seconds_bucket{`+inst+`}[30m])))`, "p50"),
					q(`histogram_quantile(0.99, sum by (le) (rate(meshnode_time_to_direct_seconds_bucket{`+inst+`}[30m])))`, "p99"),
				}},
			{Title: "Path changes per hour", Kind: TimeSeries, Unit: "short",
				Shows: "upgrades to direct and downgrades to the relay, by reason",
				Queries: []Query{
					q(`sum by (direction, reason) (increase(meshnode_path_changes_total{`+inst+`}[1h]))`, "{{direction}} {{reason}}"),
				}},
			{Title: "NAT kind per node", Kind: Table, Unit: "short",
				Shows: "each node's NAT as its STUN probes see it (easy, hard, udp_blocked, unknown)",
				Queries: []Query{
					q(`max by (instance, kind) (meshnode_nat_info{`+inst+`})`, ""),
				}},
			{Title: "Port-mapping kind per node", Kind: Table, Unit: "short",
				Shows: "the port-mapping protocol holding a mapping for each node (none in this build)",
				Queries: []Query{
					q(`max by (instance, kind) (meshnode_port_mapping_info{`+inst+`})`, ""),
				}},
			{Title: "Drops by reason", Kind: TimeSeries, Unit: "pps",
				Shows: "packets the node's filter refused, and relayed packets dropped on the way in or out",
				Queries: []Query{
					q(`sum by (reason) (rate(meshnode_filter_drops_total{`+inst+`}[5m]))`, "filter {{reason}}"),
					q(`sum(rate(meshnode_relay_queue_drops_total{`+inst+`}[5m]))`, "relay queue"),
					q(`sum(rate(meshnode_relay_pending_drops_total{`+inst+`}[5m]))`, "waiting for relay"),
				}},
			{Title: "Health warnings", Kind: TimeSeries, Unit: "short",
				Shows: "nodes with each warning raised (coordinator disconnected, no home relay, UDP blocked, hard NAT)",
				Queries: []Query{
					q(`sum by (kind) (meshnode_health_warnings{`+inst+`})`, "{{kind}}"),
				}},
		}}
}

func relayLatency() Board {
	return Board{File: "relay-latency.json", UID: "wiremesh-relay-latency", Title: "Wiremesh / Relay latency",
		About: "region latency as the nodes measure it (heatmap, map, quantiles), home-relay moves by reason, relay queue drops",
		Panels: []Panel{
			{Title: "Region latency heatmap", Kind: Heatmap, Unit: "s",
				Shows: "nodes probing relay regions (STUN or relay ping)",
				Queries: []Query{
					q(`sum by (le) (increase(meshnode_region_latency_seconds_bucket{`+instReg+`}[$__rate_interval]))`, "{{le}}"),
				}},
			{Title: "Region latency map", Kind: Geomap, Unit: "s",
				Shows: "latest probe round trip to each region, at the region's coordinates from the relay map",
				Queries: []Query{
					q(`avg by (region, name, latitude, longitude) (meshnode_region_rtt_seconds{`+instReg+`} * on (instance, region) group_left (name, latitude, longitude) meshnode_region_info{`+instReg+`})`, "{{region}}"),
				}},
			{Title: "Region latency p50 / p90 by region", Kind: TimeSeries, Unit: "s",
				Shows: "nodes probing relay regions",
				Queries: []Query{
					q(`histogram_quantile(0.5, sum by (le, region) (rate(meshnode_region_latency_seconds_bucket{`+instReg+`}[15m])))`, "p50 {{region}}"),
					q(`histogram_quantile(0.9, sum by (le, region) (rate(meshnode_region_latency_seconds_bucket{`+instReg+`}[15m])))`, "p90 {{region}}"),
				}},
			{Title: "Home-relay moves by reason", Kind: TimeSeries, Unit: "short",
				Shows: "nodes choosing (initial) or changing their home relay, per hour",
				Queries: []Query{
					q(`sum by (reason) (increase(meshnode_home_relay_changes_total{`+inst+`}[1h]))`, "{{reason}}"),
				}},
			{Title: "Relay queue drops", Kind: TimeSeries, Unit: "pps",
				Shows: "relays dropping packets from full per-client, disco or mesh queues; nodes dropping relayed packets",
				Queries: []Query{
					q(`sum by (region, reason) (rate(relayd_dropped_packets_total{reason=~"queue_full|disco_queue_full|mesh_queue_full", `+inst+`}[5m])`+byRegion+`)`, "{{region}} {{reason}}"),
					q(`sum(rate(meshnode_relay_queue_drops_total{`+inst+`}[5m]))`, "nodes"),
				}},
			{Title: "Latest latency to each region", Kind: TimeSeries, Unit: "s",
				Shows: "the latest probe round trip from the slowest node to each region",
				Queries: []Query{
					q(`max by (region) (meshnode_region_rtt_seconds{`+instReg+`})`, "{{region}}"),
				}},
		}}
}

// The three per-binary dashboards (relayd.json, coordinator.json,
// meshnode.json) keep every panel the hand-written JSON had.

func relaydBoard() Board {
	return Board{File: "relayd.json", UID: "wiremesh-relayd", Title: "Wiremesh / relayd",
		About: "relay servers: clients, throughput by mode, drops, queue delay, client RTT, mesh, STUN",
		Panels: []Panel{
			{Title: "Clients by transport", Kind: TimeSeries, Unit: "short", Shows: "nodes connected to relays",
				Queries: []Query{q(`sum by (transport) (relayd_clients{`+inst+`})`, "{{transport}}")}},
			{Title: "Forwarded throughput by mode", Kind: TimeSeries, Unit: "bps", Shows: "relayed traffic",
				Queries: []Query{q(`sum by (mode) (rate(relayd_forwarded_bytes_total{`+inst+`}[5m])) * 8`, "{{mode}}")}},
			{Title: "Forwarded packets by mode", Kind: TimeSeries, Unit: "pps", Shows: "relayed traffic",
				Queries: []Query{q(`sum by (mode) (rate(relayd_forwarded_packets_total{`+inst+`}[5m]))`, "{{mode}}")}},
			{Title: "Drops by reason", Kind: TimeSeries, Unit: "pps", Shows: "relays dropping packets",
				Queries: []Query{q(`sum by (reason) (rate(relayd_dropped_packets_total{`+inst+`}[5m]))`, "{{reason}}")}},
			{Title: "Queue delay p50 / p99", Kind: TimeSeries, Unit: "s", Shows: "relayed packets waiting in client queues",
				Queries: p50p99("relayd_queue_delay_seconds", inst, "", "")},
			{Title: "Client RTT p50 / p99", Kind: TimeSeries, Unit: "s", Shows: "relays pinging their clients",
				Queries: p50p99("relayd_client_rtt_seconds", inst, "", "")},
			{Title: "Connects and rejects", Kind: TimeSeries, Unit: "ops", Shows: "nodes connecting (and being refused)",
				Queries: []Query{
					q(`sum by (transport) (rate(relayd_connects_total{`+inst+`}[5m]))`, "connect {{transport}}"),
					q(`sum by (reason) (rate(relayd_rejects_total{`+inst+`}[5m]))`, "reject {{reason}}"),
				}},
			{Title: "Regional mesh", Kind: TimeSeries, Unit: "short", Shows: "relays of one region forwarding to each other",
				Queries: []Query{
					q(`sum by (direction) (rate(relayd_mesh_forwarded_packets_total{`+inst+`}[5m]))`, "{{direction}} pps"),
					q(`sum(relayd_mesh_peers{`+inst+`})`, "mesh peers"),
				}},
			{Title: "STUN requests", Kind: TimeSeries, Unit: "reqps", Shows: "nodes probing relays with STUN",
				Queries: []Query{q(`sum by (result) (rate(relayd_stun_requests_total{`+inst+`}[5m]))`, "{{result}}")}},
			{Title: "Bad frames and draining", Kind: TimeSeries, Unit: "short", Shows: "protocol violations; relays draining",
				Queries: []Query{
					q(`sum by (reason) (rate(relayd_bad_frames_total{`+inst+`}[5m]))`, "{{reason}}"),
					q(`max(relayd_draining{`+inst+`})`, "draining"),
				}},
		}}
}

func coordinatorBoard() Board {
	return Board{File: "coordinator.json", UID: "wiremesh-coordinator", Title: "Wiremesh / coordinator",
		About: "nodes by state, map streams, fan-out and push latency, registrations, relays by region, auth failures",
		Panels: []Panel{
			{Title: "Nodes by state", Kind: TimeSeries, Unit: "short", Shows: "registered nodes",
				Queries: []Query{q(`sum by (state) (coordinator_nodes{`+inst+`})`, "{{state}}")}},
			{Title: "Open map streams", Kind: TimeSeries, Unit: "short", Shows: "nodes connected to the coordinator",
				Queries: []Query{q(`sum(coordinator_map_streams{`+inst+`})`, "streams")}},
			{Title: "Map updates sent", Kind: TimeSeries, Unit: "ops", Shows: "frames written to netmap streams",
				Queries: []Query{q(`sum by (kind) (rate(coordinator_map_updates_sent_total{`+inst+`}[5m]))`, "{{kind}}")}},
			{Title: "Fan-out latency p50 / p99", Kind: TimeSeries, Unit: "s", Shows: "changes reaching streams",
				Queries: p50p99("coordinator_fanout_latency_seconds", inst, "", "")},
			{Title: "Push latency p50 / p99 by kind", Kind: TimeSeries, Unit: "s", Shows: "streams pushing frames",
				Queries: p50p99("coordinator_push_latency_seconds", inst, "kind", "{{kind}}")},
			{Title: "Registrations by result", Kind: TimeSeries, Unit: "reqps", Shows: "nodes registering",
				Queries: []Query{q(`sum by (result) (rate(coordinator_registrations_total{`+inst+`}[5m]))`, "{{result}}")}},
			{Title: "Relays by region and state", Kind: TimeSeries, Unit: "short", Shows: "the relay fleet",
				Queries: []Query{q(`sum by (region, state) (coordinator_relays{`+instReg+`})`, "{{region}} {{state}}")}},
			{Title: "Auth failures", Kind: TimeSeries, Unit: "reqps", Shows: "requests refused for their proof of possession",
				Queries: []Query{q(`sum by (reason) (rate(coordinator_auth_failures_total{`+inst+`}[5m]))`, "{{reason}}")}},
			{Title: "Relay fleet events", Kind: TimeSeries, Unit: "ops", Shows: "relays joining and heartbeating",
				Queries: []Query{q(`sum by (event) (rate(coordinator_relay_events_total{`+inst+`}[5m]))`, "{{event}}")}},
		}}
}

func meshnodeBoard() Board {
	return Board{File: "meshnode.json", UID: "wiremesh-meshnode", Title: "Wiremesh / meshnode",
		About: "peers and traffic by path, peer RTT, relay connections by region, filter drops, disco, regions",
		Panels: []Panel{
			{Title: "Peers by path", Kind: TimeSeries, Unit: "short", Shows: "peers by path",
				Queries: []Query{q(`sum by (path) (meshnode_peers{`+inst+`})`, "{{path}}")}},
			{Title: "Traffic by path", Kind: TimeSeries, Unit: "bps", Shows: "WireGuard traffic",
				Queries: []Query{
					q(`sum by (path) (rate(meshnode_tx_bytes_total{`+inst+`}[5m])) * 8`, "tx {{path}}"),
					q(`sum by (path) (rate(meshnode_rx_bytes_total{`+inst+`}[5m])) * 8`, "rx {{path}}"),
				}},
			{Title: "Peer RTT p50 / p99 by path", Kind: TimeSeries, Unit: "s", Shows: "disco pings answered",
				Queries: p50p99("meshnode_peer_rtt_seconds", inst, "path", "{{path}}")},
			{Title: "Relay connections by region", Kind: TimeSeries, Unit: "short", Shows: "nodes connected to relays",
				Queries: []Query{q(`sum by (region) (meshnode_relay_connections{`+instReg+`})`, "{{region}}")}},
			{Title: "Filter drops by reason", Kind: TimeSeries, Unit: "pps", Shows: "inbound packets the filter refused",
				Queries: []Query{q(`sum by (reason) (rate(meshnode_filter_drops_total{`+inst+`}[5m]))`, "{{reason}}")}},
			{Title: "Coordinator connected", Kind: TimeSeries, Unit: "short", Shows: "nodes' netmap streams",
				Queries: []Query{q(`min(meshnode_coordinator_connected{`+inst+`})`, "connected (min)")}},
			{Title: "Home relay changes", Kind: TimeSeries, Unit: "short", Shows: "home relay choices per hour",
				Queries: []Query{q(`sum by (reason) (increase(meshnode_home_relay_changes_total{`+inst+`}[1h]))`, "{{reason}}")}},
			{Title: "Disco received", Kind: TimeSeries, Unit: "pps", Shows: "disco traffic",
				Queries: []Query{q(`sum by (kind) (rate(meshnode_disco_received_total{`+inst+`}[5m]))`, "{{kind}}")}},
			{Title: "Relay drops", Kind: TimeSeries, Unit: "pps", Shows: "relayed packets dropped",
				Queries: []Query{
					q(`sum(rate(meshnode_relay_queue_drops_total{`+inst+`}[5m]))`, "queue"),
					q(`sum(rate(meshnode_relay_pending_drops_total{`+inst+`}[5m]))`, "pending"),
				}},
			{Title: "Path changes", Kind: TimeSeries, Unit: "short", Shows: "path upgrades and downgrades",
				Queries: []Query{q(`sum by (direction) (increase(meshnode_path_changes_total{`+inst+`}[10m]))`, "{{direction}}")}},
			{Title: "Time to direct p50 / p99", Kind: TimeSeries, Unit: "s", Shows: "upgrades to direct",
				Queries: []Query{
					q(`histogram_quantile(0.5, sum by (le) (rate(meshnode_time_to_direct_seconds_bucket{`+inst+`}[30m])))`, "p50"),
					q(`histogram_quantile(0.99, sum by (le) (rate(meshnode_time_to_direct_seconds_bucket{`+inst+`}[30m])))`, "p99"),
				}},
			{Title: "Disco pings by result", Kind: TimeSeries, Unit: "ops", Shows: "disco pings sent and answered",
				Queries: []Query{q(`sum by (result) (rate(meshnode_disco_pings_total{`+inst+`}[5m]))`, "{{result}}")}},
			{Title: "Nodes behind hard NAT", Kind: TimeSeries, Unit: "short", Shows: "nodes whose relays see different mappings",
				Queries: []Query{q(`sum(meshnode_hard_nat{`+inst+`})`, "hard NAT")}},
			{Title: "Latency to each region", Kind: TimeSeries, Unit: "s", Shows: "region probes",
				Queries: []Query{q(`max by (region) (meshnode_region_rtt_seconds{`+instReg+`})`, "{{region}}")}},
			{Title: "Home region (nodes per region)", Kind: TimeSeries, Unit: "short", Shows: "home relay choices",
				Queries: []Query{q(`sum by (region) (meshnode_home_region_info{`+instReg+`})`, "{{region}}")}},
			{Title: "Region latency p90", Kind: TimeSeries, Unit: "s", Shows: "region probes",
				Queries: []Query{q(`histogram_quantile(0.9, sum by (le, region) (rate(meshnode_region_latency_seconds_bucket{`+instReg+`}[15m])))`, "p90 {{region}}")}},
			{Title: "Relay regions", Kind: Geomap, Unit: "short", Shows: "regions in the relay map",
				Queries: []Query{q(`max by (region, name, latitude, longitude) (meshnode_region_info{`+instReg+`})`, "{{region}}")}},
		}}
}
