// Package dnsconf parses and checks the mesh's DNS settings as an operator
// writes them (`coordinator dns set FILE`, HuJSON) and turns them into the
// netmap.DNS every node receives. Everything is checked before anything is
// accepted, and the first problem is reported as one line naming the field:
//
//	nameservers[1]: "198.18.0.300" is not an IP address
//	split["corp.test"]: no nameservers
//
// Names are DNS names of letters, digits and hyphens (no label starting or
// ending with a hyphen), each label at most 63 bytes, the whole name at most
// 253; they are stored lower case without a trailing dot. The mesh domain is
// also checked against the coordinator's own host name (CheckCoordinator):
// a node's resolver answers every name under the mesh domain itself, so the
// two must not overlap, or nodes could no longer find the coordinator.
package dnsconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strings"

	"github.com/tailscale/hujson"
	"github.com/wiremesh/wiremesh/netmap"
)

// Limits on one document. Each bounds what every node receives in its full
// map and holds in its resolver.
const (
	// MaxFileSize bounds a settings document: the largest allowed
	// settings (every limit below reached) fit in well under it.
	MaxFileSize = 256 << 10
	// MaxNameservers bounds the global nameservers and those of one split
	// entry: a node tries them in order, and past a handful more only
	// lengthen the wait for an answer that will not come.
	MaxNameservers = 8
	// MaxSearchDomains bounds the search list after the mesh domain: with
	// it, six, the classic resolv.conf limit (glibc before 2.26).
	MaxSearchDomains = 5
	// MaxSplit bounds the split-DNS suffixes: enough for every internal
	// zone of a large company.
	MaxSplit = 256
	// MaxExtraRecords bounds the extra records: at about 80 bytes each,
	// 1,000 add 80 KiB to every full map.
	MaxExtraRecords = 1000
	// MaxLabelLen and MaxNameLen are DNS's own limits (RFC 1035).
	MaxLabelLen = 63
	MaxNameLen  = 253
)

// ResolverAddr is the address nodes answer DNS on; a nameserver there
// would make every node forward to itself.
var ResolverAddr = netip.MustParseAddr("100.100.100.100")

// ErrInvalid is wrapped by every error of Parse, Check and CheckCoordinator.
var ErrInvalid = errors.New("invalid DNS settings")

// FieldError is a problem with one field, named as a path into the
// document: "domain", "nameservers[1]", `split["corp.test"][0]`,
// "extra_records[2].value". Field is empty for the document as a whole.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

// Is makes errors.Is(err, ErrInvalid) hold.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

func fieldErr(field, format string, a ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, a...)}
}

// Document is the settings file, as `coordinator dns get` prints it and
// `coordinator dns set` reads it (comments and trailing commas allowed).
// MagicDNS omitted means true.
type Document struct {
	MagicDNS      *bool               `json:"magic_dns"`
	Domain        string              `json:"domain"`
	Nameservers   []string            `json:"nameservers"`
	SearchDomains []string            `json:"search_domains"`
	Split         map[string][]string `json:"split"`
	ExtraRecords  []Record            `json:"extra_records"`
}

// Record is one extra record: Type "A" (Value an IPv4 address), "AAAA"
// (IPv6) or "CNAME" (a name). Name may be inside the mesh domain or not.
type Record struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Value string `json:"value"`
}

// Parse reads a HuJSON settings document and checks it (see Check). It
// does not know the coordinator's host: see CheckCoordinator.
func Parse(text []byte) (netmap.DNS, error) {
	if len(text) > MaxFileSize {
		return netmap.DNS{}, fieldErr("", "the settings are larger than %d bytes", MaxFileSize)
	}
	std, err := hujson.Standardize(bytes.Clone(text))
	if err != nil {
		return netmap.DNS{}, fieldErr("", "not HuJSON: %s", oneLine(err.Error()))
	}
	dec := json.NewDecoder(bytes.NewReader(std))
	dec.DisallowUnknownFields()
	var doc Document
	if err := dec.Decode(&doc); err != nil {
		return netmap.DNS{}, decodeErr(err)
	}
	return doc.settings()
}

