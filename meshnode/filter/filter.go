// Package filter is a node's inbound packet filter: the coordinator's ACL,
// compiled for this node, enforced on every packet a peer sends before it
// reaches the TUN device or netstack.
//
// A packet from the mesh is accepted when
//
//   - it answers a flow this node started (the filter is stateful: outbound
//     packets are recorded, so replies pass whatever the rules say), or
//   - a rule accepts its source address, destination address and port.
//
// Everything else is dropped and counted by reason. ICMP has no ports: an
// echo request is accepted when a rule allows any port on its destination.
// Non-first IP fragments carry no ports either and are accepted only when
// some rule allows the source to reach the destination.
//
// The rules are replaced atomically (SetRules) as netmap deltas arrive;
// packets never see a half-applied set.
package filter

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// IP protocol numbers the filter understands.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// Flow-table bounds. maxFlows caps memory (about 100 bytes a flow: 6.5 MB
// at the cap) whatever a busy or hostile local workload does; flowTTL is a
// little past the usual 2-minute UDP NAT timeout, and TCP flows refresh on
// every packet, so long-lived idle TCP connections rely on keepalives, as
// they do through any NAT.
const (
	maxFlows = 65536
	flowTTL  = 150 * time.Second
	// refreshEvery limits flow-table writes on the hot path: a flow's
	// timestamp is rewritten at most once a second.
	refreshEvery = time.Second
)

// Verdict is the filter's decision on an inbound packet.
type Verdict int

// Verdicts. The drop reasons label the drop metric.
const (
	Accept Verdict = iota
	DropNoRule
	DropMalformed
	DropFragment
)

// String returns the metric label for v.
func (v Verdict) String() string {
	switch v {
	case Accept:
		return "accept"
	case DropNoRule:
		return "no_rule"
	case DropMalformed:
		return "malformed"
	case DropFragment:
		return "fragment"
	}
	return "unknown"
}

// Rule accepts packets from any of Srcs to any of Dsts.
type Rule struct {
	Srcs []netip.Prefix
	Dsts []PortRange
}

// PortRange is a destination prefix and an inclusive port range.
type PortRange struct {
	Dst         netip.Prefix
	First, Last uint16
}

// Packet is the part of an IP packet the filter looks at.
type Packet struct {
	Src, Dst         netip.Addr
	Proto            uint8
	SrcPort, DstPort uint16 // for ICMP echo: the identifier in both
	Fragment         bool   // a non-first fragment: no ports
	ICMPEcho         bool   // an ICMP echo request
}

type flowKey struct {
	local, remote         netip.Addr
	proto                 uint8
	localPort, remotePort uint16
}

// Filter is safe for concurrent use.
type Filter struct {
	rules atomic.Pointer[[]Rule]
	// localOnly are addresses this node serves to its own programs only
	// (MagicDNS's 100.100.100.100): no rule admits a packet to them.
	localOnly atomic.Pointer[[]netip.Addr]
	now       func() time.Time

	mu    sync.Mutex
	flows map[flowKey]int64 // unix nanoseconds of the last outbound packet

	drops [4]atomic.Uint64 // by Verdict
}

// New returns a filter with no rules: it accepts only replies to this
// node's own flows until SetRules is called. now may be nil (time.Now).
func New(now func() time.Time) *Filter {
	if now == nil {
		now = time.Now
	}
	f := &Filter{now: now, flows: make(map[flowKey]int64)}
	f.rules.Store(&[]Rule{})
	return f
}

// SetRules replaces the rule set.
func (f *Filter) SetRules(rules []Rule) {
	r := append([]Rule(nil), rules...)
	f.rules.Store(&r)
}

// SetLocalOnly sets the addresses no peer may reach, whatever the rules
// say (a rule's destination "*" is 0.0.0.0/0): services for this node's
// own programs, such as its DNS resolver.
func (f *Filter) SetLocalOnly(addrs []netip.Addr) {
	a := append([]netip.Addr(nil), addrs...)
	f.localOnly.Store(&a)
}

// Drops returns how many packets were dropped for reason v.
func (f *Filter) Drops(v Verdict) uint64 {
	if v <= Accept || int(v) >= len(f.drops) {
		return 0
	}
	return f.drops[v].Load()
}

// Flows returns the number of tracked outbound flows.
func (f *Filter) Flows() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.flows)
}

