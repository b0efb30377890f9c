package meshnode

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// peerChange is one configured peer's change: added (no old), removed (no
// next), or changed. Everything a part of the node needs to follow it is
// here, so each part does one peer's work.
type peerChange struct {
	key       key.NodePublic
	old, next netmap.Node
	had, has  bool
	// routed are the routed prefixes the peer carries beside its
	// addresses (set by record).
	routed []netip.Prefix
}

// live reports whether p is a peer to configure: not this node, and its
// key not expired (past KeyExpiryGrace).
func (n *Node) live(p netmap.Node, now time.Time) bool {
	if p.NodeKey.IsZero() || p.NodeKey == n.priv.Public() {
		return false
	}
	return p.KeyExpiry.IsZero() || now.Before(p.KeyExpiry.Add(KeyExpiryGrace))
}

// peerDiffLocked returns the changes that turn peer entry o into p (either
// may be the zero Node: absent), given what is configured now.
func (n *Node) peerDiffLocked(o, p netmap.Node, now time.Time) []peerChange {
	var out []peerChange
	// An old entry that was not configured (expired, or self) has
	// nothing to remove.
	cur, had := n.mu.applied[o.NodeKey]
	liveNext := !p.NodeKey.IsZero() && n.live(p, now)
	if had && (!liveNext || p.NodeKey != o.NodeKey) {
		out = append(out, peerChange{key: o.NodeKey, old: cur, had: true})
	}
	if liveNext {
		prev, was := n.mu.applied[p.NodeKey]
		out = append(out, peerChange{key: p.NodeKey, old: prev, had: was, next: p, has: true})
	}
	return out
}

// fullDiffLocked compares the configured peers with a whole map.
func (n *Node) fullDiffLocked(nm *netmap.NetworkMap, now time.Time) []peerChange {
	next := make(map[key.NodePublic]netmap.Node, len(nm.Peers))
	for _, p := range nm.Peers {
		if n.live(p, now) {
			next[p.NodeKey] = p
		}
	}
	var out []peerChange
	for k, o := range n.mu.applied {
		if _, ok := next[k]; !ok {
			out = append(out, peerChange{key: k, old: o, had: true})
		}
	}
	for k, p := range next {
		o, had := n.mu.applied[k]
		out = append(out, peerChange{key: k, old: o, had: had, next: p, has: true})
	}
	return out
}

// record updates the configured peer set, the next expiry check and the
// UAPI commands (n.mu held).
func (c peerChange) record(n *Node, uapi *strings.Builder) {
	if !c.has {
		delete(n.mu.applied, c.key)
	} else {
		n.mu.applied[c.key] = c.next
		if e := c.next.KeyExpiry; !e.IsZero() {
			at := e.Add(KeyExpiryGrace)
			if n.mu.nextExpiry.IsZero() || at.Before(n.mu.nextExpiry) {
				n.mu.nextExpiry = at
			}
		}
	}
	c.routed = n.mu.routeIPs[c.key]
	writeUAPI(uapi, c)
}

// apply tells the path machine, the relay router and the bind (n.mu not
// held).
func (c peerChange) apply(n *Node) {
	if !c.has {
		n.paths.RemovePeer(c.key)
		n.relays.RemovePeer(c.key)
		n.bind.RemovePeer(c.key)
		return
	}
	if !c.had || c.old.DiscoKey != c.next.DiscoKey || !slices.Equal(c.old.Endpoints, c.next.Endpoints) {
		n.paths.UpsertPeer(c.next)
	}
	if !c.had || c.old.HomeRelay != c.next.HomeRelay {
		n.relays.UpsertPeer(c.key, c.next.HomeRelay)
	}
}

// writeUAPI writes the UAPI commands for one peer change: removal,
// addition, or changed allowed IPs. An unchanged peer writes nothing.
func writeUAPI(b *strings.Builder, c peerChange) {
	k := c.key
	if !c.has {
		fmt.Fprintf(b, "public_key=%s\nremove=true\n", k.UAPI())
		return
	}
	existed := c.had
	o, p := c.old, c.next
	if existed && o.DiscoKey != p.DiscoKey {
		// A new disco key means the peer restarted: its WireGuard
		// sessions with us are gone. Re-creating the peer drops ours,
		// so the next packet starts a handshake at once instead of
		// after WireGuard's 15 s "stopped hearing back" timeout.
		fmt.Fprintf(b, "public_key=%s\nremove=true\n", k.UAPI())
		existed = false
	}
	if existed && slices.Equal(o.AllowedIPs, p.AllowedIPs) && slices.Equal(o.Addresses, p.Addresses) {
		return
	}
	fmt.Fprintf(b, "public_key=%s\n", k.UAPI())
	if !existed {
		// The endpoint is the peer itself; the bind picks the path.
		fmt.Fprintf(b, "endpoint=%s\n", k)
	}
	b.WriteString("replace_allowed_ips=true\n")
	for _, ip := range peerAllowedIPs(p, c.routed) {
		fmt.Fprintf(b, "allowed_ip=%s\n", ip)
	}
}

// expirePeers drops every configured peer whose key expired (past the
// grace), once the earliest expiry is due. Housekeeping calls it every
// second; it costs nothing until an expiry is due.
func (n *Node) expirePeers() {
	now := n.now()
	n.mu.Lock()
	if n.mu.nextExpiry.IsZero() || now.Before(n.mu.nextExpiry) {
		n.mu.Unlock()
		return
	}
	n.mu.nextExpiry = time.Time{}
	n.mu.Unlock()
	n.uapiMu.Lock()
	defer n.uapiMu.Unlock()
	n.mu.Lock()
	var uapi strings.Builder
	var changes []peerChange
	for k, p := range n.mu.applied {
		if n.live(p, now) {
			if e := p.KeyExpiry; !e.IsZero() && (n.mu.nextExpiry.IsZero() || e.Add(KeyExpiryGrace).Before(n.mu.nextExpiry)) {
				n.mu.nextExpiry = e.Add(KeyExpiryGrace)
			}
			continue
		}
		c := peerChange{key: k, old: p, had: true}
		changes = append(changes, c)
		n.log.Info("peer key expired; dropping it", "peer", p.Name, "key_expiry", p.KeyExpiry)
	}
	for _, c := range changes {
		c.record(n, &uapi)
	}
	eng, peers := n.mu.engine, len(n.mu.applied)
	n.mu.Unlock()
	if s := uapi.String(); s != "" && eng != nil {
		if err := eng.dev.IpcSet(s); err != nil {
			n.log.Warn("removing expired peers failed", "err", err)
		}
	}
	for _, c := range changes {
		c.apply(n)
	}
	n.feedDNS(dnsFrame{}, changes)
	n.feedRoutes()
	n.metrics.peers.Set(float64(peers))
}
