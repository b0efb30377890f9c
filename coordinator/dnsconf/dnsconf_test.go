package dnsconf

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/netmap"
)

const contractExample = `{"magic_dns": true, "domain": "mesh.internal",
 "nameservers": ["198.18.0.53"], "search_domains": ["corp.test"],
 "split": {"corp.test": ["198.18.0.54"]},
 "extra_records": [{"name": "printer.mesh.internal", "type": "A", "value": "198.19.50.10"}]}`

func TestParseGood(t *testing.T) {
	d, err := Parse([]byte(contractExample))
	if err != nil {
		t.Fatal(err)
	}
	want := netmap.DNS{
		Domain: "mesh.internal", MagicDNS: true,
		Nameservers:   []netip.Addr{netip.MustParseAddr("198.18.0.53")},
		SearchDomains: []string{"corp.test"},
		Split:         map[string][]netip.Addr{"corp.test": {netip.MustParseAddr("198.18.0.54")}},
		ExtraRecords:  []netmap.DNSRecord{{Name: "printer.mesh.internal", Type: "A", Value: "198.19.50.10"}},
	}
	if !reflect.DeepEqual(d, want) {
		t.Fatalf("got %+v\nwant %+v", d, want)
	}

	// HuJSON, canonical forms, records outside the mesh domain, ip:53.
	d, err = Parse([]byte(`{
		// comments and trailing commas are fine
		"domain": "Mesh.Example.",
		"nameservers": ["198.18.0.53:53", "[2001:db8::53]:53", "::ffff:198.18.0.55",],
		"split": {"Corp.Test.": ["198.18.0.54"]},
		"extra_records": [
			{"name": "db.corp.test", "type": "aaaa", "value": "2001:db8::1"},
			{"name": "www.elsewhere.test", "type": "CNAME", "value": "Web.Corp.Test."},
			{"name": "two.mesh.example", "type": "A", "value": "198.18.1.1"},
			{"name": "two.mesh.example", "type": "A", "value": "198.18.1.2"},
		],
	}`))
	if err != nil {
		t.Fatal(err)
	}
	if !d.MagicDNS || d.Domain != "mesh.example" {
		t.Errorf("magic_dns omitted must mean true and the domain be canonical: %+v", d)
	}
	if fmt.Sprint(d.Nameservers) != "[198.18.0.53 2001:db8::53 198.18.0.55]" {
		t.Errorf("nameservers %v", d.Nameservers)
	}
	if _, ok := d.Split["corp.test"]; !ok {
		t.Errorf("split key not canonical: %v", d.Split)
	}
	if r := d.ExtraRecords[0]; r.Type != "AAAA" {
		t.Errorf("record type not canonical: %+v", r)
	}
	if r := d.ExtraRecords[1]; r.Value != "web.corp.test" {
		t.Errorf("CNAME target not canonical: %+v", r)
	}

	// MagicDNS off needs no domain.
	if d, err := Parse([]byte(`{"magic_dns": false, "nameservers": ["198.18.0.53"]}`)); err != nil || d.MagicDNS {
		t.Errorf("magic_dns false without a domain: %+v, %v", d, err)
	}
}

