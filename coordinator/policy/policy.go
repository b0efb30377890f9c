// Package policy parses and compiles the coordinator's access policy, a
// Tailscale-style HuJSON document (JSON with comments and trailing commas):
//
//	{
//	  "groups":    {"group:ops": ["alice@example.com", "tag:admin"]},
//	  "tagOwners": {"tag:web": ["group:ops"], "tag:admin": []},
//	  "hosts":     {"db": "100.64.0.9", "lab": "198.18.0.0/15"},
//	  "acls": [
//	    {"action": "accept", "src": ["group:ops"], "dst": ["tag:web:22,80-81", "db:*"]},
//	  ],
//	  "tests": [
//	    {"src": "alice-laptop", "accept": ["tag:web:22"], "deny": ["db:5432"]},
//	  ],
//	}
//
// A selector (in src, in dst before the ":ports", in groups) is "*", a tag
// ("tag:x", which must be declared in tagOwners), a user ("alice@example.com",
// matching every node that user owns), a group ("group:x", whose members
// are users, node names and tags), a hosts alias, an IPv4 address or CIDR,
// or a node name. Rules only accept; anything no rule accepts is denied.
//
// A dst may also name a network behind a subnet router by CIDR or hosts
// alias ("198.19.50.0/24:80"), and "autogroup:internet" (what an exit node
// forwards: everything outside the mesh range). "*" as a dst covers routed
// networks too. autoApprovers approves routers' advertisements without an
// admin command:
//
//	"autoApprovers": {"routes": {"198.19.50.0/24": ["tag:router"]}, "exitNode": ["tag:exit"]}
//
// A routes entry covers its prefix and every sub-prefix of it.
//
// Compilation is edge-based: a Rule answers "does this node match my
// sources / my destinations", so the coordinator can find the nodes one
// change affects without comparing every pair of nodes.
package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/tailscale/hujson"
)

// MaxSize bounds a policy document. Large fleets' policies are tens of KiB.
const MaxSize = 1 << 20

// MaxExpanded bounds the selectors a policy compiles to, summed over every
// rule's sources and destinations once groups are expanded. Expansion
// multiplies: a 35 KB document naming a 1,000-member group 2,000 times
// compiled to two million selectors and took 2.8 GB. 65,536 is far above
// real policies (hundreds of rules over groups of tens) and costs a few MB.
const MaxExpanded = 1 << 16

// ErrTooLarge is wrapped (with ErrInvalid) by Parse for a policy over
// MaxSize or MaxExpanded.
var ErrTooLarge = errors.New("policy too large")

// ErrInvalid is wrapped by every parse or validation error.
var ErrInvalid = errors.New("invalid policy")

// ErrTestFailed is wrapped when a policy's own tests fail.
var ErrTestFailed = errors.New("policy test failed")

// Document is the policy as written.
type Document struct {
	Groups    map[string][]string `json:"groups,omitempty"`
	TagOwners map[string][]string `json:"tagOwners,omitempty"`
	Hosts     map[string]string   `json:"hosts,omitempty"`
	ACLs      []ACL               `json:"acls"`
	Tests     []Test              `json:"tests,omitempty"`
	// AutoApprovers approves advertised routes and exit nodes by selector.
	AutoApprovers *AutoApprovers `json:"autoApprovers,omitempty"`
}

// AutoApprovers names who may have routes approved without an admin
// command: Routes maps a prefix (covering its sub-prefixes) to selectors,
// ExitNode lists the selectors whose exit-node offer is approved.
type AutoApprovers struct {
	Routes   map[string][]string `json:"routes,omitempty"`
	ExitNode []string            `json:"exitNode,omitempty"`
}

// AutogroupInternet is the dst selector for what exit nodes forward.
const AutogroupInternet = "autogroup:internet"

// ACL is one accept rule.
type ACL struct {
	Action string   `json:"action"`
	Src    []string `json:"src"`
	Dst    []string `json:"dst"`
}

