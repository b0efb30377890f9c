package meshnode

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/meshnode/filter"
	"github.com/wiremesh/wiremesh/meshnode/relays"
	"github.com/wiremesh/wiremesh/netmap"
)

// KeyExpiryGrace is how long past a peer's key expiry the node still
// talks to it: clock skew between this node and the coordinator, as
// Tailscale allows. After it the peer is dropped, whether or not the
// coordinator is reachable to say so.
const KeyExpiryGrace = 10 * time.Second

// frame is what one netmap frame changed, for applyChanges.
type frame struct {
	full bool // every peer may have changed
	// ids are the peers that may have changed (when !full), and old their
	// entries before the frame.
	ids                       []netmap.NodeID
	old                       map[netmap.NodeID]netmap.Node
	relayMap, filter, cache   bool
	dns, self                 bool // the DNS settings or this node's entry changed
	admission                 string
	fromCoordinator, firstMap bool
}

// applyFrame folds one frame from the coordinator's stream into the
// node's map and applies what it changed: a delta touching one peer costs
// one peer's work in every part (UAPI, paths, relays, bind).
func (n *Node) applyFrame(m *netmap.MapResponse) error {
	n.mu.Lock()
	nm := n.mu.nm
	if m.Full || nm == nil {
		n.mu.Unlock()
		if !m.Full {
			return netmap.ErrNoFullMap
		}
		fresh := &netmap.NetworkMap{}
		if err := fresh.Apply(m); err != nil {
			return err
		}
		return n.applyNetmap(fresh, true)
	}
	f := frame{old: map[netmap.NodeID]netmap.Node{}, fromCoordinator: true, cache: true,
		relayMap: m.RelayMap != nil, filter: m.PacketFilter != nil,
		dns: m.DNS != nil, self: m.Self != nil}
	note := func(id netmap.NodeID) {
		if _, seen := f.old[id]; !seen {
			f.old[id] = nm.Peers[id]
			f.ids = append(f.ids, id)
		}
	}
	for _, p := range m.PeersChanged {
		note(p.ID)
	}
	for _, pc := range m.PeersChangedPatch {
		note(pc.ID)
	}
	for _, id := range m.PeersRemoved {
		note(id)
	}
	if err := nm.Apply(m); err != nil {
		n.mu.Unlock()
		return err
	}
	if m.Admission != nil {
		f.admission = nm.Admission.Token
	}
	n.mu.Unlock()
	return n.applyChanges(nm, f)
}

// applyNetmap makes the node match a whole map: the cache at start-up,
// or a full frame. It builds the engine on the first map.
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
		if eng, err = n.newEngine(self); err != nil {
			return err
		}
		n.mu.Lock()
		n.mu.engine = eng
		n.mu.Unlock()
		close(n.engineReady)
		n.log.Info("mesh address", "ip", self, "name", nm.Self.Name)
	}
	n.mu.Lock()
	oldNM := n.mu.nm
	first := len(n.mu.applied) == 0
	n.mu.nm = nm
	n.mu.Unlock()
	return n.applyChanges(nm, frame{full: true, cache: fromCoordinator, fromCoordinator: fromCoordinator,
		firstMap: fromCoordinator && first, admission: nm.Admission.Token, filter: true, dns: true, self: true,
		relayMap: oldNM == nil || !reflect.DeepEqual(oldNM.RelayMap, nm.RelayMap)})
}

// applyChanges applies frame f of map nm (already folded in) to every
// part of the node.
func (n *Node) applyChanges(nm *netmap.NetworkMap, f frame) error {
	now := n.now()
	var uapi strings.Builder
	n.uapiMu.Lock()
	defer n.uapiMu.Unlock()
	n.mu.Lock()
	if f.admission != "" {
		if _, raw, err := admit.ParseText(f.admission); err == nil {
			n.mu.token = raw
		} else {
			n.log.Warn("netmap carries a malformed admission token", "err", err)
		}
	}
	if f.cache {
		n.mu.dirtyCache = true
	}
	var rm netmap.RelayMap
	var rules []filter.Rule
	if f.relayMap {
		rm = nm.RelayMap
	}
	if f.filter {
		rules = filterRules(nm.Filter)
	}
	var changes []peerChange
	if f.full {
		changes = n.fullDiffLocked(nm, now)
	} else {
		for _, id := range f.ids {
			changes = append(changes, n.peerDiffLocked(f.old[id], nm.Peers[id], now)...)
		}
	}
	for _, c := range changes {
		c.record(n, &uapi)
	}
	var df dnsFrame
	if f.dns {
		d := nm.DNS
		df.settings = &d
	}
	if f.self {
		s := nm.Self
		df.self = &s
	}
	eng, peers := n.mu.engine, len(n.mu.applied)
	n.mu.Unlock()

	if f.relayMap {
		n.relays.SetRelayMap(rm)
		n.check.SetRelayMap(rm)
	}
	if s := uapi.String(); s != "" && eng != nil {
		if err := eng.dev.IpcSet(s); err != nil {
			return fmt.Errorf("apply peers: %w", err)
		}
	}
	for _, c := range changes {
		c.apply(n)
	}
	n.feedDNS(df, changes)
	n.feedRoutes()
	if f.filter {
		n.filter.SetRules(rules)
	}
	if f.relayMap {
		n.chooseInitialHome(rm)
	}
	n.metrics.peers.Set(float64(peers))
	if f.firstMap {
		n.saveCache() // the first map is worth keeping at once
	}
	return nil
}

// chooseInitialHome makes the first region of the map home until netcheck
// chooses by latency; a home still in the map is kept.
func (n *Node) chooseInitialHome(rm netmap.RelayMap) {
	home := n.relays.Home()
	if _, still := relays.Pick(rm, home.Region); home.Addr != "" && still {
		return
	}
	for _, reg := range rm.Regions {
		if r, ok := relays.Pick(rm, reg.Code); ok {
			n.setHome(r, "initial")
			return
		}
	}
}

func selfAddr(self netmap.Node) (netip.Addr, bool) {
	for _, p := range self.Addresses {
		if p.Addr().Is4() {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
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
