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
	// MagicDNS off: no mesh domain.
	d.MagicDNS = false
	if s := SettingsFromNetmap(d); s.Domain != "" || len(s.Nameservers) != 1 {
		t.Fatalf("magic_dns off: %+v", s)
	}
}