// Test states which destinations a source must and must not reach.
type Test struct {
	Src    string   `json:"src"`
	Accept []string `json:"accept,omitempty"`
	Deny   []string `json:"deny,omitempty"`
}

// Principal is what selectors match: a node, or the abstract party a test
// names.
type Principal struct {
	Name string
	Tags []string
	IP   netip.Addr // invalid when unknown
	User string     // the owning user; empty when none or unknown
}

// selector kinds.
type selKind uint8

const (
	selAll selKind = iota
	selTag
	selName
	selPrefix
	selUser
	// selInternet is autogroup:internet: no node, only exit traffic.
	selInternet
)

// Selector matches principals.
type Selector struct {
	kind   selKind
	tag    string
	name   string // node or user name
	prefix netip.Prefix
}

// Matches reports whether p is selected.
func (s Selector) Matches(p Principal) bool {
	switch s.kind {
	case selAll:
		return true
	case selTag:
		return slices.Contains(p.Tags, s.tag)
	case selName:
		return p.Name == s.name
	case selPrefix:
		return p.IP.IsValid() && s.prefix.Contains(p.IP)
	case selUser:
		return p.User != "" && p.User == s.name
	}
	return false
}

// Literal returns the prefix a selector names directly (IP, CIDR, host,
// or 0.0.0.0/0 for "*"), if any.
func (s Selector) Literal() (netip.Prefix, bool) {
	switch s.kind {
	case selAll:
		return netip.MustParsePrefix("0.0.0.0/0"), true
	case selPrefix:
		return s.prefix, true
	}
	return netip.Prefix{}, false
}

// PortRange is an inclusive range of ports.
type PortRange struct{ First, Last uint16 }

// Dst is one destination of a rule: nodes matching Sel, on Ports.
type Dst struct {
	Sel   Selector
	Ports []PortRange
}

// Rule is a compiled accept rule: sources and destinations with groups and
// hosts expanded.
type Rule struct {
	Src []Selector
	Dst []Dst
}

// SrcMatches reports whether p is among the rule's sources.
func (r *Rule) SrcMatches(p Principal) bool {
	for _, s := range r.Src {
		if s.Matches(p) {
			return true
		}
	}
	return false
}

// DstMatches reports whether p is among the rule's destinations and, if so,
// on which ports.
func (r *Rule) DstMatches(p Principal) ([]PortRange, bool) {
	var ports []PortRange
	ok := false
	for _, d := range r.Dst {
		if d.Sel.Matches(p) {
			ok = true
			ports = append(ports, d.Ports...)
		}
	}
	return ports, ok
}

// Policy is a compiled policy.
type Policy struct {
	Text  string // the document as given; empty for AllowAll
	Rules []Rule
	doc   Document
	hosts map[string]netip.Prefix
	// autoRoutes and autoExit are the compiled autoApprovers.
	autoRoutes []autoRoute
	autoExit   []Selector
}

type autoRoute struct {
	prefix netip.Prefix
	sels   []Selector
}

// AllowAll is what applies when no policy is set: every node may reach every
// other node on every port.
func AllowAll() *Policy {
	return &Policy{Rules: []Rule{{
		Src: []Selector{{kind: selAll}},
		Dst: []Dst{{Sel: Selector{kind: selAll}, Ports: []PortRange{{0, 65535}}}},
	}}}
}

// Parse parses and compiles a policy document. It does not run its tests
// (see Policy.RunTests).
func Parse(text []byte) (*Policy, error) {
	if len(text) > MaxSize {
		return nil, fmt.Errorf("%w: %w: larger than %d bytes", ErrInvalid, ErrTooLarge, MaxSize)
	}
	std, err := hujson.Standardize(bytes.Clone(text))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	dec := json.NewDecoder(bytes.NewReader(std))
	dec.DisallowUnknownFields()
	var doc Document
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, positioned(std, err))
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the policy object", ErrInvalid)
	}
	p := &Policy{Text: string(text), doc: doc, hosts: map[string]netip.Prefix{}}
	if err := p.compile(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return p, nil
}