// Outbound records a packet this node sends to the mesh, so that replies to
// it are accepted. Unparseable packets are ignored.
func (f *Filter) Outbound(b []byte) {
	p, ok := Parse(b)
	if !ok || p.Fragment {
		return
	}
	k := flowKey{local: p.Src, remote: p.Dst, proto: p.Proto, localPort: p.SrcPort, remotePort: p.DstPort}
	now := f.now().UnixNano()
	f.mu.Lock()
	defer f.mu.Unlock()
	last, ok := f.flows[k]
	if ok && now-last < int64(refreshEvery) {
		return
	}
	if !ok && len(f.flows) >= maxFlows {
		f.expireLocked(now)
		if len(f.flows) >= maxFlows {
			// Still full of live flows: forget an arbitrary one. Its
			// replies are then judged by the rules alone.
			for old := range f.flows {
				delete(f.flows, old)
				break
			}
		}
	}
	f.flows[k] = now
}

func (f *Filter) expireLocked(now int64) {
	for k, t := range f.flows {
		if now-t > int64(flowTTL) {
			delete(f.flows, k)
		}
	}
}

// Expire drops flows idle longer than the flow TTL. The owner calls it
// periodically.
func (f *Filter) Expire() {
	now := f.now().UnixNano()
	f.mu.Lock()
	f.expireLocked(now)
	f.mu.Unlock()
}

// Inbound judges a packet a peer sent to this node.
func (f *Filter) Inbound(b []byte) Verdict {
	v := f.inbound(b)
	if v != Accept {
		f.drops[v].Add(1)
	}
	return v
}

func (f *Filter) inbound(b []byte) Verdict {
	p, ok := Parse(b)
	if !ok {
		return DropMalformed
	}
	if lo := f.localOnly.Load(); lo != nil && slices.Contains(*lo, p.Dst) {
		return DropNoRule
	}
	if !p.Fragment && !p.ICMPEcho {
		// A reply to one of our flows: its key is ours reversed.
		k := flowKey{local: p.Dst, remote: p.Src, proto: p.Proto, localPort: p.DstPort, remotePort: p.SrcPort}
		f.mu.Lock()
		t, ok := f.flows[k]
		f.mu.Unlock()
		if ok && f.now().UnixNano()-t <= int64(flowTTL) {
			return Accept
		}
	}
	for _, r := range *f.rules.Load() {
		if !containsAddr(r.Srcs, p.Src) {
			continue
		}
		for _, d := range r.Dsts {
			if !d.Dst.Contains(p.Dst) {
				continue
			}
			switch {
			case p.Fragment, p.ICMPEcho:
				return Accept
			case p.Proto == ProtoTCP || p.Proto == ProtoUDP:
				if d.First <= p.DstPort && p.DstPort <= d.Last {
					return Accept
				}
			default:
				// Other protocols have no ports: only an any-port rule
				// admits them.
				if d.First == 0 && d.Last == 65535 {
					return Accept
				}
			}
		}
	}
	if p.Fragment {
		return DropFragment
	}
	return DropNoRule
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Parse extracts addresses, protocol and ports from an IPv4 or IPv6 packet.
// It never panics on short or garbage input; ok is false for anything it
// cannot read.
func Parse(b []byte) (p Packet, ok bool) {
	if len(b) < 1 {
		return p, false
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return p, false
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return p, false
		}
		p.Proto = b[9]
		p.Src = netip.AddrFrom4([4]byte(b[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
			p.Fragment = true
			return p, true
		}
		l4 = b[ihl:]
	case 6:
		if len(b) < 40 {
			return p, false
		}
		// Extension headers are not walked: a packet whose next header is
		// not TCP, UDP or ICMPv6 is judged as "other protocol".
		p.Proto = b[6]
		p.Src = netip.AddrFrom16([16]byte(b[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		l4 = b[40:]
	default:
		return p, false
	}
	switch p.Proto {
	case ProtoTCP, ProtoUDP:
		if len(l4) < 4 {
			return p, false
		}
		p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
		p.DstPort = binary.BigEndian.Uint16(l4[2:4])
	case ProtoICMP, ProtoICMPv6:
		if len(l4) < 8 {
			return p, false
		}
		typ := l4[0]
		echoReq, echoRep := typ == 8, typ == 0
		if p.Proto == ProtoICMPv6 {
			echoReq, echoRep = typ == 128, typ == 129
		}
		if echoReq || echoRep {
			id := binary.BigEndian.Uint16(l4[4:6])
			p.SrcPort, p.DstPort = id, id
		}
		// An echo reply is keyed like the request it answers, so the
		// flow table admits it; it needs no flag.
		p.ICMPEcho = echoReq
	}
	return p, true
}
