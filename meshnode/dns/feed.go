package dns

import (
	"net/netip"

	"github.com/wiremesh/wiremesh/netmap"
)

// Feed is what the node gives the resolver, one change at a time: a peer
// added, renamed (an upsert with the same id) or removed; this node's own
// name; the mesh-wide settings; and the OS's previous resolvers. Resolver
// implements it; the node depends on this interface only.
type Feed interface {
	PeerUpsert(id, name string, addrs []netip.Addr) error
	PeerRemove(id string)
	SetSelf(name string, addrs []netip.Addr) error
	SetSettings(Settings) error
	SetOSResolvers([]netip.AddrPort)
}

var _ Feed = (*Resolver)(nil)

// SettingsFromNetmap converts the coordinator's DNS settings. Nameservers
// are on port 53. With MagicDNS off the mesh domain is dropped (no names
// are answered) while forwarding settings still apply.
func SettingsFromNetmap(d netmap.DNS) Settings {
	s := Settings{SearchDomains: d.SearchDomains}
	if d.MagicDNS {
		s.Domain = d.Domain
	}
	for _, a := range d.Nameservers {
		s.Nameservers = append(s.Nameservers, netip.AddrPortFrom(a, 53))
	}
	if len(d.Split) > 0 {
		s.Split = make(map[string][]netip.AddrPort, len(d.Split))
		for suffix, ns := range d.Split {
			for _, a := range ns {
				s.Split[suffix] = append(s.Split[suffix], netip.AddrPortFrom(a, 53))
			}
		}
	}
	for _, r := range d.ExtraRecords {
		s.Extra = append(s.Extra, Record{Name: r.Name, Type: r.Type, Value: r.Value})
	}
	return s
}
