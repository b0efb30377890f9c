package dns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	mdns "github.com/miekg/dns"
)

// ErrNoAnswer is wrapped by LookupHost when a name has no address.
var ErrNoAnswer = errors.New("dns: no address")

// query applies the rules in the package comment.
func (r *Resolver) query(ctx context.Context, req *mdns.Msg) (*mdns.Msg, string) {
	if req.Response {
		return nil, SourceNone
	}
	if req.Opcode != mdns.OpcodeQuery || len(req.Question) != 1 {
		return reply(req, mdns.RcodeNotImplemented), SourceNone
	}
	q := req.Question[0]
	if q.Qclass != mdns.ClassINET && q.Qclass != mdns.ClassANY {
		return reply(req, mdns.RcodeRefused), SourceNone
	}
	name, ok := canonFQDN(q.Name)
	if ok {
		if resp, source, ok := r.local(req, name, q.Qtype); ok {
			return resp, source
		}
	} else {
		// Not a host name (the root, a label with other bytes): never
		// ours, but a valid DNS name is still forwarded.
		if _, valid := mdns.IsDomainName(q.Name); !valid {
			return reply(req, mdns.RcodeFormatError), SourceNone
		}
		name = mdns.CanonicalName(q.Name)
		r.mu.RLock()
		domain, mine := r.t.domain, r.t.inDomain(name)
		r.mu.RUnlock()
		if _, rev := inMeshReverse(name); mine || rev {
			resp := reply(req, mdns.RcodeNameError)
			resp.Authoritative = true
			if mine {
				resp.Ns = append(resp.Ns, soa(domain))
			}
			return resp, SourceMesh
		}
	}
	r.mu.RLock()
	ns, source := r.t.route(name)
	r.mu.RUnlock()
	if len(ns) == 0 {
		return reply(req, mdns.RcodeServerFailure), SourceNone
	}
	return r.forward(ctx, req, ns, source), source
}

// local answers from the table, if the name is ours.
func (r *Resolver) local(req *mdns.Msg, name string, qtype uint16) (*mdns.Msg, string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	t := &r.t
	if zone, ok := inMeshReverse(name); ok {
		resp := reply(req, mdns.RcodeSuccess)
		resp.Authoritative = true
		a, isAddr := ptrAddr(name)
		label, known := t.byAddr[a]
		known = known && t.domain != "" // MagicDNS off: no names
		switch {
		case isAddr && known && (qtype == mdns.TypePTR || qtype == mdns.TypeANY):
			resp.Answer = append(resp.Answer, &mdns.PTR{
				Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypePTR, Class: mdns.ClassINET, Ttl: ttlPositive},
				Ptr: t.fqdnOf(label)})
		case isAddr && known:
			resp.Ns = append(resp.Ns, soa(zone))
		case !isAddr && name == zone && qtype == mdns.TypeSOA:
			resp.Answer = append(resp.Answer, soa(zone))
		default:
			// A partial reverse name (an empty non-terminal) has no
			// data; a full one that is nobody's does not exist.
			if isAddr {
				resp.Rcode = mdns.RcodeNameError
			}
			resp.Ns = append(resp.Ns, soa(zone))
		}
		return resp, SourcePTR, true
	}
	if rrs, ok := t.extra[name]; ok {
		resp := reply(req, mdns.RcodeSuccess)
		resp.Authoritative = true
		for _, rr := range rrs {
			if rr.Header().Rrtype == qtype || qtype == mdns.TypeANY || rr.Header().Rrtype == mdns.TypeCNAME {
				resp.Answer = append(resp.Answer, mdns.Copy(rr))
			}
		}
		// Follow one CNAME level inside what we know.
		for _, rr := range resp.Answer {
			if c, ok := rr.(*mdns.CNAME); ok && qtype != mdns.TypeCNAME {
				resp.Answer = append(resp.Answer, t.addrRRs(c.Target, qtype)...)
			}
		}
		if len(resp.Answer) == 0 && t.inDomain(name) {
			resp.Ns = append(resp.Ns, soa(t.domain))
		}
		return resp, SourceExtra, true
	}
	if p, ok := t.peerLabel(name); ok {
		resp := reply(req, mdns.RcodeSuccess)
		resp.Authoritative = true
		resp.Answer = t.addrRRsOf(name, p, qtype)
		if len(resp.Answer) == 0 {
			resp.Ns = append(resp.Ns, soa(t.zoneFor(name)))
		}
		return resp, SourceMesh, true
	}
	if t.inDomain(name) {
		resp := reply(req, mdns.RcodeSuccess)
		resp.Authoritative = true
		switch {
		case name == t.domain && (qtype == mdns.TypeSOA || qtype == mdns.TypeANY):
			resp.Answer = append(resp.Answer, soa(t.domain))
		case name == t.domain:
			resp.Ns = append(resp.Ns, soa(t.domain))
		default:
			resp.Rcode = mdns.RcodeNameError
			resp.Ns = append(resp.Ns, soa(t.domain))
		}
		return resp, SourceMesh, true
	}
	if mdns.CountLabel(name) == 1 && (qtype == mdns.TypeA || qtype == mdns.TypeAAAA || qtype == mdns.TypeANY) {
		// A bare host name nobody has: the stub has tried the search
		// list already, and no upstream knows a single-label host.
		resp := reply(req, mdns.RcodeNameError)
		resp.Ns = append(resp.Ns, soa("."))
		return resp, SourceMesh, true
	}
	return nil, "", false
}

