package netmap

import (
	"errors"
	"sort"
)

// NetworkMap is a client's view of the mesh, built by applying the frames of
// a netmap stream in order.
type NetworkMap struct {
	Seq       uint64
	Self      Node
	Peers     map[NodeID]Node
	RelayMap  RelayMap
	DNS       DNS
	Filter    Filter
	Admission Admission
}

// ErrNoFullMap is returned by Apply for a delta that arrives before any full map.
var ErrNoFullMap = errors.New("netmap: delta before the first full map")

// Apply folds one frame into nm.
func (nm *NetworkMap) Apply(m *MapResponse) error {
	if m.KeepAlive {
		return nil
	}
	if m.Full {
		*nm = NetworkMap{Peers: make(map[NodeID]Node, len(m.Peers))}
		for _, p := range m.Peers {
			nm.Peers[p.ID] = p
		}
	} else if nm.Peers == nil {
		return ErrNoFullMap
	}
	nm.Seq = m.Seq
	if m.Self != nil {
		nm.Self = *m.Self
	}
	for _, p := range m.PeersChanged {
		nm.Peers[p.ID] = p
	}
	for _, pc := range m.PeersChangedPatch {
		p, ok := nm.Peers[pc.ID]
		if !ok {
			continue
		}
		if pc.Online != nil {
			p.Online = *pc.Online
		}
		if pc.LastSeen != nil {
			p.LastSeen = *pc.LastSeen
		}
		nm.Peers[pc.ID] = p
	}
	for _, id := range m.PeersRemoved {
		delete(nm.Peers, id)
	}
	if m.RelayMap != nil {
		nm.RelayMap = *m.RelayMap
	}
	if m.DNS != nil {
		nm.DNS = *m.DNS
	}
	if m.PacketFilter != nil {
		nm.Filter = *m.PacketFilter
	}
	if m.Admission != nil {
		nm.Admission = *m.Admission
	}
	return nil
}

// PeerList returns the peers sorted by name.
func (nm *NetworkMap) PeerList() []Node {
	out := make([]Node, 0, len(nm.Peers))
	for _, p := range nm.Peers {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// PeerByName returns the peer called name.
func (nm *NetworkMap) PeerByName(name string) (Node, bool) {
	for _, p := range nm.Peers {
		if p.Name == name {
			return p, true
		}
	}
	return Node{}, false
}
