package dns

import (
	"fmt"
	"net/netip"
	"strings"

	mdns "github.com/miekg/dns"
)

// The name table: what the resolver answers itself. It is fed one change at
// a time (a peer added, removed or renamed; the settings; this node), never
// a whole map to diff, and indexes names and addresses both ways so every
// lookup is a map read.

// meshPrefix is the mesh's address range: the resolver is authoritative
// for PTR names of all of it.
var meshPrefix = netip.MustParsePrefix("100.64.0.0/10")

// Record is an extra record as the coordinator writes it: Type is "A",
// "AAAA" or "CNAME"; Value an address or a name.
type Record struct {
	Name, Type, Value string
}

// Settings are the mesh-wide DNS settings (netmap.DNS).
type Settings struct {
	// Domain is the mesh domain ("mesh.internal"); empty means MagicDNS
	// is off: no peer names and no PTR names are answered (reverse names
	// of the mesh range are NXDOMAIN), while extra records and
	// forwarding still work.
	Domain string
	// SearchDomains follow Domain in the search list.
	SearchDomains []string
	// Nameservers answer every name not answered locally or by a split
	// route; empty: the OS's previous resolvers (SetOSResolvers).
	Nameservers []netip.AddrPort
	// Split maps a DNS suffix to its nameservers (longest suffix wins).
	Split map[string][]netip.AddrPort
	// Extra are records answered as written.
	Extra []Record
}

type peerEntry struct {
	name  string // lower-case label
	addrs []netip.Addr
}

// table is guarded by Resolver.mu.
type table struct {
	domain  string   // FQDN, lower case, "" when none
	search  []string // FQDNs: domain first, then SearchDomains
	peers   map[string]peerEntry
	self    peerEntry
	byName  map[string]string // label -> peer id ("" for self)
	byAddr  map[netip.Addr]string
	extra   map[string][]mdns.RR // FQDN -> records
	split   []splitRoute         // longest suffix first
	global  []netip.AddrPort
	osAddrs []netip.AddrPort
}

type splitRoute struct {
	suffix string // FQDN
	ns     []netip.AddrPort
}

func newTable() table {
	return table{peers: map[string]peerEntry{}, byName: map[string]string{}, byAddr: map[netip.Addr]string{},
		extra: map[string][]mdns.RR{}}
}

// canonLabel returns name as a lower-case DNS label, or false.
func canonLabel(name string) (string, bool) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if !validLabel(name) {
		return "", false
	}
	return name, true
}

// validLabel: 1 to 63 of a-z, 0-9, '-' and '_' (service labels), not
// starting or ending with '-'.
func validLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// canonFQDN returns name as a lower-case FQDN of valid labels (253 bytes
// at most), or false.
func canonFQDN(name string) (string, bool) {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if name == "" || len(name) > 253 {
		return "", false
	}
	for _, l := range strings.Split(name, ".") {
		if !validLabel(l) {
			return "", false
		}
	}
	return name + ".", true
}

func (t *table) fqdnOf(label string) string {
	if t.domain == "" {
		return label + "."
	}
	return label + "." + t.domain
}

// upsert adds peer id or changes its name and addresses.
func (t *table) upsert(id, name string, addrs []netip.Addr) error {
	label, ok := canonLabel(name)
	if !ok {
		return fmt.Errorf("dns: peer name %q is not a DNS label", name)
	}
	t.remove(id)
	e := peerEntry{name: label, addrs: append([]netip.Addr(nil), addrs...)}
	t.peers[id] = e
	t.index(id, e)
	return nil
}

func (t *table) index(id string, e peerEntry) {
	if e.name == "" {
		return
	}
	t.byName[e.name] = id
	for _, a := range e.addrs {
		t.byAddr[a.Unmap()] = e.name
	}
}