// TestParseBad: every bad field is refused with one line naming it.
func TestParseBad(t *testing.T) {
	long := strings.Repeat("a", 64)
	many := func(n int, f func(i int) string) string {
		var l []string
		for i := range n {
			l = append(l, f(i))
		}
		return strings.Join(l, ",")
	}
	cases := []struct {
		name, doc, want string
	}{
		{"not hujson", `{"domain": `, "not HuJSON"},
		{"trailing data", `{"domain": "a.test"} {}`, "after top-level value"},
		{"not an object", `[1]`, "want a JSON object"},
		{"unknown field", `{"domian": "a.test"}`, `domian: unknown field`},
		{"unknown record field", `{"domain": "a.test", "extra_records": [{"name": "x.test", "type": "A", "value": "1.2.3.4", "ttl": 5}]}`, `ttl: unknown field`},
		{"wrong type", `{"domain": "a.test", "nameservers": "198.18.0.53"}`, `nameservers: want a list, got string`},
		{"wrong bool", `{"domain": "a.test", "magic_dns": "yes"}`, `magic_dns: want true or false, got string`},
		{"too large", `{"domain": "a.test", "x": "` + strings.Repeat("x", MaxFileSize) + `"}`, "larger than"},
		{"no domain", `{"nameservers": ["198.18.0.53"]}`, "domain: required when magic_dns is true"},
		{"domain underscore", `{"domain": "my_mesh.test"}`, `domain: "my_mesh.test" is not a DNS name: label "my_mesh" has '_'`},
		{"domain hyphen start", `{"domain": "-mesh.test"}`, `domain: "-mesh.test" is not a DNS name: label "-mesh" starts or ends with a hyphen`},
		{"domain hyphen end", `{"domain": "mesh-.test"}`, `starts or ends with a hyphen`},
		{"domain empty label", `{"domain": "mesh..test"}`, `domain: "mesh..test" is not a DNS name: empty label`},
		{"domain long label", `{"domain": "` + long + `.test"}`, `domain: "` + long + `.test" is not a DNS name: label of 64 bytes; at most 63 allowed`},
		{"domain long name", `{"domain": "` + strings.Repeat("abcdefgh.", 28) + `test"}`, `domain: name of 256 bytes; at most 253 allowed`},
		{"domain arpa", `{"domain": "64.100.in-addr.arpa"}`, `domain: "64.100.in-addr.arpa" is in the reverse-lookup tree`},
		{"nameserver not ip", `{"domain": "a.test", "nameservers": ["198.18.0.53", "dns.google"]}`, `nameservers[1]: "dns.google" is not an IP address`},
		{"nameserver port", `{"domain": "a.test", "nameservers": ["198.18.0.53:5353"]}`, `nameservers[0]: "198.18.0.53:5353": port 5353; nodes ask nameservers on port 53 only`},
		{"nameserver zone", `{"domain": "a.test", "nameservers": ["fe80::1%eth0"]}`, `nameservers[0]: "fe80::1%eth0" has a zone`},
		{"nameserver unspecified", `{"domain": "a.test", "nameservers": ["0.0.0.0"]}`, `nameservers[0]: "0.0.0.0" is not a unicast address`},
		{"nameserver multicast", `{"domain": "a.test", "nameservers": ["ff02::fb"]}`, `nameservers[0]: "ff02::fb" is not a unicast address`},
		{"nameserver self", `{"domain": "a.test", "nameservers": ["100.100.100.100"]}`, `nameservers[0]: 100.100.100.100 is the node's own resolver`},
		{"nameserver twice", `{"domain": "a.test", "nameservers": ["198.18.0.53", "198.18.0.53:53"]}`, `nameservers[1]: 198.18.0.53 is listed twice`},
		{"too many nameservers", `{"domain": "a.test", "nameservers": [` + many(MaxNameservers+1, func(i int) string { return fmt.Sprintf(`"198.18.0.%d"`, i+1) }) + `]}`,
			fmt.Sprintf("nameservers: %d nameservers, at most %d allowed", MaxNameservers+1, MaxNameservers)},
		{"search domain bad", `{"domain": "a.test", "search_domains": ["corp.test", "bad domain"]}`, `search_domains[1]: "bad domain" is not a DNS name`},
		{"search domain is mesh", `{"domain": "a.test", "search_domains": ["A.test"]}`, `search_domains[0]: a.test is already in the search list`},
		{"too many search domains", `{"domain": "a.test", "search_domains": [` + many(MaxSearchDomains+1, func(i int) string { return fmt.Sprintf(`"s%d.test"`, i) }) + `]}`,
			fmt.Sprintf("search_domains: %d domains, at most %d allowed", MaxSearchDomains+1, MaxSearchDomains)},
		{"split key bad", `{"domain": "a.test", "split": {"corp_test": ["198.18.0.54"]}}`, `split["corp_test"]: "corp_test" is not a DNS name`},
		{"split no nameservers", `{"domain": "a.test", "split": {"corp.test": []}}`, `split["corp.test"]: no nameservers`},
		{"split bad nameserver", `{"domain": "a.test", "split": {"corp.test": ["198.18.0.54", "x"]}}`, `split["corp.test"][1]: "x" is not an IP address`},
		{"split in mesh domain", `{"domain": "a.test", "split": {"sub.a.test": ["198.18.0.54"]}}`, `split["sub.a.test"]: inside the mesh domain a.test`},
		{"split twice", `{"domain": "a.test", "split": {"Corp.test": ["198.18.0.54"], "corp.test": ["198.18.0.55"]}}`, `split["corp.test"]: corp.test is listed twice`},
		{"split not list", `{"domain": "a.test", "split": {"corp.test": "198.18.0.54"}}`, `split: each suffix needs a list of nameserver addresses, got string`},
		{"too many split", `{"domain": "a.test", "split": {` + many(MaxSplit+1, func(i int) string { return fmt.Sprintf(`"s%d.test": ["198.18.0.54"]`, i) }) + `}}`,
			fmt.Sprintf("split: %d suffixes, at most %d allowed", MaxSplit+1, MaxSplit)},
		{"record name", `{"domain": "a.test", "extra_records": [{"name": "", "type": "A", "value": "198.18.0.1"}]}`, `extra_records[0].name: "" is not a DNS name (empty)`},
		{"record no type", `{"domain": "a.test", "extra_records": [{"name": "x.test", "value": "198.18.0.1"}]}`, `extra_records[0].type: required: A, AAAA or CNAME`},
		{"record bad type", `{"domain": "a.test", "extra_records": [{"name": "x.test", "type": "MX", "value": "198.18.0.1"}]}`, `extra_records[0].type: "MX" is not A, AAAA or CNAME`},
		{"A not v4", `{"domain": "a.test", "extra_records": [{"name": "x.test", "type": "A", "value": "2001:db8::1"}]}`, `extra_records[0].value: "2001:db8::1" is not an IPv4 address`},
		{"A not ip", `{"domain": "a.test", "extra_records": [{"name": "x.test", "type": "A", "value": "printer"}]}`, `extra_records[0].value: "printer" is not an IP address`},
		{"AAAA not v6", `{"domain": "a.test", "extra_records": [{"name": "x.test", "type": "AAAA", "value": "198.18.0.1"}]}`, `extra_records[0].value: "198.18.0.1" is not an IPv6 address`},
		{"AAAA mapped", `{"domain": "a.test", "extra_records": [{"name": "x.test", "type": "AAAA", "value": "::ffff:198.18.0.1"}]}`, `is not an IPv6 address`},
		{"CNAME bad", `{"domain": "a.test", "extra_records": [{"name": "x.test", "type": "CNAME", "value": "1 2"}]}`, `extra_records[0].value: "1 2" is not a DNS name`},
		{"CNAME self", `{"domain": "a.test", "extra_records": [{"name": "x.test", "type": "CNAME", "value": "X.test"}]}`, `extra_records[0].value: a CNAME cannot point at its own name`},
		{"CNAME and A", `{"domain": "a.test", "extra_records": [{"name": "x.test", "type": "A", "value": "198.18.0.1"}, {"name": "x.test", "type": "CNAME", "value": "y.test"}]}`,
			`extra_records[1]: x.test has a CNAME and another record`},
		{"A after CNAME", `{"domain": "a.test", "extra_records": [{"name": "x.test", "type": "CNAME", "value": "y.test"}, {"name": "X.test", "type": "A", "value": "198.18.0.1"}]}`,
			`extra_records[1]: x.test has a CNAME and another record`},
		{"record twice", `{"domain": "a.test", "extra_records": [{"name": "x.test", "type": "A", "value": "198.18.0.1"}, {"name": "x.test", "type": "a", "value": "198.18.0.1"}]}`,
			`extra_records[1]: the same record is listed twice`},
		{"too many records", `{"domain": "a.test", "extra_records": [` + many(MaxExtraRecords+1, func(i int) string {
			return fmt.Sprintf(`{"name": "h%d.test", "type": "A", "value": "198.18.0.1"}`, i)
		}) + `]}`, fmt.Sprintf("extra_records: %d records, at most %d allowed", MaxExtraRecords+1, MaxExtraRecords)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.doc))
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", c.want)
			}
			msg := err.Error()
			if !strings.Contains(msg, c.want) || strings.Contains(msg, "\n") || !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %q: want one line containing %q, wrapping ErrInvalid", msg, c.want)
			}
		})
	}
}

