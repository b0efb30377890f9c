package dns

import (
	"encoding/json"
	"net/netip"
	"slices"
	"testing"

	mdns "github.com/miekg/dns"
	"github.com/wiremesh/wiremesh/netmap"
)

// TestSettingsFromNetmap decodes the coordinator's DNS settings as the
// netmap carries them and applies them.
func TestSettingsFromNetmap(t *testing.T) {
	const wire = `{"magic_dns": true, "domain": "mesh.internal",
		"nameservers": ["198.18.0.53"], "search_domains": ["corp.test"],
		"split": {"corp.test": ["198.18.0.54"]},
		"extra_records": [{"name": "printer.mesh.internal", "type": "A", "value": "198.19.50.10"}]}`
	var d netmap.DNS
	if err := json.Unmarshal([]byte(wire), &d); err != nil {
		t.Fatal(err)
	}
	s := SettingsFromNetmap(d)
	if s.Domain != "mesh.internal" || !slices.Equal(s.Nameservers, []netip.AddrPort{ap("198.18.0.53:53")}) ||
		!slices.Equal(s.Split["corp.test"], []netip.AddrPort{ap("198.18.0.54:53")}) || len(s.Extra) != 1 ||
		!slices.Equal(s.SearchDomains, []string{"corp.test"}) {
		t.Fatalf("settings %+v", s)
	}
	r := New(Config{})
	if err := r.SetSettings(s); err != nil {
		t.Fatal(err)
	}
	if resp, _ := ask(t, r, "printer.mesh.internal.", mdns.TypeA); firstA(resp) != netip.MustParseAddr("198.19.50.10") {
		t.Fatalf("extra record: %v", resp)
	}
	if got := r.SearchDomains(); !slices.Equal(got, []string{"mesh.internal", "corp.test"}) {
		t.Fatalf("search %v", got)
	}
	// MagicDNS off: no mesh domain, and then no peer or PTR names.
	d.MagicDNS = false
	s = SettingsFromNetmap(d)
	if s.Domain != "" || len(s.Nameservers) != 1 {
		t.Fatalf("magic_dns off: %+v", s)
	}
	r.PeerUpsert("nodekey:b", "b", []netip.Addr{netip.MustParseAddr("100.64.0.2")})
	if resp, src := ask(t, r, "b.", mdns.TypeA); src != SourceMesh || firstA(resp) != netip.MustParseAddr("100.64.0.2") {
		t.Fatalf("with MagicDNS on: %v from %s", resp, src)
	}
	if err := r.SetSettings(s); err != nil {
		t.Fatal(err)
	}
	if resp, _ := ask(t, r, "b.", mdns.TypeA); len(resp.Answer) != 0 {
		t.Fatalf("peer name answered with MagicDNS off: %v", resp)
	}
	if resp, src := ask(t, r, "2.0.64.100.in-addr.arpa.", mdns.TypePTR); src != SourcePTR || resp.Rcode != mdns.RcodeNameError {
		t.Fatalf("PTR with MagicDNS off: %v from %s", resp, src)
	}
}
