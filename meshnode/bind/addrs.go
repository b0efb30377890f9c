package bind

import (
	"net/netip"

	"github.com/wiremesh/wiremesh/key"
)

// RemovePeer forgets a peer, its direct address, its side socket and
// every address accepted for it.
func (b *Bind) RemovePeer(k key.NodePublic) {
	b.RemoveSide(k)
	b.mu.Lock()
	defer b.mu.Unlock()
	ep, ok := b.peers[k]
	if !ok {
		return
	}
	for a := range ep.addrs {
		if b.byAddr[a] == ep {
			delete(b.byAddr, a)
		}
	}
	ep.addrs = nil
	ep.publish(func(r *route) { *r = route{} })
	delete(b.peers, k)
}

// TxBytes returns bytes sent to peer k over any path (0 for an unknown
// peer).
func (b *Bind) TxBytes(k key.NodePublic) uint64 {
	b.mu.RLock()
	ep := b.peers[k]
	b.mu.RUnlock()
	if ep == nil {
		return 0
	}
	return ep.txBytes.Load()
}

// AcceptFrom lets WireGuard packets from addr count as peer k's without
// making addr the send path: used while a path is being confirmed. An
// address stays accepted until ForgetAddr or RemovePeer; past the bounds
// (per peer and in all) new addresses are refused.
func (b *Bind) AcceptFrom(k key.NodePublic, addr netip.AddrPort) {
	ep := b.Peer(k)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.acceptLocked(ep, addr, false)
}

func (b *Bind) acceptLocked(ep *Endpoint, addr netip.AddrPort, force bool) {
	if _, ok := ep.addrs[addr]; ok {
		return
	}
	if !force && (len(ep.addrs) >= maxAddrsPerPeer || len(b.byAddr) >= maxAcceptedAddrs) {
		return
	}
	if prev := b.byAddr[addr]; prev != nil && prev != ep {
		delete(prev.addrs, addr) // the address moved to another peer
	}
	if ep.addrs == nil {
		ep.addrs = map[netip.AddrPort]struct{}{}
	}
	ep.addrs[addr] = struct{}{}
	b.byAddr[addr] = ep
}

// ForgetAddr stops accepting packets from addr as peer k's, unless it is
// the peer's direct path.
func (b *Bind) ForgetAddr(k key.NodePublic, addr netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ep := b.peers[k]
	if ep == nil {
		return
	}
	if ep.route.Load().direct == addr {
		return
	}
	delete(ep.addrs, addr)
	if b.byAddr[addr] == ep {
		delete(b.byAddr, addr)
	}
}

// Address table bounds: a peer has at most a few dozen candidates (the
// path machine keeps 64), and the table as a whole stays a few MB.
const (
	maxAddrsPerPeer  = 128
	maxAcceptedAddrs = 1 << 16
)
