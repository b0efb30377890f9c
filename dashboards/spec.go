package dashboards

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/geomap"
	"github.com/grafana/grafana-foundation-sdk/go/heatmap"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Board is one dashboard: the Go description that both the Grafana JSON and
// the README's panel table are generated from, and that the live check in
// e2e runs against a real Prometheus.
type Board struct {
	File   string // file name in this directory, e.g. "paths.json"
	UID    string
	Title  string
	About  string // one line for the README
	Panels []Panel
}

// Kind is a Grafana panel type.
type Kind string

// Panel kinds used by the dashboards.
const (
	TimeSeries Kind = "timeseries"
	Heatmap    Kind = "heatmap"
	Geomap     Kind = "geomap"
	Table      Kind = "table"
)

// Panel is one panel and its queries.
type Panel struct {
	Title   string
	Kind    Kind
	Unit    string // Grafana unit id: "s", "Bps", "short", ...
	Shows   string // what is happening when the panel draws something
	Queries []Query
}

// Query is one PromQL target. Expr may use the dashboard variables
// $instance and $region and Grafana's $__rate_interval.
type Query struct {
	Expr   string
	Legend string
}

// Variables returns the values the live check substitutes for the
// dashboard variables: "All" in Grafana is the regex .* for both, and
// $__rate_interval is at least four scrape intervals.
func Variables() map[string]string {
	return map[string]string{
		"$__rate_interval": "1m",
		"$instance":        ".*",
		"$region":          ".*",
	}
}

// Substitute replaces the dashboard variables in expr with vars.
func Substitute(expr string, vars map[string]string) string {
	// Longest names first, so $__rate_interval is not cut by a shorter one.
	for _, k := range []string{"$__rate_interval", "$instance", "$region"} {
		if v, ok := vars[k]; ok {
			expr = strings.ReplaceAll(expr, k, v)
		}
	}
	return expr
}

// VariableQuery is a query variable: label_values(Metric, Label).
type VariableQuery struct{ Name, Metric, Label string }

// VariableQueries returns the queries behind the region and instance
// variables of every dashboard.
func VariableQueries() []VariableQuery {
	return []VariableQuery{
		{"region", "meshnode_region_info", "region"},
		{"instance", "up", "instance"},
	}
}

// ds is the data source every panel and variable uses: the dashboard's
// datasource variable.
func ds() common.DataSourceRef {
	return common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${datasource}")}
}

// Build turns b into a Grafana dashboard with grafana-foundation-sdk.
//
// It builds the classic dashboard schema (package dashboard), which the SDK
// marks deprecated in favour of dashboardv2: the classic JSON is what
// Grafana's Dashboards → Import and file provisioning take on every
// version in use, while v2 resources need Grafana 12's new API.
//
//lint:ignore SA1019 classic schema on purpose, see above
func (b Board) Build() (dashboard.Dashboard, error) {
	//lint:ignore SA1019 classic schema on purpose, see Build's doc
	d := dashboard.NewDashboardBuilder(b.Title).
		Uid(b.UID).
		Tags([]string{"wiremesh"}).
		Editable().
		Time("now-1h", "now").
		Refresh("30s").
		Timezone("browser").
		WithVariable(dashboard.NewDatasourceVariableBuilder("datasource").Label("Data source").Type("prometheus"))
	for _, v := range VariableQueries() {
		q := fmt.Sprintf("label_values(%s, %s)", v.Metric, v.Label)
		d.WithVariable(dashboard.NewQueryVariableBuilder(v.Name).
			Label(strings.ToUpper(v.Name[:1]) + v.Name[1:]).
			Datasource(ds()).
			Query(dashboard.StringOrMap{String: cog.ToPtr(q)}).
			Definition(q).
			Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
			Sort(dashboard.VariableSortAlphabeticalAsc).
			Multi(true).
			IncludeAll(true).
			AllValue(".*").
			Current(dashboard.VariableOption{Text: dashboard.StringOrArrayOfString{String: cog.ToPtr("All")},
				Value: dashboard.StringOrArrayOfString{String: cog.ToPtr("$__all")}}))
	}
	for i, p := range b.Panels {
		pb, err := p.builder(i)
		if err != nil {
			//lint:ignore SA1019 classic schema on purpose, see Build's doc
			return dashboard.Dashboard{}, fmt.Errorf("%s: panel %q: %w", b.File, p.Title, err)
		}
		d.WithPanel(pb)
	}
	return d.Build()
}