// decodeErr turns a JSON decoding error into a FieldError.
func decodeErr(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := te.Field
		if field == "" {
			return fieldErr("", "want a JSON object, got %s", te.Value)
		}
		if field == "split" && te.Type.String() == "[]string" {
			return fieldErr(field, "each suffix needs a list of nameserver addresses, got %s", te.Value)
		}
		return fieldErr(field, "want %s, got %s", jsonKind(te.Type.String()), te.Value)
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if f, ok := strings.CutPrefix(msg, "unknown field "); ok {
		return fieldErr(strings.Trim(f, `"`), "unknown field (known: magic_dns, domain, nameservers, search_domains, split, extra_records; a record has name, type, value)")
	}
	return fieldErr("", "not JSON: %s", oneLine(msg))
}

func jsonKind(goType string) string {
	switch {
	case goType == "string":
		return "a string"
	case goType == "bool" || goType == "*bool":
		return "true or false"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "map["):
		return "an object"
	}
	return "an object"
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Check checks d as Parse checks a document and returns it in canonical
// form (names lower case without a trailing dot, record types upper case).
// It is what a program that builds settings itself (the web console)
// calls.
func Check(d netmap.DNS) (netmap.DNS, error) {
	return FromNetmap(d).settings()
}

// FromNetmap returns d as a Document (what `coordinator dns get` prints).
func FromNetmap(d netmap.DNS) Document {
	magic := d.MagicDNS
	doc := Document{MagicDNS: &magic, Domain: d.Domain, Nameservers: []string{}, SearchDomains: []string{},
		Split: map[string][]string{}, ExtraRecords: []Record{}}
	for _, a := range d.Nameservers {
		doc.Nameservers = append(doc.Nameservers, a.String())
	}
	doc.SearchDomains = append(doc.SearchDomains, d.SearchDomains...)
	for k, ns := range d.Split {
		l := []string{}
		for _, a := range ns {
			l = append(l, a.String())
		}
		doc.Split[k] = l
	}
	for _, r := range d.ExtraRecords {
		doc.ExtraRecords = append(doc.ExtraRecords, Record(r))
	}
	return doc
}

// Format returns d as an indented JSON document with every field present,
// ready to edit and pass back to Parse.
func Format(d netmap.DNS) []byte {
	b, err := json.MarshalIndent(FromNetmap(d), "", "  ")
	if err != nil {
		panic(err) // strings, lists and maps of strings always encode
	}
	return append(b, '\n')
}

