// Package dashboards holds Wiremesh's Grafana dashboards and Prometheus
// rules. The dashboards are written in Go with grafana-foundation-sdk
// (boards.go); `go generate` writes the JSON files and the README's panel
// table from them, and a test fails when the committed files are stale.
// Panels query only metrics the components document (relayd/README.md,
// coordinator/README.md, docs/meshnode.md), and a lab test in e2e runs
// every panel's query against a live Prometheus scraping a lab mesh. The
// files are embedded so tools can serve or install them.
package dashboards

//go:generate go run gen.go

import "embed"

// FS holds the dashboards' JSON files and the Prometheus rules
// (wiremesh.rules.yml).
//
//go:embed *.json wiremesh.rules.yml
var FS embed.FS

// Names lists the dashboard files in FS, in the order of Boards.
func Names() []string {
	var out []string
	for _, b := range Boards() {
		out = append(out, b.File)
	}
	return out
}
