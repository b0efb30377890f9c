package router

import (
	"net/netip"
	"slices"
	"sync/atomic"

	"github.com/wiremesh/wiremesh/meshnode/filter"
	"github.com/wiremesh/wiremesh/meshnode/routes"
	"golang.zx2c4.com/wireguard/tun"
)

// Policy judges packets the router forwards between the mesh and its routed
// prefixes. *filter.Filter satisfies it: the node's compiled ACL, whose
// rules carry the routed prefixes (with ports) the coordinator allows.
type Policy interface {
	// Inbound judges a packet a peer sent towards a routed prefix.
	Inbound(pkt []byte) filter.Verdict
	// Outbound records a packet leaving a routed prefix towards the
	// mesh, so that the peer's replies to a flow the LAN started pass.
	Outbound(pkt []byte)
}

// Reason is why the forward filter dropped a packet; it labels
// meshnode_router_forward_drops_total.
type Reason int

// Drop reasons. The first ones mirror filter.Verdict.
const (
	ReasonNoRule    Reason = iota // the policy has no rule for it
	ReasonMalformed               // unparseable
	ReasonFragment                // a non-first fragment no rule admits
	ReasonNotRouted               // its destination is no route this node offers
	numReasons
)

// String returns the metric label for r.
func (r Reason) String() string {
	switch r {
	case ReasonNoRule:
		return "no_rule"
	case ReasonMalformed:
		return "malformed"
	case ReasonFragment:
		return "fragment"
	case ReasonNotRouted:
		return "not_routed"
	}
	return "unknown"
}

func reasonOf(v filter.Verdict) Reason {
	switch v {
	case filter.DropMalformed:
		return ReasonMalformed
	case filter.DropFragment:
		return ReasonFragment
	}
	return ReasonNoRule
}

// Forwarder is the router side's packet filter: it wraps the node's TUN
// device so that every packet a peer sends to an address that is not the
// node's own (forwarded traffic) is checked before the kernel forwards it:
//
//  1. its destination must be inside a route this node offers
//     (SetRoutes; with the exit node, everything outside the mesh range),
//     else it is dropped as not_routed: a peer cannot use this node to reach
//     networks it never offered;
//  2. the Policy must accept it, else it is dropped with the policy's
//     reason (no_rule for a port the ACL does not allow).
//
// Packets for the node itself pass untouched (the node's own filter judges
// them), and so does anything addressed inside the mesh range. Every packet
// leaving towards the mesh from a routed prefix is shown to the Policy
// (Outbound). Drops are counted by reason.
//
// Forwarder is safe for concurrent use; SetRoutes may run while packets
// flow.
type Forwarder struct {
	tun.Device
	self    netip.Addr
	policy  Policy
	metrics *Metrics

	routes    atomic.Pointer[[]netip.Prefix]
	drops     [numReasons]atomic.Uint64
	forwarded atomic.Uint64
}

// NewForwarder wraps dev. metrics may be nil.
func NewForwarder(dev tun.Device, self netip.Addr, policy Policy, metrics *Metrics) *Forwarder {
	f := &Forwarder{Device: dev, self: self, policy: policy, metrics: metrics}
	f.routes.Store(&[]netip.Prefix{})
	if metrics != nil {
		metrics.bindForwarder(f)
	}
	return f
}

// SetRoutes replaces the prefixes this node forwards to: its advertised
// routes, plus routes.ExitPrefix when it is an exit node.
func (f *Forwarder) SetRoutes(ps []netip.Prefix) {
	c := slices.Clone(ps)
	f.routes.Store(&c)
}

// Drops returns how many packets were dropped for reason r.
func (f *Forwarder) Drops(r Reason) uint64 {
	if r < 0 || r >= numReasons {
		return 0
	}
	return f.drops[r].Load()
}

// Forwarded returns how many packets from the mesh were accepted for
// forwarding.
func (f *Forwarder) Forwarded() uint64 { return f.forwarded.Load() }

// forwarded reports whether a packet for dst leaves this node (it is not
// for the node and not for the mesh).
func (f *Forwarder) isForwarded(dst netip.Addr) bool {
	return dst != f.self && !routes.MeshRange.Contains(dst)
}

// judge decides one packet from a peer: ok, or dropped for reason.
func (f *Forwarder) judge(pkt []byte) (ok bool, reason Reason) {
	p, parsed := filter.Parse(pkt)
	if !parsed {
		// Not ours to judge: the node's filter drops (and counts) it.
		return true, 0
	}
	if !f.isForwarded(p.Dst) {
		return true, 0
	}
	if !slices.ContainsFunc(*f.routes.Load(), func(r netip.Prefix) bool { return r.Contains(p.Dst) }) {
		return false, ReasonNotRouted
	}
	if v := f.policy.Inbound(pkt); v != filter.Accept {
		return false, reasonOf(v)
	}
	f.forwarded.Add(1)
	return true, 0
}

// Write delivers packets from peers to the kernel, dropping forwarded ones
// the filter rejects. A drop is not an error: every packet is reported
// handled.
func (f *Forwarder) Write(bufs [][]byte, offset int) (int, error) {
	return filter.WriteKept(f.Device, bufs, offset, func(pkt []byte) bool {
		ok, reason := f.judge(pkt)
		if !ok {
			f.drops[reason].Add(1)
		}
		return ok
	})
}

// Read reads packets the kernel sends to the mesh and shows those coming
// from a routed prefix to the Policy.
func (f *Forwarder) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := f.Device.Read(bufs, sizes, offset)
	for i := 0; i < n; i++ {
		pkt := bufs[i][offset : offset+sizes[i]]
		if p, ok := filter.Parse(pkt); ok && f.isForwarded(p.Src) {
			f.policy.Outbound(pkt)
		}
	}
	return n, err
}