// settings checks doc and converts it.
func (doc Document) settings() (netmap.DNS, error) {
	d := netmap.DNS{MagicDNS: doc.MagicDNS == nil || *doc.MagicDNS}
	if doc.Domain != "" {
		dom, err := canonName("domain", doc.Domain)
		if err != nil {
			return netmap.DNS{}, err
		}
		if dom == "arpa" || strings.HasSuffix(dom, ".arpa") {
			return netmap.DNS{}, fieldErr("domain", "%q is in the reverse-lookup tree (arpa), which nodes answer for mesh addresses", doc.Domain)
		}
		d.Domain = dom
	} else if d.MagicDNS {
		return netmap.DNS{}, fieldErr("domain", "required when magic_dns is true (for example mesh.internal)")
	}

	var err error
	if d.Nameservers, err = nameservers("nameservers", doc.Nameservers); err != nil {
		return netmap.DNS{}, err
	}

	if len(doc.SearchDomains) > MaxSearchDomains {
		return netmap.DNS{}, fieldErr("search_domains", "%d domains, at most %d allowed (the mesh domain comes first)", len(doc.SearchDomains), MaxSearchDomains)
	}
	for i, s := range doc.SearchDomains {
		field := fmt.Sprintf("search_domains[%d]", i)
		n, err := canonName(field, s)
		if err != nil {
			return netmap.DNS{}, err
		}
		if slices.Contains(d.SearchDomains, n) || n == d.Domain {
			return netmap.DNS{}, fieldErr(field, "%s is already in the search list", n)
		}
		d.SearchDomains = append(d.SearchDomains, n)
	}

	if len(doc.Split) > MaxSplit {
		return netmap.DNS{}, fieldErr("split", "%d suffixes, at most %d allowed", len(doc.Split), MaxSplit)
	}
	keys := make([]string, 0, len(doc.Split))
	for k := range doc.Split {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		field := fmt.Sprintf("split[%q]", k)
		n, err := canonName(field, k)
		if err != nil {
			return netmap.DNS{}, err
		}
		if d.MagicDNS && inDomain(n, d.Domain) {
			return netmap.DNS{}, fieldErr(field, "inside the mesh domain %s, whose names nodes answer themselves", d.Domain)
		}
		if _, dup := d.Split[n]; dup {
			return netmap.DNS{}, fieldErr(field, "%s is listed twice", n)
		}
		if len(doc.Split[k]) == 0 {
			return netmap.DNS{}, fieldErr(field, "no nameservers")
		}
		ns, err := nameservers(field, doc.Split[k])
		if err != nil {
			return netmap.DNS{}, err
		}
		if d.Split == nil {
			d.Split = map[string][]netip.Addr{}
		}
		d.Split[n] = ns
	}

	if len(doc.ExtraRecords) > MaxExtraRecords {
		return netmap.DNS{}, fieldErr("extra_records", "%d records, at most %d allowed", len(doc.ExtraRecords), MaxExtraRecords)
	}
	types := map[string][]string{} // name -> types so far
	for i, r := range doc.ExtraRecords {
		rec, err := record(fmt.Sprintf("extra_records[%d]", i), r, types)
		if err != nil {
			return netmap.DNS{}, err
		}
		d.ExtraRecords = append(d.ExtraRecords, rec)
	}
	return d, nil
}

func record(field string, r Record, types map[string][]string) (netmap.DNSRecord, error) {
	name, err := canonName(field+".name", r.Name)
	if err != nil {
		return netmap.DNSRecord{}, err
	}
	typ := strings.ToUpper(r.Type)
	out := netmap.DNSRecord{Name: name, Type: typ}
	switch typ {
	case "A", "AAAA":
		a, err := netip.ParseAddr(r.Value)
		if err != nil || a.Zone() != "" {
			return out, fieldErr(field+".value", "%q is not an IP address", r.Value)
		}
		if typ == "A" && !a.Is4() {
			return out, fieldErr(field+".value", "%q is not an IPv4 address (an A record)", r.Value)
		}
		if typ == "AAAA" && (!a.Is6() || a.Is4In6()) {
			return out, fieldErr(field+".value", "%q is not an IPv6 address (an AAAA record)", r.Value)
		}
		out.Value = a.String()
	case "CNAME":
		target, err := canonName(field+".value", r.Value)
		if err != nil {
			return out, err
		}
		if target == name {
			return out, fieldErr(field+".value", "a CNAME cannot point at its own name")
		}
		out.Value = target
	case "":
		return out, fieldErr(field+".type", "required: A, AAAA or CNAME")
	default:
		return out, fieldErr(field+".type", "%q is not A, AAAA or CNAME", r.Type)
	}
	have := types[name]
	cname := slices.ContainsFunc(have, func(h string) bool { return strings.HasPrefix(h, "CNAME ") })
	if len(have) > 0 && (typ == "CNAME" || cname) {
		return out, fieldErr(field, "%s has a CNAME and another record; a CNAME must be the name's only record", name)
	}
	if slices.Contains(have, typ+" "+out.Value) {
		return out, fieldErr(field, "the same record is listed twice")
	}
	types[name] = append(have, typ+" "+out.Value)
	return out, nil
}