func (t *table) unindex(id string, e peerEntry) {
	if t.byName[e.name] == id {
		delete(t.byName, e.name)
	}
	for _, a := range e.addrs {
		if t.byAddr[a.Unmap()] == e.name {
			delete(t.byAddr, a.Unmap())
		}
	}
}

// remove forgets peer id; unknown ids are ignored.
func (t *table) remove(id string) {
	if old, ok := t.peers[id]; ok {
		t.unindex(id, old)
		delete(t.peers, id)
		// A name or address another entry also had comes back to it.
		for oid, o := range t.peers {
			if o.name == old.name && t.byName[o.name] == "" {
				t.index(oid, o)
			}
		}
	}
}

const selfID = "\x00self"

func (t *table) setSelf(name string, addrs []netip.Addr) error {
	label, ok := canonLabel(name)
	if !ok {
		return fmt.Errorf("dns: own name %q is not a DNS label", name)
	}
	t.unindex(selfID, t.self)
	t.self = peerEntry{name: label, addrs: append([]netip.Addr(nil), addrs...)}
	t.index(selfID, t.self)
	return nil
}

func (t *table) entry(id string) peerEntry {
	if id == selfID {
		return t.self
	}
	return t.peers[id]
}

// setSettings replaces the settings. It validates everything first and
// changes nothing on error.
func (t *table) setSettings(s Settings) error {
	domain := ""
	if s.Domain != "" {
		d, ok := canonFQDN(s.Domain)
		if !ok {
			return fmt.Errorf("dns: domain %q is not a DNS name", s.Domain)
		}
		domain = d
	}
	var search []string
	if domain != "" {
		search = append(search, domain)
	}
	for _, sd := range s.SearchDomains {
		d, ok := canonFQDN(sd)
		if !ok {
			return fmt.Errorf("dns: search domain %q is not a DNS name", sd)
		}
		if d != domain {
			search = append(search, d)
		}
	}
	var split []splitRoute
	for suffix, ns := range s.Split {
		d, ok := canonFQDN(suffix)
		if !ok {
			return fmt.Errorf("dns: split suffix %q is not a DNS name", suffix)
		}
		if len(ns) == 0 {
			return fmt.Errorf("dns: split suffix %q has no nameservers", suffix)
		}
		split = append(split, splitRoute{suffix: d, ns: withPort53(ns)})
	}
	// Longest suffix first (by labels, then by length for a stable order).
	sortSplit(split)
	extra := map[string][]mdns.RR{}
	for _, r := range s.Extra {
		rr, err := extraRR(r)
		if err != nil {
			return err
		}
		name := rr.Header().Name
		extra[name] = append(extra[name], rr)
	}
	// Names in the table were stored as labels: nothing to re-index.
	t.domain, t.search, t.split, t.extra = domain, search, split, extra
	t.global = withPort53(s.Nameservers)
	return nil
}

func sortSplit(s []splitRoute) {
	less := func(a, b splitRoute) bool {
		la, lb := mdns.CountLabel(a.suffix), mdns.CountLabel(b.suffix)
		if la != lb {
			return la > lb
		}
		return a.suffix < b.suffix
	}
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && less(s[j], s[j-1]); j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func withPort53(ns []netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(ns))
	for _, a := range ns {
		if a.Port() == 0 {
			a = netip.AddrPortFrom(a.Addr(), 53)
		}
		out = append(out, a)
	}
	return out
}

