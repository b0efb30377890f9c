package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/policy"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/meshnode/routes"
)

// Subnet routes and exit nodes.
//
// A node advertises routes in its updates (UpdateRequest.AdvertisedRoutes
// and ExitNode); they are validated with the same rules the node applies
// to its own flags (package meshnode/routes, a pure package shared by both
// sides so the two can never disagree) and stored as the node's
// advertised routes, 0.0.0.0/0 standing for an exit-node offer. An admin
// approves routes one by one (`routes approve`), stored apart from the
// advertisement so that neither write can undo the other, even across
// replicas; the policy's autoApprovers approve more. A route is in effect
// while it is advertised and approved (effectiveRoutes).
//
// In effect, a router matches, as a destination, every policy rule whose
// dst covers part of its routes (so the rule's sources see it as a peer and
// it sees them), its packet filter accepts what those rules allow to the
// routed networks, and each peer gets the routes it may use in the peer
// entry's routes and exit_node_option (peerBytesLocked).

// effectiveRoutes returns the routes of rec in effect under p: each
// advertised route that is approved, by an admin or by the policy.
func effectiveRoutes(rec *store.Node, p *policy.Policy) (subnets []netip.Prefix, exit bool) {
	pr := policy.Principal{Name: rec.Name, Tags: rec.Tags, IP: rec.IP, User: rec.User}
	for _, r := range rec.AdvertisedRoutes {
		if !slices.Contains(rec.ApprovedRoutes, r) && !p.AutoApproves(r, pr) {
			continue
		}
		if r == routes.ExitPrefix {
			exit = true
		} else {
			subnets = append(subnets, r)
		}
	}
	return subnets, exit
}

func (n *nodeState) hasRoutes() bool { return len(n.subnets) > 0 || n.exit }

// routesTo reports whether r's destinations cover part of n's routes.
func (n *nodeState) routesTo(r *policy.Rule) bool {
	return n.hasRoutes() && len(r.RoutedDsts(n.subnets, n.exit)) > 0
}

// peerBytesLocked returns router o's encoding as viewer sees it: only the
// routes viewer may use under the policy. Nodes without routes share one
// cached encoding. The caller holds st.mu.
func (st *state) peerBytesLocked(o, viewer *nodeState) []byte {
	if !o.hasRoutes() {
		return o.wireBytes()
	}
	vp := viewer.principal()
	node := o.toNetmap()
	node.Routes = nil
	for _, r := range o.subnets {
		if st.policy.MayUseRoute(vp, r) {
			node.Routes = append(node.Routes, r)
		}
	}
	node.ExitNodeOption = o.exit && st.policy.MayUseRoute(vp, routes.ExitPrefix)
	b, _ := json.Marshal(node)
	return b
}

// routesChangedLocked re-evaluates n's routes after its record (or the
// policy) changed and tells everyone affected: the nodes that see it
// before or after (removed for those that no longer do) and n itself,
// whose peers and filter follow its routes. The caller holds st.mu.
func (st *state) routesChangedLocked(n *nodeState, now time.Time) {
	before := map[*nodeState]struct{}{}
	st.visibleFrom(n, now, func(o *nodeState) { before[o] = struct{}{} })
	st.unindexLocked(n)
	st.indexLocked(n)
	n.wire.Store(nil)
	st.visibleFrom(n, now, func(o *nodeState) {
		delete(before, o)
		if o.sess != nil {
			o.sess.markPeer(n.id, true, now)
		}
	})
	for o := range before {
		if o.sess != nil {
			o.sess.markRemoved(n.id, now)
		}
	}
	if n.sess != nil {
		n.sess.mark(func(p *pending) { p.self, p.recompute = true, true }, now)
	}
}

// validateAdvertised checks a node's advertisement; the error names the
// bad entry.
func validateAdvertised(ps *[]netip.Prefix) error {
	if ps == nil {
		return nil
	}
	if err := routes.Validate(*ps); err != nil {
		return errorf(http.StatusBadRequest, "advertised_routes: %v", err)
	}
	return nil
}

// applyAdvertised records what a node advertises: subnets (nil:
// unchanged) and exit (nil: unchanged).
func (srv *Server) applyAdvertised(ctx context.Context, n *nodeState, subnets *[]netip.Prefix, exit *bool) error {
	if subnets == nil && exit == nil {
		return nil
	}
	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	st := srv.st
	st.mu.RLock()
	old := slices.Clone(n.rec.AdvertisedRoutes)
	st.mu.RUnlock()
	oldExit := slices.Contains(old, routes.ExitPrefix)
	next := slices.DeleteFunc(slices.Clone(old), func(p netip.Prefix) bool { return p == routes.ExitPrefix })
	if subnets != nil {
		next = slices.Clone(*subnets)
	}
	if (exit != nil && *exit) || (exit == nil && oldExit) {
		next = append(next, routes.ExitPrefix)
	}
	if slices.Equal(next, old) {
		return nil
	}
	if err := srv.store.SetAdvertisedRoutes(ctx, n.rec.ID, next); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return errorf(http.StatusNotFound, "node was deleted")
		}
		return err
	}
	now := srv.now()
	st.mu.Lock()
	defer st.mu.Unlock()
	n.rec.AdvertisedRoutes = next
	if _, live := st.nodes[n.id]; live && !n.expired(now) {
		st.routesChangedLocked(n, now)
	}
	return nil
}

