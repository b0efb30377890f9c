package coordinator

import (
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/policy"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// The in-memory model and how a change fans out.
//
// state holds every node, the compiled policy and, per policy rule, which
// nodes match its sources and its destinations. Visibility is symmetric:
// node A sees node B when some rule has A in its sources and B in its
// destinations, or the other way round. So the nodes one change to node X
// affects are exactly the nodes X sees, found by walking only the rules X
// matches (visibleFrom) — never by comparing all pairs of nodes.
//
// A change (endpoint, online, added, removed) updates the node under mu,
// drops its cached wire encoding, and marks each affected node's session
// (markPeer). Sessions coalesce marks and their writer goroutines encode and
// send one delta each; the changed node is encoded once and the bytes are
// shared by every stream.

// nodeState is one node in memory. Fields are guarded by state.mu, except
// wire, which readers holding state.mu.RLock may fill.
type nodeState struct {
	// writeMu orders this node's store writes with its in-memory changes:
	// taken before state.mu, held across the store write.
	writeMu  sync.Mutex
	rec      store.Node
	id       netmap.NodeID
	nodeKey  key.NodePublic
	discoKey key.DiscoPublic
	// shared opens this node's proofs of possession.
	shared key.SharedKey
	// srcRules and dstRules are the indexes of the policy rules whose
	// sources (destinations) match this node.
	srcRules, dstRules []int
	sess               *session // open stream on this replica, nil when none
	// remote is the replica another node streams from, when it streams
	// from another one (replica.go); remoteSeen is when that was heard.
	remote      string
	remoteSeen  time.Time
	expiredSent bool // peers were told this node expired
	// wire caches this node's JSON encoding as a netmap.Node; nil when stale.
	wire atomic.Pointer[[]byte]
	// subnets and exit are the routes in effect (advertised and approved
	// by an admin or the policy), set by indexLocked; exit is 0.0.0.0/0.
	subnets []netip.Prefix
	exit    bool
	// routesDirty: indexLocked changed subnets or exit (a policy change
	// did); installPolicy sends the node its own record again.
	routesDirty bool
}

func (n *nodeState) expired(now time.Time) bool {
	return !n.rec.KeyExpiry.IsZero() && !now.Before(n.rec.KeyExpiry)
}

// online reports whether the node streams from this replica or another.
func (n *nodeState) online() bool { return n.sess != nil || n.remote != "" }

func (n *nodeState) principal() policy.Principal {
	return policy.Principal{Name: n.rec.Name, Tags: n.rec.Tags, IP: n.rec.IP, User: n.rec.User}
}

func (n *nodeState) prefix() netip.Prefix { return netip.PrefixFrom(n.rec.IP, 32) }

// toNetmap returns the node's wire form.
func (n *nodeState) toNetmap() netmap.Node {
	pfx := []netip.Prefix{n.prefix()}
	return netmap.Node{
		ID:         n.id,
		Name:       n.rec.Name,
		Addresses:  pfx,
		AllowedIPs: pfx,
		NodeKey:    n.nodeKey,
		DiscoKey:   n.discoKey,
		Endpoints:  n.rec.Endpoints,
		HomeRelay:  n.rec.HomeRelay,
		Online:     n.online(),
		LastSeen:   n.rec.LastSeen,
		KeyExpiry:  n.rec.KeyExpiry,
		Tags:       n.rec.Tags,
		Hostname:   n.rec.Hostname,
		OS:         n.rec.OS,
		Ephemeral:  n.rec.Ephemeral,
		// Self sees all its routes in effect; peers see only the part
		// they may use (peerBytesLocked).
		Routes:         n.subnets,
		ExitNodeOption: n.exit,
	}
}

// wireBytes returns the cached encoding, making it if needed. The caller
// holds state.mu (read or write).
func (n *nodeState) wireBytes() []byte {
	if p := n.wire.Load(); p != nil {
		return *p
	}
	b, _ := json.Marshal(n.toNetmap())
	n.wire.Store(&b)
	return b
}

// ruleState is a compiled rule with its member sets. all* flags stand for
// "every node" so a wildcard rule costs no per-node set.
type ruleState struct {
	rule         policy.Rule
	srcAll       bool
	dstAll       bool
	src          map[netmap.NodeID]*nodeState
	dst          map[netmap.NodeID]*nodeState
	srcLiterals  []netip.Prefix
	srcIPsCached []netip.Prefix // nil: recompute
}

// state is the coordinator's working set.
type state struct {
	mu     sync.RWMutex
	nodes  map[netmap.NodeID]*nodeState
	byKey  map[key.NodePublic]*nodeState
	byName map[string]*nodeState
	// usedIPs maps each address in use to its node; 0 marks an address
	// reserved by a registration in flight.
	usedIPs map[netip.Addr]netmap.NodeID
	// reservedNames are names held by registrations in flight.
	reservedNames map[string]struct{}
	// takenNames are names another replica committed that this one has
	// not heard of yet (usedIPs marks their addresses takenElsewhereID).
	takenNames map[string]struct{}
	ipCursor   netip.Addr
	policy     *policy.Policy
	rules      []*ruleState
	// visits counts nodes examined by visibleFrom, so tests can check that
	// a change costs work proportional to the nodes it affects.
	visits atomic.Int64
}

func newState() *state {
	return &state{
		nodes:         map[netmap.NodeID]*nodeState{},
		byKey:         map[key.NodePublic]*nodeState{},
		byName:        map[string]*nodeState{},
		usedIPs:       map[netip.Addr]netmap.NodeID{},
		reservedNames: map[string]struct{}{},
		takenNames:    map[string]struct{}{},
		policy:        policy.AllowAll(),
	}
}

// setPolicyLocked installs p and rebuilds every rule's member sets: O(nodes ×
// rules), paid once per policy change. The caller holds mu.
func (st *state) setPolicyLocked(p *policy.Policy) {
	st.policy = p
	st.rules = st.rules[:0]
	for _, r := range p.Rules {
		rs := &ruleState{rule: r, src: map[netmap.NodeID]*nodeState{}, dst: map[netmap.NodeID]*nodeState{}}
		for _, s := range r.Src {
			if l, ok := s.Literal(); ok {
				rs.srcLiterals = append(rs.srcLiterals, l)
				if l.Bits() == 0 {
					rs.srcAll = true
				}
			}
		}
		for _, d := range r.Dst {
			if l, ok := d.Sel.Literal(); ok && l.Bits() == 0 {
				rs.dstAll = true
			}
		}
		st.rules = append(st.rules, rs)
	}
	for _, n := range st.nodes {
		st.indexLocked(n)
	}
}

// indexLocked computes which rules n matches and adds it to their sets.
func (st *state) indexLocked(n *nodeState) {
	n.srcRules, n.dstRules = n.srcRules[:0], n.dstRules[:0]
	subnets, exit := effectiveRoutes(&n.rec, st.policy)
	if exit != n.exit || !slices.Equal(subnets, n.subnets) {
		n.subnets, n.exit, n.routesDirty = subnets, exit, true
		n.wire.Store(nil)
	}
	p := n.principal()
	for i, rs := range st.rules {
		if rs.rule.SrcMatches(p) {
			n.srcRules = append(n.srcRules, i)
			if !rs.srcAll {
				rs.src[n.id] = n
			}
			rs.srcIPsCached = nil
		}
		if _, ok := rs.rule.DstMatches(p); ok || n.routesTo(&rs.rule) {
			n.dstRules = append(n.dstRules, i)
			if !rs.dstAll {
				rs.dst[n.id] = n
			}
		}
	}
}

func (st *state) unindexLocked(n *nodeState) {
	for _, i := range n.srcRules {
		delete(st.rules[i].src, n.id)
		st.rules[i].srcIPsCached = nil
	}
	for _, i := range n.dstRules {
		delete(st.rules[i].dst, n.id)
	}
}

// addLocked inserts a node.
func (st *state) addLocked(n *nodeState) {
	st.nodes[n.id] = n
	st.byKey[n.nodeKey] = n
	st.byName[n.rec.Name] = n
	st.usedIPs[n.rec.IP] = n.id
	delete(st.takenNames, n.rec.Name)
	st.indexLocked(n)
}

// removeLocked deletes a node.
func (st *state) removeLocked(n *nodeState) {
	st.unindexLocked(n)
	delete(st.nodes, n.id)
	delete(st.byKey, n.nodeKey)
	delete(st.byName, n.rec.Name)
	delete(st.usedIPs, n.rec.IP)
}

// visibleFrom calls fn once for every live node that x sees (and that sees
// x), x itself excluded. Its cost is the sum of the member sets of the rules
// x matches, or one pass over all nodes when one of them is a wildcard.
func (st *state) visibleFrom(x *nodeState, now time.Time, fn func(*nodeState)) {
	all := false
	for _, i := range x.srcRules {
		if st.rules[i].dstAll {
			all = true
		}
	}
	for _, i := range x.dstRules {
		if st.rules[i].srcAll {
			all = true
		}
	}
	if all {
		for _, n := range st.nodes {
			if n != x && !n.expired(now) {
				fn(n)
			}
		}
		st.visits.Add(int64(len(st.nodes)))
		return
	}
	visited := 0
	defer func() { st.visits.Add(int64(visited)) }()
	var seen map[netmap.NodeID]struct{}
	if len(x.srcRules)+len(x.dstRules) > 1 {
		seen = map[netmap.NodeID]struct{}{}
	}
	visit := func(set map[netmap.NodeID]*nodeState) {
		for id, n := range set {
			visited++
			if n == x || n.expired(now) {
				continue
			}
			if seen != nil {
				if _, ok := seen[id]; ok {
					continue
				}
				seen[id] = struct{}{}
			}
			fn(n)
		}
	}
	for _, i := range x.srcRules {
		visit(st.rules[i].dst)
	}
	for _, i := range x.dstRules {
		visit(st.rules[i].src)
	}
}

// filterLocked compiles y's inbound packet filter: one rule per policy rule
// whose destinations match y.
func (st *state) filterLocked(y *nodeState) *netmap.Filter {
	f := &netmap.Filter{Rules: []netmap.FilterRule{}}
	p := y.principal()
	for _, i := range y.dstRules {
		rs := st.rules[i]
		ports, _ := rs.rule.DstMatches(p)
		fr := netmap.FilterRule{SrcIPs: st.srcIPsLocked(rs)}
		for _, pr := range ports {
			fr.DstPorts = append(fr.DstPorts, netmap.PortRange{Dst: y.prefix(), First: pr.First, Last: pr.Last})
		}
		// A router also accepts, to forward, what the rule allows to the
		// networks it routes.
		for _, rd := range rs.rule.RoutedDsts(y.subnets, y.exit) {
			for _, pr := range rd.Ports {
				fr.DstPorts = append(fr.DstPorts, netmap.PortRange{Dst: rd.Prefix, First: pr.First, Last: pr.Last})
			}
		}
		if len(fr.DstPorts) == 0 {
			continue
		}
		f.Rules = append(f.Rules, fr)
	}
	return f
}

// srcIPsLocked returns the source prefixes of a rule: its literal prefixes
// and the address of every node its other selectors match. The result is
// cached until the rule's source set changes.
func (st *state) srcIPsLocked(rs *ruleState) []netip.Prefix {
	if rs.srcAll {
		return []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	}
	if rs.srcIPsCached != nil {
		return rs.srcIPsCached
	}
	out := slices.Clone(rs.srcLiterals)
	for _, n := range rs.src {
		covered := false
		for _, l := range rs.srcLiterals {
			if l.Contains(n.rec.IP) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, n.prefix())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	if out == nil {
		out = []netip.Prefix{}
	}
	rs.srcIPsCached = out
	return out
}

// lookupPrincipal resolves node names for policy tests.
func (st *state) lookupPrincipalLocked(name string) (policy.Principal, bool) {
	n, ok := st.byName[name]
	if !ok {
		return policy.Principal{}, false
	}
	return n.principal(), true
}

// changedLocked drops n's cached encoding and tells every node that sees n.
// filter also marks their packet filters for recompilation (n joined or
// left a rule's sources).
func (st *state) changedLocked(n *nodeState, now time.Time, filter bool) {
	n.wire.Store(nil)
	st.visibleFrom(n, now, func(o *nodeState) {
		if o.sess != nil {
			o.sess.markPeer(n.id, filter, now)
		}
	})
	if n.sess != nil {
		n.sess.markSelf(now)
	}
}

// onlineChangedLocked tells every node that sees n that n went online or
// offline, as a patch rather than a whole record.
func (st *state) onlineChangedLocked(n *nodeState, now time.Time) {
	n.wire.Store(nil)
	st.visibleFrom(n, now, func(o *nodeState) {
		if o.sess != nil {
			o.sess.markOnline(n.id, now)
		}
	})
}

// removedLocked tells every node that saw n that it is gone. Call it before
// removing n from the state (visibility needs n's rule sets).
func (st *state) removedLocked(n *nodeState, now time.Time) {
	st.visibleFrom(n, now, func(o *nodeState) {
		if o.sess != nil {
			o.sess.markRemoved(n.id, now)
		}
	})
}

// nextIPLocked returns the next free mesh address after the cursor,
// wrapping around 100.64.0.0/10. Addresses of existing nodes are never
// handed out, and because the cursor only moves forward, a deleted node's
// address is reused only after the whole range has been used.
func (st *state) nextIPLocked() (netip.Addr, bool) {
	cur := st.ipCursor
	if !cur.IsValid() || !meshPrefix.Contains(cur) {
		cur = meshPrefix.Addr()
	}
	for i := 0; i < 1<<22; i++ {
		cur = cur.Next()
		if !meshPrefix.Contains(cur) {
			cur = meshPrefix.Addr().Next()
		}
		b := cur.As4()
		if b[3] == 0 || b[3] == 255 || cur == reservedIP {
			continue
		}
		if _, used := st.usedIPs[cur]; !used {
			return cur, true
		}
	}
	return netip.Addr{}, false
}

// cursorJump bounds the random jump of the address cursor after another
// replica took the address this one picked: two replicas registering at
// once would otherwise walk the same addresses in step and collide on
// every one. A few thousand of the /10's four million addresses part them
// for a long while.
const cursorJump = 4096

// jumpCursorLocked moves the address cursor forward by a random amount.
func (st *state) jumpCursorLocked() {
	cur := st.ipCursor
	if !cur.IsValid() || !meshPrefix.Contains(cur) {
		cur = meshPrefix.Addr()
	}
	b := cur.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += 256 + rand.Uint32N(cursorJump-256)
	next := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	if !meshPrefix.Contains(next) {
		next = meshPrefix.Addr()
	}
	st.ipCursor = next
}

// takenElsewhereID marks in usedIPs an address another replica took.
const takenElsewhereID netmap.NodeID = -1

// meshPrefix is the range mesh addresses come from (netmap.MeshPrefix).
var meshPrefix = netmap.MeshPrefix

// reservedIP is kept free for a future in-mesh DNS resolver, as Tailscale
// keeps 100.100.100.100.
var reservedIP = netip.MustParseAddr("100.100.100.100")
