package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// runRoutes runs `coordinator routes list|approve|unapprove`.
func runRoutes(ctx context.Context, cmd string, args []string, stdout io.Writer) error {
	name := "coordinator " + cmd
	switch cmd {
	case "routes list":
		var f struct {
			AdminFlags
			JSON bool `flag:"json" env:"JSON" help:"print JSON"`
		}
		if err := parseAdmin(name, "[--json] --state-dir DIR", &f, args, stdout, 0); err != nil {
			return err
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		var rs []RouteInfo
		if err := adminCall(ctx, hc, "GET", AdminPathRoutes, nil, &rs); err != nil {
			return err
		}
		if f.JSON {
			return json.NewEncoder(stdout).Encode(rs)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tPREFIX\tADVERTISED\tAPPROVED\tPRIMARY")
		for _, r := range rs {
			appr := fmt.Sprint(r.Approved)
			if r.AutoApproved {
				appr += " (policy)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%v\n", r.Node, r.Prefix, r.Advertised, appr, r.Primary)
		}
		return tw.Flush()
	case "routes approve", "routes unapprove":
		var f struct{ AdminFlags }
		pos, err := parseAdminPos(name, "NODE CIDR --state-dir DIR", &f, args, stdout)
		if err != nil {
			return err
		}
		if len(pos) != 2 {
			return usageErr("%s needs a node NAME and a CIDR (0.0.0.0/0 for an exit node)", cmd)
		}
		hc, err := adminClient(f.StateDir)
		if err != nil {
			return err
		}
		path := AdminPathRouteApprove
		if cmd == "routes unapprove" {
			path = AdminPathRouteUnapprove
		}
		if err := adminCall(ctx, hc, "POST", path, RouteRequest{Node: pos[0], Prefix: pos[1]}, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s %s: %sd\n", pos[0], pos[1], cmd[len("routes "):])
		return nil
	}
	return usageErr("unknown command %q", cmd)
}