func TestCheckCoordinator(t *testing.T) {
	cases := []struct {
		url, domain string
		records     []netmap.DNSRecord
		want        string // "" = accepted
	}{
		{"https://coord.example.net:8443", "mesh.internal", nil, ""},
		{"https://coord.example.net:8443", "example.net", nil, "domain: example.net overlaps the coordinator's own domain example.net"},
		{"https://coord.example.net:8443", "net", nil, "domain: net overlaps"},
		{"https://coord.example.net:8443", "mesh.example.net", nil, "domain: mesh.example.net overlaps"},
		{"https://coord.example.net:8443", "coord.example.net", nil, "overlaps"},
		{"https://COORD.Example.NET.", "example.net", nil, "overlaps"},
		{"https://coord.example.net", "example.org", nil, ""},
		{"https://coord.example.net", "xexample.net", nil, ""}, // a suffix, not a parent
		{"https://coordinator", "coordinator", nil, "overlaps"},
		{"https://198.18.0.1:8443", "mesh.internal", nil, ""},
		{"https://[2001:db8::1]:8443", "mesh.internal", nil, ""},
		{"", "mesh.internal", nil, ""},
		{"https://coord.example.net", "mesh.internal", []netmap.DNSRecord{{Name: "www.example.net", Type: "A", Value: "198.18.0.1"}}, ""},
		{"https://coord.example.net", "mesh.internal", []netmap.DNSRecord{{Name: "coord.example.net", Type: "A", Value: "198.18.0.1"}},
			"extra_records[0].name: coord.example.net is the coordinator's own host name"},
	}
	for _, c := range cases {
		d := netmap.DNS{Domain: c.domain, MagicDNS: true, ExtraRecords: c.records}
		err := CheckCoordinator(d, c.url)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s, domain %s: %v", c.url, c.domain, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrInvalid)):
			t.Errorf("%s, domain %s: %v, want %q", c.url, c.domain, err, c.want)
		}
	}
}