// RouteInfo is one row of `routes list`: one route one node advertises or
// has approved.
type RouteInfo struct {
	Node       string `json:"node"`
	Prefix     string `json:"prefix"`
	Advertised bool   `json:"advertised"`
	// Approved: by an admin or by the policy's autoApprovers.
	Approved bool `json:"approved"`
	// AutoApproved: approved by the policy.
	AutoApproved bool `json:"auto_approved"`
	// Primary is the coordinator's view: this node is the oldest online
	// router with the route in effect. Clients choose their own primary
	// by the routers' health.
	Primary bool `json:"primary"`
	Online  bool `json:"online"`
}

// Routes lists every advertised or approved route, by node then prefix.
func (srv *Server) Routes() []RouteInfo {
	st := srv.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	// primary: per prefix, the online node with the route in effect that
	// registered first (ties: lower ID).
	primary := map[netip.Prefix]*nodeState{}
	older := func(a, b *nodeState) bool {
		if !a.rec.Created.Equal(b.rec.Created) {
			return a.rec.Created.Before(b.rec.Created)
		}
		return a.id < b.id
	}
	for _, n := range st.nodes {
		if !n.online() {
			continue
		}
		eff := slices.Clone(n.subnets)
		if n.exit {
			eff = append(eff, routes.ExitPrefix)
		}
		for _, r := range eff {
			if p := primary[r]; p == nil || older(n, p) {
				primary[r] = n
			}
		}
	}
	out := []RouteInfo{}
	for _, n := range st.nodes {
		all := slices.Clone(n.rec.AdvertisedRoutes)
		for _, r := range n.rec.ApprovedRoutes {
			if !slices.Contains(all, r) {
				all = append(all, r)
			}
		}
		pr := n.principal()
		for _, r := range all {
			auto := slices.Contains(n.rec.AdvertisedRoutes, r) && st.policy.AutoApproves(r, pr)
			out = append(out, RouteInfo{
				Node: n.rec.Name, Prefix: r.String(),
				Advertised:   slices.Contains(n.rec.AdvertisedRoutes, r),
				Approved:     slices.Contains(n.rec.ApprovedRoutes, r) || auto,
				AutoApproved: auto,
				Primary:      primary[r] == n,
				Online:       n.online(),
			})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].Prefix < out[j].Prefix
	})
	return out
}

// RouteRequest names one route of one node.
type RouteRequest struct {
	Node   string `json:"node"`
	Prefix string `json:"prefix"`
}

// parseApproval checks an approve/unapprove argument: a network address
// in CIDR form, 0.0.0.0/0 for an exit node, or a subnet route that passes
// the advertisement rules.
func parseApproval(text string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(text)
	if err != nil {
		return p, fmt.Errorf("%q is not a CIDR (want a network such as 198.19.50.0/24, or 0.0.0.0/0 for an exit node)", text)
	}
	if p == routes.ExitPrefix {
		return p, nil
	}
	if err := routes.Validate([]netip.Prefix{p}); err != nil {
		return p, err
	}
	return p, nil
}

// ApproveRoute approves (approve) or unapproves a route of a node by
// name. A route must be advertised to be approved; unapproving works on
// any approved route, advertised or not.
func (srv *Server) ApproveRoute(ctx context.Context, node, prefix string, approve bool) error {
	changed, err := srv.approveRoute(ctx, node, prefix, approve)
	if err == nil && changed {
		action := "routes approve"
		if !approve {
			action = "routes unapprove"
		}
		srv.audit(ctx, action, node+" "+prefix)
	}
	return err
}

func (srv *Server) approveRoute(ctx context.Context, node, prefix string, approve bool) (bool, error) {
	p, err := parseApproval(prefix)
	if err != nil {
		return false, err
	}
	st := srv.st
	st.mu.RLock()
	n := st.byName[node]
	st.mu.RUnlock()
	if n == nil {
		return false, fmt.Errorf("node %q: %w", node, store.ErrNotFound)
	}
	n.writeMu.Lock()
	defer n.writeMu.Unlock()
	st.mu.RLock()
	adv, appr := n.rec.AdvertisedRoutes, n.rec.ApprovedRoutes
	st.mu.RUnlock()
	if approve && !slices.Contains(adv, p) {
		for _, a := range adv {
			if a != routes.ExitPrefix && p != routes.ExitPrefix && a.Overlaps(p) {
				return false, fmt.Errorf("%s overlaps %s, which %s advertises: approve exactly what is advertised", p, a, node)
			}
		}
		if p == routes.ExitPrefix {
			return false, fmt.Errorf("%s does not offer itself as an exit node (meshnode run --advertise-exit-node)", node)
		}
		return false, fmt.Errorf("%s does not advertise %s (advertised: %s)", node, p, listOrNone(adv))
	}
	if !approve && !slices.Contains(appr, p) {
		return false, fmt.Errorf("%s has no approval for %s to remove (approved: %s)", node, p, listOrNone(appr))
	}
	changed, err := srv.store.ApproveRoute(ctx, n.rec.ID, p, approve)
	if err != nil || !changed {
		return false, err
	}
	now := srv.now()
	st.mu.Lock()
	defer st.mu.Unlock()
	if approve {
		n.rec.ApprovedRoutes = append(slices.Clone(appr), p)
		store.SortPrefixes(n.rec.ApprovedRoutes) // as stored
	} else {
		n.rec.ApprovedRoutes = slices.DeleteFunc(slices.Clone(appr), func(q netip.Prefix) bool { return q == p })
	}
	if _, live := st.nodes[n.id]; live && !n.expired(now) {
		st.routesChangedLocked(n, now)
	}
	return true, nil
}

func listOrNone(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none"
	}
	return fmt.Sprint(ps)
}