func (p *Policy) compile() error {
	for name, val := range p.doc.Hosts {
		if !validName(name) {
			return fmt.Errorf("hosts: %q is not a valid host name", name)
		}
		pfx, err := parsePrefix(val)
		if err != nil {
			return fmt.Errorf("hosts: %s: %v", name, err)
		}
		p.hosts[name] = pfx
	}
	for tag, owners := range p.doc.TagOwners {
		if !validTag(tag) {
			return fmt.Errorf("tagOwners: %q is not a tag (want tag:name)", tag)
		}
		for _, o := range owners {
			if _, err := p.sourceSelectors(o); err != nil {
				return fmt.Errorf("tagOwners: %s: %v", tag, err)
			}
		}
	}
	for g, members := range p.doc.Groups {
		if !strings.HasPrefix(g, "group:") || !validName(g[len("group:"):]) {
			return fmt.Errorf("groups: %q is not a group name (want group:name)", g)
		}
		for _, m := range members {
			if strings.HasPrefix(m, "group:") {
				return fmt.Errorf("groups: %s: groups cannot contain groups (%s)", g, m)
			}
			if _, err := p.selectors(m, 0); err != nil {
				return fmt.Errorf("groups: %s: %v", g, err)
			}
		}
	}
	expanded := 0
	grow := func(i, n int) error {
		if expanded += n; expanded > MaxExpanded {
			return fmt.Errorf("%w: acls[%d]: groups expand to more than %d selectors in all; use fewer group references per rule or a tag", ErrTooLarge, i, MaxExpanded)
		}
		return nil
	}
	for i, a := range p.doc.ACLs {
		if a.Action != "accept" {
			return fmt.Errorf("acls[%d]: action %q: only \"accept\" is supported", i, a.Action)
		}
		if len(a.Src) == 0 || len(a.Dst) == 0 {
			return fmt.Errorf("acls[%d]: src and dst must not be empty", i)
		}
		var r Rule
		for _, s := range a.Src {
			sels, err := p.sourceSelectors(s)
			if err != nil {
				return fmt.Errorf("acls[%d]: src %q: %v", i, s, err)
			}
			if err := grow(i, len(sels)); err != nil {
				return err
			}
			r.Src = append(r.Src, sels...)
		}
		for _, d := range a.Dst {
			host, ports, err := splitHostPorts(d)
			if err != nil {
				return fmt.Errorf("acls[%d]: dst %q: %v", i, d, err)
			}
			sels, err := p.selectors(host, 0)
			if err != nil {
				return fmt.Errorf("acls[%d]: dst %q: %v", i, d, err)
			}
			if err := grow(i, len(sels)*(1+len(ports))); err != nil {
				return err
			}
			for _, s := range sels {
				r.Dst = append(r.Dst, Dst{Sel: s, Ports: ports})
			}
		}
		p.Rules = append(p.Rules, r)
	}
	if err := p.compileAutoApprovers(); err != nil {
		return err
	}
	for i, t := range p.doc.Tests {
		if _, err := p.principal(t.Src, nil); err != nil {
			return fmt.Errorf("tests[%d]: src %q: %v", i, t.Src, err)
		}
		for _, d := range append(slices.Clone(t.Accept), t.Deny...) {
			if _, _, err := p.testDst(d, nil); err != nil {
				return fmt.Errorf("tests[%d]: %q: %v", i, d, err)
			}
		}
	}
	return nil
}