// nameservers parses a list of nameserver addresses: an IP address, or
// ip:53 / [ip6]:53. Nodes ask nameservers on port 53 (the netmap carries
// addresses only), so another port is refused rather than ignored.
func nameservers(field string, in []string) ([]netip.Addr, error) {
	if len(in) > MaxNameservers {
		return nil, fieldErr(field, "%d nameservers, at most %d allowed", len(in), MaxNameservers)
	}
	var out []netip.Addr
	for i, s := range in {
		f := fmt.Sprintf("%s[%d]", field, i)
		a, err := netip.ParseAddr(s)
		if err != nil {
			ap, perr := netip.ParseAddrPort(s)
			if perr != nil {
				return nil, fieldErr(f, "%q is not an IP address (or ip:53)", s)
			}
			if ap.Port() != 53 {
				return nil, fieldErr(f, "%q: port %d; nodes ask nameservers on port 53 only", s, ap.Port())
			}
			a = ap.Addr()
		}
		a = a.Unmap()
		switch {
		case a.Zone() != "":
			return nil, fieldErr(f, "%q has a zone; a nameserver address must work on every node", s)
		case a.IsUnspecified(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return nil, fieldErr(f, "%q is not a unicast address", s)
		case a == ResolverAddr:
			return nil, fieldErr(f, "%s is the node's own resolver; nodes would ask themselves", a)
		case slices.Contains(out, a):
			return nil, fieldErr(f, "%s is listed twice", a)
		}
		out = append(out, a)
	}
	return out, nil
}

// canonName checks a DNS name and returns it lower case without the
// trailing dot.
func canonName(field, s string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(s, "."))
	if n == "" {
		return "", fieldErr(field, "%q is not a DNS name (empty)", s)
	}
	if len(n) > MaxNameLen {
		return "", fieldErr(field, "name of %d bytes; at most %d allowed", len(n), MaxNameLen)
	}
	for l := range strings.SplitSeq(n, ".") {
		if err := checkLabel(l); err != "" {
			return "", fieldErr(field, "%q is not a DNS name: %s", s, err)
		}
	}
	return n, nil
}

// checkLabel returns what is wrong with a label, or "".
func checkLabel(l string) string {
	switch {
	case l == "":
		return "empty label"
	case len(l) > MaxLabelLen:
		return fmt.Sprintf("label of %d bytes; at most %d allowed", len(l), MaxLabelLen)
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Sprintf("label %q starts or ends with a hyphen", l)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return fmt.Sprintf("label %q has %q; only letters, digits and hyphens are allowed", l, rune(c))
		}
	}
	return ""
}

// inDomain reports whether name is dom or under it (canonical names).
func inDomain(name, dom string) bool {
	return dom != "" && (name == dom || strings.HasSuffix(name, "."+dom))
}

// CheckCoordinator checks d against the coordinator's own URL: the mesh
// domain must be neither the domain of its host name nor a parent or
// child of that domain (as Headscale requires of base_domain and
// server_url), and no extra record may name the host itself. Otherwise a
// node's resolver could capture the coordinator's name and the node could
// no longer reach it. A URL whose host is an IP address has no name to
// capture.
func CheckCoordinator(d netmap.DNS, serverURL string) error {
	host := coordinatorHost(serverURL)
	if host == "" {
		return nil
	}
	hostDom := host
	if _, rest, ok := strings.Cut(host, "."); ok {
		hostDom = rest
	}
	if d.Domain != "" && (inDomain(d.Domain, hostDom) || inDomain(hostDom, d.Domain)) {
		return fieldErr("domain", "%s overlaps the coordinator's own domain %s (its URL's host is %s): nodes would resolve the coordinator's name in the mesh; pick a domain outside %s",
			d.Domain, hostDom, host, hostDom)
	}
	for i, r := range d.ExtraRecords {
		if r.Name == host {
			return fieldErr(fmt.Sprintf("extra_records[%d].name", i), "%s is the coordinator's own host name; nodes must resolve it as everyone else does", host)
		}
	}
	return nil
}

// coordinatorHost returns the lower-case host name of a URL, or "" when
// there is none or it is an IP address.
func coordinatorHost(serverURL string) string {
	u, err := url.Parse(serverURL)
	if err != nil {
		return ""
	}
	h := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	if _, err := netip.ParseAddr(h); err == nil {
		return ""
	}
	return h
}
