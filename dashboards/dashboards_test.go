package dashboards

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// docs maps each dashboard to the document that lists its metrics.
var docs = map[string]string{
	"relayd.json":      "../relayd/README.md",
	"coordinator.json": "../coordinator/README.md",
	"meshnode.json":    "../docs/meshnode.md",
}

var metricRE = regexp.MustCompile(`\b(?:relayd|coordinator|meshnode)_[a-z_]+\b`)

// TestDashboardsUseListedMetrics checks that every dashboard parses and
// queries only metrics its component documents, so a renamed metric breaks
// this test instead of a panel.
func TestDashboardsUseListedMetrics(t *testing.T) {
	for _, name := range Names {
		t.Run(name, func(t *testing.T) {
			b, err := FS.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			var d struct {
				UID    string `json:"uid"`
				Panels []struct {
					Title   string `json:"title"`
					Targets []struct {
						Expr string `json:"expr"`
					} `json:"targets"`
				} `json:"panels"`
			}
			if err := json.Unmarshal(b, &d); err != nil {
				t.Fatalf("not JSON: %v", err)
			}
			if d.UID == "" || len(d.Panels) == 0 {
				t.Fatal("no uid or no panels")
			}
			doc, err := os.ReadFile(docs[name])
			if err != nil {
				t.Fatal(err)
			}
			listed := map[string]bool{}
			for _, m := range metricRE.FindAllString(string(doc), -1) {
				listed[m] = true
			}
			for _, p := range d.Panels {
				if len(p.Targets) == 0 {
					t.Fatalf("panel %q has no query", p.Title)
				}
				for _, tg := range p.Targets {
					for _, m := range metricRE.FindAllString(tg.Expr, -1) {
						base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
						if !listed[base] && !listed[m] {
							t.Errorf("panel %q uses %s, which %s does not list", p.Title, m, docs[name])
						}
					}
				}
			}
		})
	}
}
