// Package dashboards holds Wiremesh's Grafana dashboards, one per binary,
// built only from the metrics each component's documentation lists
// (relayd/README.md, coordinator/README.md, docs/meshnode.md). They are
// embedded so tools can serve or install them; import the JSON files into
// Grafana with a Prometheus data source.
package dashboards

import "embed"

// FS holds relayd.json, coordinator.json and meshnode.json.
//
//go:embed *.json
var FS embed.FS

// Names lists the dashboards in FS.
var Names = []string{"relayd.json", "coordinator.json", "meshnode.json"}