// JSON returns the dashboard as the indented JSON committed in this
// directory.
func (b Board) JSON() ([]byte, error) {
	d, err := b.Build()
	if err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// Panel layout: two panels per 24-column row, 8 units high.
const (
	panelWidth  = 12
	panelHeight = 8
)

func (p Panel) targets(format prometheus.PromQueryFormat, instant bool) []cog.Builder[variants.Dataquery] {
	var out []cog.Builder[variants.Dataquery]
	for i, q := range p.Queries {
		t := prometheus.NewDataqueryBuilder().
			Datasource(ds()).
			RefId(string(rune('A' + i))).
			Expr(q.Expr).
			Format(format)
		if q.Legend != "" {
			t.LegendFormat(q.Legend)
		}
		if instant {
			t.Instant()
		} else {
			t.Range()
		}
		out = append(out, t)
	}
	return out
}

func (p Panel) builder(i int) (cog.Builder[dashboard.Panel], error) {
	pos := dashboard.GridPos{H: panelHeight, W: panelWidth, X: uint32(i%2) * panelWidth, Y: uint32(i/2) * panelHeight}
	id := uint32(i + 1)
	if len(p.Queries) == 0 {
		return nil, fmt.Errorf("no query")
	}
	switch p.Kind {
	case TimeSeries:
		b := timeseries.NewPanelBuilder().Id(id).Title(p.Title).Description(p.Shows).Datasource(ds()).GridPos(pos).Unit(p.Unit).
			Legend(common.NewVizLegendOptionsBuilder().ShowLegend(true).DisplayMode(common.LegendDisplayModeList).Placement(common.LegendPlacementBottom))
		for _, t := range p.targets(prometheus.PromQueryFormatTimeSeries, false) {
			b.WithTarget(t)
		}
		return b, nil
	case Heatmap:
		b := heatmap.NewPanelBuilder().Id(id).Title(p.Title).Description(p.Shows).Datasource(ds()).GridPos(pos).Unit(p.Unit).Calculate(false)
		for _, t := range p.targets(prometheus.PromQueryFormatHeatmap, false) {
			b.WithTarget(t)
		}
		return b, nil
	case Geomap:
		layer := common.NewMapLayerOptionsBuilder().Type("markers").Name("regions").Tooltip(true).
			Location(common.NewFrameGeometrySourceBuilder().Mode(common.FrameGeometrySourceModeCoords).
				Latitude("latitude").Longitude("longitude"))
		b := geomap.NewPanelBuilder().Id(id).Title(p.Title).Description(p.Shows).Datasource(ds()).GridPos(pos).Unit(p.Unit).
			View(geomap.NewMapViewConfigBuilder().Id("zero").Lat(30).Lon(0).Zoom(1)).
			Layers([]cog.Builder[common.MapLayerOptions]{layer})
		for _, t := range p.targets(prometheus.PromQueryFormatTable, true) {
			b.WithTarget(t)
		}
		return b, nil
	case Table:
		b := table.NewPanelBuilder().Id(id).Title(p.Title).Description(p.Shows).Datasource(ds()).GridPos(pos).Unit(p.Unit)
		for _, t := range p.targets(prometheus.PromQueryFormatTable, true) {
			b.WithTarget(t)
		}
		return b, nil
	}
	return nil, fmt.Errorf("unknown panel kind %q", p.Kind)
}
