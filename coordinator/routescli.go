package coordinator

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// The `coordinator routes` admin commands (entries of adminCommands).

func routesListCommand() adminCommand {
	return &admin[jsonFlags, []RouteInfo]{
		cmd: "routes list", usage: "[--json] --state-dir DIR",
		request: func(*jsonFlags, []string) (string, string, any, error) { return "GET", AdminPathRoutes, nil, nil },
		print: func(w io.Writer, f *jsonFlags, _ []string, rs *[]RouteInfo) error {
			if f.JSON {
				return printJSON(w, *rs)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tPREFIX\tADVERTISED\tAPPROVED\tPRIMARY")
			for _, r := range *rs {
				appr := fmt.Sprint(r.Approved)
				if r.AutoApproved {
					appr += " (policy)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%v\n", r.Node, r.Prefix, r.Advertised, appr, r.Primary)
			}
			return tw.Flush()
		},
	}
}

// routeApproveCommand is `routes approve` or `routes unapprove`.
func routeApproveCommand(verb, path string) adminCommand {
	return &admin[plainFlags, noBody]{
		cmd: "routes " + verb, usage: "NODE CIDR --state-dir DIR", args: 2,
		argsErr: "routes " + verb + " needs a node NAME and a CIDR (0.0.0.0/0 for an exit node)",
		request: func(_ *plainFlags, pos []string) (string, string, any, error) {
			return "POST", path, RouteRequest{Node: pos[0], Prefix: pos[1]}, nil
		},
		print: func(w io.Writer, _ *plainFlags, pos []string, _ *noBody) error {
			_, err := fmt.Fprintf(w, "%s %s: %sd\n", pos[0], pos[1], verb)
			return err
		},
	}
}