// TestFormatRoundTrip: what dns get prints, dns set accepts unchanged.
func TestFormatRoundTrip(t *testing.T) {
	d, err := Parse([]byte(contractExample))
	if err != nil {
		t.Fatal(err)
	}
	out := Format(d)
	for _, f := range []string{`"magic_dns": true`, `"nameservers"`, `"search_domains"`, `"split"`, `"extra_records"`} {
		if !strings.Contains(string(out), f) {
			t.Errorf("Format lacks %s:\n%s", f, out)
		}
	}
	again, err := Parse(out)
	if err != nil || !reflect.DeepEqual(again, d) {
		t.Fatalf("round trip: %+v, %v\nwant %+v", again, err, d)
	}
	// Empty settings print every field too, as empty lists and objects.
	empty := string(Format(netmap.DNS{}))
	for _, f := range []string{`"nameservers": []`, `"split": {}`, `"extra_records": []`} {
		if !strings.Contains(empty, f) {
			t.Errorf("Format of empty settings lacks %s:\n%s", f, empty)
		}
	}
	if _, err := Check(netmap.DNS{MagicDNS: true, Domain: "a.test", Nameservers: []netip.Addr{ResolverAddr}}); err == nil ||
		!strings.Contains(err.Error(), "nameservers[0]") {
		t.Errorf("Check of a netmap.DNS with the resolver as nameserver: %v", err)
	}
}
