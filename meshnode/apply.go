package meshnode

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/filter"
	"github.com/wiremesh/wiremesh/meshnode/relays"
	"github.com/wiremesh/wiremesh/netmap"
)

// applyNetmap makes the node match nm: it builds the engine on the first
// map, then applies peer changes as UAPI deltas, the packet filter, the
// admission token, disco keys and the home relay. fromCoordinator marks a
// live map (which is then cached) rather than the cache itself.
func (n *Node) applyNetmap(nm *netmap.NetworkMap, fromCoordinator bool) error {
	self, ok := selfAddr(nm.Self)
	if !ok {
		return fmt.Errorf("netmap has no address for this node")
	}
	n.mu.Lock()
	eng := n.mu.engine
	n.mu.Unlock()
	if eng == nil {
		var err error
		eng, err = n.newEngine(self)
		if err != nil {
			return err
		}
		n.mu.Lock()
		n.mu.engine = eng
		n.mu.Unlock()
		close(n.engineReady)
		n.log.Info("mesh address", "ip", self, "name", nm.Self.Name)
	}

	n.mu.Lock()
	old, oldNM := n.mu.applied, n.mu.nm
	n.mu.nm = nm
	if tok := nm.Admission.Token; tok != "" {
		if _, raw, err := admit.ParseText(tok); err == nil {
			n.mu.token = raw
		} else {
			n.log.Warn("netmap carries a malformed admission token", "err", err)
		}
	}
	if fromCoordinator {
		n.mu.dirtyCache = true
	}
	next := make(map[key.NodePublic]netmap.Node, len(nm.Peers))
	for _, p := range nm.Peers {
		if p.NodeKey.IsZero() || p.NodeKey == n.priv.Public() {
			continue
		}
		if !p.KeyExpiry.IsZero() && !p.KeyExpiry.After(time.Now()) {
			continue // expired keys are not configured
		}
		next[p.NodeKey] = p
	}
	n.mu.applied = next
	n.mu.Unlock()
	home := n.relays.Home()
	if oldNM == nil || !reflect.DeepEqual(oldNM.RelayMap, nm.RelayMap) {
		n.relays.SetRelayMap(nm.RelayMap)
		n.check.SetRelayMap(nm.RelayMap)
	}

	if uapi := peerDelta(old, next); uapi != "" {
		if err := eng.dev.IpcSet(uapi); err != nil {
			return fmt.Errorf("apply peers: %w", err)
		}
	}
	for k := range old {
		if _, ok := next[k]; !ok {
			n.paths.RemovePeer(k)
			n.relays.RemovePeer(k)
			n.bind.RemovePeer(k)
		}
	}
	for k, p := range next {
		o, ok := old[k]
		if !ok || o.DiscoKey != p.DiscoKey || !slices.Equal(o.Endpoints, p.Endpoints) {
			n.paths.UpsertPeer(p)
		}
		if !ok || o.HomeRelay != p.HomeRelay {
			n.relays.UpsertPeer(k, p.HomeRelay)
		}
	}
	n.filter.SetRules(filterRules(nm.Filter))

	// Home relay: the first region of the map until netcheck chooses by latency;
	// kept while it is still in the map.
	if _, still := relays.Pick(nm.RelayMap, home.Region); home.Addr == "" || !still {
		for _, reg := range nm.RelayMap.Regions {
			if r, ok := relays.Pick(nm.RelayMap, reg.Code); ok {
				n.setHome(r, "initial")
				break
			}
		}
	}
	n.metrics.peers.Set(float64(len(next)))
	if fromCoordinator && len(old) == 0 {
		n.saveCache() // the first map is worth keeping at once
	}
	return nil
}

func selfAddr(self netmap.Node) (netip.Addr, bool) {
	for _, p := range self.Addresses {
		if p.Addr().Is4() {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// peerDelta returns the UAPI commands that turn peer set old into next:
// removals, additions, and changed allowed IPs. Unchanged peers produce
// nothing, so a delta touching one peer costs one peer's worth of work.
func peerDelta(old, next map[key.NodePublic]netmap.Node) string {
	var b strings.Builder
	for k := range old {
		if _, ok := next[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.UAPI())
		}
	}
	for k, p := range next {
		o, existed := old[k]
		if existed && o.DiscoKey != p.DiscoKey {
			// A new disco key means the peer restarted: its WireGuard
			// sessions with us are gone. Re-creating the peer drops ours,
			// so the next packet starts a handshake at once instead of
			// after WireGuard's 15 s "stopped hearing back" timeout.
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.UAPI())
			existed = false
		}
		if existed && slices.Equal(o.AllowedIPs, p.AllowedIPs) && slices.Equal(o.Addresses, p.Addresses) {
			continue
		}
		fmt.Fprintf(&b, "public_key=%s\n", k.UAPI())
		if !existed {
			// The endpoint is the peer itself; the bind picks the path.
			fmt.Fprintf(&b, "endpoint=%s\n", k)
		}
		b.WriteString("replace_allowed_ips=true\n")
		ips := p.AllowedIPs
		if len(ips) == 0 {
			ips = p.Addresses
		}
		for _, ip := range ips {
			fmt.Fprintf(&b, "allowed_ip=%s\n", ip)
		}
	}
	return b.String()
}

// filterRules converts the coordinator's rules to the filter's.
func filterRules(f netmap.Filter) []filter.Rule {
	out := make([]filter.Rule, 0, len(f.Rules))
	for _, r := range f.Rules {
		fr := filter.Rule{Srcs: r.SrcIPs}
		for _, d := range r.DstPorts {
			fr.Dsts = append(fr.Dsts, filter.PortRange{Dst: d.Dst, First: d.First, Last: d.Last})
		}
		out = append(out, fr)
	}
	return out
}