// extraRR parses an extra record; the TTL is the positive one.
func extraRR(r Record) (mdns.RR, error) {
	name, ok := canonFQDN(r.Name)
	if !ok {
		return nil, fmt.Errorf("dns: extra record name %q is not a DNS name", r.Name)
	}
	hdr := mdns.RR_Header{Name: name, Class: mdns.ClassINET, Ttl: ttlPositive}
	switch strings.ToUpper(r.Type) {
	case "A":
		a, err := netip.ParseAddr(r.Value)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("dns: extra record %s: A value %q is not an IPv4 address", r.Name, r.Value)
		}
		hdr.Rrtype = mdns.TypeA
		return &mdns.A{Hdr: hdr, A: a.AsSlice()}, nil
	case "AAAA":
		a, err := netip.ParseAddr(r.Value)
		if err != nil || !a.Is6() || a.Is4In6() {
			return nil, fmt.Errorf("dns: extra record %s: AAAA value %q is not an IPv6 address", r.Name, r.Value)
		}
		hdr.Rrtype = mdns.TypeAAAA
		return &mdns.AAAA{Hdr: hdr, AAAA: a.AsSlice()}, nil
	case "CNAME":
		target, ok := canonFQDN(r.Value)
		if !ok {
			return nil, fmt.Errorf("dns: extra record %s: CNAME value %q is not a DNS name", r.Name, r.Value)
		}
		hdr.Rrtype = mdns.TypeCNAME
		return &mdns.CNAME{Hdr: hdr, Target: target}, nil
	}
	return nil, fmt.Errorf("dns: extra record %s: type %q is not A, AAAA or CNAME", r.Name, r.Type)
}

// inDomain reports whether fqdn is the mesh domain or under it.
func (t *table) inDomain(fqdn string) bool {
	return t.domain != "" && mdns.IsSubDomain(t.domain, fqdn)
}

// peerLabel returns the peer (or self) label that fqdn names: "b." or
// "b.<domain>".
func (t *table) peerLabel(fqdn string) (peerEntry, bool) {
	if t.domain == "" {
		return peerEntry{}, false // MagicDNS is off: no peer names
	}
	labels := mdns.SplitDomainName(fqdn)
	var label string
	switch {
	case len(labels) == 1:
		label = labels[0]
	case t.domain != "" && len(labels) == mdns.CountLabel(t.domain)+1 && mdns.IsSubDomain(t.domain, fqdn):
		label = labels[0]
	default:
		return peerEntry{}, false
	}
	id, ok := t.byName[label]
	if !ok {
		return peerEntry{}, false
	}
	return t.entry(id), true
}

// route returns the nameservers for a name that is not answered locally,
// and which source they are.
func (t *table) route(fqdn string) ([]netip.AddrPort, string) {
	for _, r := range t.split {
		if mdns.IsSubDomain(r.suffix, fqdn) {
			return r.ns, SourceSplit
		}
	}
	if len(t.global) > 0 {
		return t.global, SourceGlobal
	}
	if len(t.osAddrs) > 0 {
		return t.osAddrs, SourceOS
	}
	return nil, SourceNone
}

// ptrAddr returns the IPv4 address a reverse name under in-addr.arpa
// names, if it is one.
func ptrAddr(fqdn string) (netip.Addr, bool) {
	const suffix = ".in-addr.arpa."
	if !strings.HasSuffix(fqdn, suffix) {
		return netip.Addr{}, false
	}
	parts := strings.Split(strings.TrimSuffix(fqdn, suffix), ".")
	if len(parts) != 4 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(parts[3] + "." + parts[2] + "." + parts[1] + "." + parts[0])
	if err != nil || !a.Is4() {
		return netip.Addr{}, false
	}
	return a, true
}

// inMeshReverse reports whether fqdn is a reverse name inside 100.64.0.0/10
// (full or partial: 64.100.in-addr.arpa. and below), and the zone apex for
// its SOA.
func inMeshReverse(fqdn string) (string, bool) {
	const suffix = ".100.in-addr.arpa."
	if !strings.HasSuffix(fqdn, suffix) {
		return "", false
	}
	parts := strings.Split(strings.TrimSuffix(fqdn, suffix), ".")
	second := parts[len(parts)-1]
	var n int
	if _, err := fmt.Sscanf(second, "%d", &n); err != nil || fmt.Sprint(n) != second || n < 64 || n > 127 {
		return "", false
	}
	return second + suffix[1:], true
}
