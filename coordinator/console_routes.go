package coordinator

import (
	"cmp"
	"net/http"
	"slices"
	"strings"

	"github.com/wiremesh/wiremesh/meshnode/routes"
)

// The console's routes page and the route actions the machines page
// shares with it. Approving a route decides where other machines' traffic
// goes (a subnet route, or an exit node for everything), so only an admin
// approves or unapproves; a user sees the routes of their own machines.

// routeRow is one row of the routes page.
type routeRow struct {
	RouteInfo
	User string
	// Exit: the row is an exit-node offer (0.0.0.0/0).
	Exit bool
}

// visibleRoutes returns the routes of the machines s may see, with each
// machine's user.
func (srv *Server) visibleRoutes(s *webSession) []routeRow {
	users := map[string]string{}
	for _, n := range srv.visibleNodes(s) {
		users[n.Name] = n.User
	}
	var out []routeRow
	for _, r := range srv.Routes() {
		u, ok := users[r.Node]
		if !ok {
			continue // another user's machine (or one renamed meanwhile)
		}
		out = append(out, routeRow{RouteInfo: r, User: u, Exit: r.Prefix == routes.ExitPrefix.String()})
	}
	return out
}

func (srv *Server) webRoutes(w http.ResponseWriter, r *http.Request, s *webSession) {
	rows := srv.visibleRoutes(s)
	// By prefix, exit nodes last, so the routers of one network are
	// together; the primary first among them.
	slices.SortStableFunc(rows, func(a, b routeRow) int {
		if a.Exit != b.Exit {
			if a.Exit {
				return 1
			}
			return -1
		}
		if c := cmp.Compare(a.Prefix, b.Prefix); c != 0 {
			return c
		}
		if a.Primary != b.Primary {
			if a.Primary {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Node, b.Node)
	})
	q := r.URL.Query()
	srv.render(w, r, http.StatusOK, "routes.html", s, pageData{Title: "Routes", Nav: "routes", Data: rows,
		Notice: q.Get("done"), Error: q.Get("error")})
}

// webRouteAction approves or unapproves one route of one machine, then
// goes back to the page the form was on (routes or machines).
func (srv *Server) webRouteAction(w http.ResponseWriter, r *http.Request, s *webSession) {
	op := r.PathValue("op")
	if op != "approve" && op != "unapprove" {
		srv.render(w, r, http.StatusNotFound, "message.html", s, pageData{Title: "Not found", Message: "There is no such action."})
		return
	}
	node, prefix := strings.TrimSpace(r.PostFormValue("node")), strings.TrimSpace(r.PostFormValue("prefix"))
	back := "/routes"
	if r.PostFormValue("back") == "machines" {
		back = "/machines"
	}
	if !srv.ownsNode(s, node) {
		srv.render(w, r, http.StatusNotFound, "message.html", s, pageData{Title: "Not found", Message: "There is no such machine."})
		return
	}
	if err := srv.ApproveRoute(r.Context(), node, prefix, op == "approve"); err != nil {
		http.Redirect(w, r, back+"?error="+urlQuery(err.Error()), http.StatusSeeOther)
		return
	}
	what := prefix
	if prefix == routes.ExitPrefix.String() {
		what = "exit node " + prefix
	}
	http.Redirect(w, r, back+"?done="+urlQuery(node+": "+what+" "+op+"d"), http.StatusSeeOther)
}