// zoneFor is the SOA owner for a negative answer about a mesh name.
func (t *table) zoneFor(name string) string {
	if t.inDomain(name) {
		return t.domain
	}
	return "."
}

func (t *table) addrRRsOf(owner string, p peerEntry, qtype uint16) []mdns.RR {
	var out []mdns.RR
	for _, a := range p.addrs {
		hdr := mdns.RR_Header{Name: owner, Class: mdns.ClassINET, Ttl: ttlPositive}
		switch {
		case a.Is4() && (qtype == mdns.TypeA || qtype == mdns.TypeANY):
			hdr.Rrtype = mdns.TypeA
			out = append(out, &mdns.A{Hdr: hdr, A: a.AsSlice()})
		case a.Is6() && (qtype == mdns.TypeAAAA || qtype == mdns.TypeANY):
			hdr.Rrtype = mdns.TypeAAAA
			out = append(out, &mdns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	return out
}

// addrRRs answers a CNAME target from the table (peers and extra A/AAAA).
func (t *table) addrRRs(target string, qtype uint16) []mdns.RR {
	if p, ok := t.peerLabel(target); ok {
		return t.addrRRsOf(target, p, qtype)
	}
	var out []mdns.RR
	for _, rr := range t.extra[target] {
		if rr.Header().Rrtype == qtype {
			out = append(out, mdns.Copy(rr))
		}
	}
	return out
}

func reply(req *mdns.Msg, rcode int) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetRcode(req, rcode)
	m.RecursionAvailable = true
	return m
}

// soa is the resolver's SOA for zone; its minimum is the negative TTL.
func soa(zone string) mdns.RR {
	return &mdns.SOA{
		Hdr: mdns.RR_Header{Name: zone, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: ttlNegative},
		Ns:  "magicdns.wiremesh.", Mbox: "hostmaster.wiremesh.",
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: ttlNegative,
	}
}

// LookupHost resolves name to addresses through the resolver, as a stub
// would: a name without a dot is tried under each search domain in order
// (the mesh domain first), then as is. It returns the addresses and the
// source that answered (for the SOCKS5 proxy and `meshnode dns query`).
func (r *Resolver) LookupHost(ctx context.Context, name string) ([]netip.Addr, string, error) {
	if a, err := netip.ParseAddr(name); err == nil {
		return []netip.Addr{a}, SourceNone, nil
	}
	name = strings.TrimSuffix(name, ".")
	candidates := []string{name + "."}
	if !strings.Contains(name, ".") {
		candidates = candidates[:0]
		for _, s := range r.SearchDomains() {
			candidates = append(candidates, name+"."+s+".")
		}
		candidates = append(candidates, name+".")
	}
	for _, c := range candidates {
		var addrs []netip.Addr
		var source string
		for _, qt := range []uint16{mdns.TypeA, mdns.TypeAAAA} {
			m := new(mdns.Msg)
			m.SetQuestion(c, qt)
			resp, src := r.Query(ctx, m)
			if resp == nil || resp.Rcode != mdns.RcodeSuccess {
				source = src
				continue
			}
			source = src
			for _, rr := range resp.Answer {
				switch v := rr.(type) {
				case *mdns.A:
					if a, ok := netip.AddrFromSlice(v.A); ok {
						addrs = append(addrs, a.Unmap())
					}
				case *mdns.AAAA:
					if a, ok := netip.AddrFromSlice(v.AAAA); ok {
						addrs = append(addrs, a)
					}
				}
			}
		}
		if len(addrs) > 0 {
			return addrs, source, nil
		}
	}
	return nil, SourceNone, fmt.Errorf("%w for %q", ErrNoAnswer, name)
}