// selectors expands one selector text (groups into their members).
func (p *Policy) selectors(s string, depth int) ([]Selector, error) {
	switch {
	case s == "*":
		return []Selector{{kind: selAll}}, nil
	case strings.HasPrefix(s, "tag:"):
		if !validTag(s) {
			return nil, fmt.Errorf("%q is not a valid tag", s)
		}
		if _, ok := p.doc.TagOwners[s]; !ok {
			return nil, fmt.Errorf("tag %s is not declared in tagOwners", s)
		}
		return []Selector{{kind: selTag, tag: s}}, nil
	case strings.HasPrefix(s, "group:"):
		members, ok := p.doc.Groups[s]
		if !ok {
			return nil, fmt.Errorf("group %s is not defined", s)
		}
		if depth > 0 {
			return nil, fmt.Errorf("groups cannot contain groups")
		}
		var out []Selector
		for _, m := range members {
			sels, err := p.selectors(m, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, sels...)
		}
		return out, nil
	case s == AutogroupInternet && depth == 0:
		return []Selector{{kind: selInternet}}, nil
	case strings.HasPrefix(s, "autogroup:"):
		return nil, fmt.Errorf("%s: the only autogroup is %s, and only as a dst", s, AutogroupInternet)
	}
	if pfx, ok := p.hosts[s]; ok {
		return []Selector{{kind: selPrefix, prefix: pfx}}, nil
	}
	if strings.Contains(s, "@") {
		if !ValidUser(s) {
			return nil, fmt.Errorf("%q is not a user name (want a login such as alice@example.com)", s)
		}
		return []Selector{{kind: selUser, name: s}}, nil
	}
	if strings.ContainsAny(s, "./:") {
		pfx, err := parsePrefix(s)
		if err != nil {
			return nil, err
		}
		return []Selector{{kind: selPrefix, prefix: pfx}}, nil
	}
	if !validName(s) {
		return nil, fmt.Errorf("%q is not a tag, group, host, IP, CIDR or node name", s)
	}
	return []Selector{{kind: selName, name: s}}, nil
}

// principal resolves a test's src or dst host. lookup resolves node names
// to the registered node (its tags and IP), when there is one.
func (p *Policy) principal(s string, lookup func(string) (Principal, bool)) (Principal, error) {
	switch {
	case s == "*" || strings.HasPrefix(s, "group:") || strings.HasPrefix(s, "autogroup:"):
		return Principal{}, fmt.Errorf("a test names one node, tag, host or IP, not %q", s)
	case strings.HasPrefix(s, "tag:"):
		if _, ok := p.doc.TagOwners[s]; !ok {
			return Principal{}, fmt.Errorf("tag %s is not declared in tagOwners", s)
		}
		return Principal{Tags: []string{s}}, nil
	}
	if pfx, ok := p.hosts[s]; ok {
		if !pfx.IsSingleIP() {
			return Principal{}, fmt.Errorf("host %s is a range, not one address", s)
		}
		return Principal{IP: pfx.Addr()}, nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		return Principal{IP: ip}, nil
	}
	if strings.Contains(s, "@") {
		if !ValidUser(s) {
			return Principal{}, fmt.Errorf("%q is not a user name", s)
		}
		return Principal{User: s}, nil
	}
	if !validName(s) {
		return Principal{}, fmt.Errorf("%q is not a tag, user, host, IP or node name", s)
	}
	if lookup != nil {
		if pr, ok := lookup(s); ok {
			return pr, nil
		}
	}
	return Principal{Name: s}, nil
}

func (p *Policy) testDst(s string, lookup func(string) (Principal, bool)) (Principal, uint16, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return Principal{}, 0, fmt.Errorf("want host:port")
	}
	port, err := strconv.ParseUint(s[i+1:], 10, 16)
	if err != nil {
		return Principal{}, 0, fmt.Errorf("port %q: want one port number", s[i+1:])
	}
	pr, err := p.principal(s[:i], lookup)
	return pr, uint16(port), err
}

// Allows reports whether some rule lets src reach dst on port.
func (p *Policy) Allows(src, dst Principal, port uint16) bool {
	for i := range p.Rules {
		r := &p.Rules[i]
		if !r.SrcMatches(src) {
			continue
		}
		ports, ok := r.DstMatches(dst)
		if !ok {
			continue
		}
		for _, pr := range ports {
			if port >= pr.First && port <= pr.Last {
				return true
			}
		}
	}
	return false
}

// RunTests checks the policy's tests; lookup resolves node names to
// registered nodes. It returns an error wrapping ErrTestFailed naming the
// first failing check.
func (p *Policy) RunTests(lookup func(string) (Principal, bool)) error {
	for i, t := range p.doc.Tests {
		src, err := p.principal(t.Src, lookup)
		if err != nil {
			return fmt.Errorf("%w: tests[%d]: src %q: %v", ErrTestFailed, i, t.Src, err)
		}
		for _, d := range t.Accept {
			dst, port, err := p.testDst(d, lookup)
			if err != nil {
				return fmt.Errorf("%w: tests[%d]: %q: %v", ErrTestFailed, i, d, err)
			}
			if !p.Allows(src, dst, port) {
				return fmt.Errorf("%w: tests[%d]: %q -> %q should be accepted but is denied", ErrTestFailed, i, t.Src, d)
			}
		}
		for _, d := range t.Deny {
			dst, port, err := p.testDst(d, lookup)
			if err != nil {
				return fmt.Errorf("%w: tests[%d]: %q: %v", ErrTestFailed, i, d, err)
			}
			if p.Allows(src, dst, port) {
				return fmt.Errorf("%w: tests[%d]: %q -> %q should be denied but is accepted", ErrTestFailed, i, t.Src, d)
			}
		}
	}
	return nil
}

// splitHostPorts splits "host:ports" at the last colon. ports is "*", a
// port, a range "a-b", or a comma-separated list of those.
func splitHostPorts(s string) (string, []PortRange, error) {
	i := strings.LastIndexByte(s, ':')
	if i <= 0 {
		return "", nil, fmt.Errorf("want host:ports (for example tag:web:443 or *:*)")
	}
	host, spec := s[:i], s[i+1:]
	if spec == "*" {
		return host, []PortRange{{0, 65535}}, nil
	}
	var out []PortRange
	for _, part := range strings.Split(spec, ",") {
		a, b, isRange := strings.Cut(part, "-")
		first, err := strconv.ParseUint(a, 10, 16)
		if err != nil {
			return "", nil, fmt.Errorf("port %q: want a number from 0 to 65535", a)
		}
		last := first
		if isRange {
			if last, err = strconv.ParseUint(b, 10, 16); err != nil {
				return "", nil, fmt.Errorf("port %q: want a number from 0 to 65535", b)
			}
		}
		if last < first {
			return "", nil, fmt.Errorf("port range %s is backwards", part)
		}
		out = append(out, PortRange{uint16(first), uint16(last)})
	}
	return host, out, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil || !p.Addr().Is4() {
			return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 CIDR", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 address", s)
	}
	return netip.PrefixFrom(a, 32), nil
}

// MaxUserLen bounds a user name, as email addresses are bounded (RFC 5321
// allows 254 characters in a path; 128 covers real logins).
const MaxUserLen = 128

// ValidUser reports whether s is a user name: LOCAL@DOMAIN, where LOCAL is
// lower-case letters, digits and . _ + -, and DOMAIN is empty (as in the
// built-in admin@) or dot-separated DNS labels.
func ValidUser(s string) bool {
	local, domain, ok := strings.Cut(s, "@")
	if !ok || local == "" || len(s) > MaxUserLen {
		return false
	}
	for i := 0; i < len(local); i++ {
		c := local[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '+' || c == '-') {
			return false
		}
	}
	if domain == "" {
		return true
	}
	for _, l := range strings.Split(domain, ".") {
		if !validName(l) {
			return false
		}
	}
	return true
}

func validTag(s string) bool { return strings.HasPrefix(s, "tag:") && validName(s[4:]) }

// validName reports whether s is a DNS label: 1-63 of a-z, 0-9 and '-', not
// starting or ending with '-'.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
