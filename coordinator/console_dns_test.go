package coordinator_test

import (
	"context"
	"html"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/dnsconf"
	"github.com/wiremesh/wiremesh/netmap"
)

// dnsFormValues is a DNS page form for dnsDoc's settings.
func dnsFormValues(csrf string) url.Values {
	return url.Values{
		"csrf": {csrf}, "magic_dns": {"1"}, "domain": {"mesh.internal"},
		"nameservers":    {"198.18.0.53\n"},
		"search_domains": {"corp.test"},
		"split":          {"corp.test 198.18.0.54"},
		"extra_records":  {"printer.mesh.internal A 198.19.50.10\r\n\r\ndb.corp.test AAAA 2001:db8::10"},
	}
}

// fieldError returns the inline error the DNS page shows beside field.
func fieldError(body, field string) string {
	m := regexp.MustCompile(`<p class="field-error" id="err-` + field + `" role="alert">([^<]*)</p>`).FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return html.UnescapeString(m[1])
}

// TestConsoleDNSPage: the DNS page shows the settings in force in its
// form; a save puts exactly what `coordinator dns set` would for the same
// settings in force, reaches a connected node, and is audited; the form
// shows the settings back.
func TestConsoleDNSPage(t *testing.T) {
	s := startConsole(t)
	ctx := context.Background()
	a := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true}), "a")
	w := watch(t, a, netmap.MapRequest{})
	b := newBrowser(t, s)
	csrf := b.signIn(s, "")
	code, body, _ := b.do("GET", "/dns", nil)
	if code != http.StatusOK || !strings.Contains(body, `action="/dns"`) || !strings.Contains(body, `name="domain" value="`+s.DNS().Domain+`"`) {
		t.Fatalf("DNS page: HTTP %d: %s", code, body)
	}
	code, _, resp := b.do("POST", "/dns", dnsFormValues(csrf))
	if code != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/dns?done=") {
		t.Fatalf("save: HTTP %d to %q", code, resp.Header.Get("Location"))
	}
	want, err := dnsconf.Parse([]byte(dnsDoc)) // what the CLI sets for these settings
	if err != nil {
		t.Fatal(err)
	}
	if got := s.DNS(); !reflect.DeepEqual(got, want) {
		t.Fatalf("in force after the console's save: %+v, want %+v", got, want)
	}
	nm := w.waitFor("the console's settings on the node's stream", func(nm *netmap.NetworkMap) bool { return nm.DNS.Domain == "mesh.internal" })
	if !reflect.DeepEqual(nm.DNS, want) {
		t.Fatalf("node got %+v, want %+v", nm.DNS, want)
	}
	_, body, _ = b.do("GET", resp.Header.Get("Location"), nil)
	for _, frag := range []string{"DNS settings saved", `value="mesh.internal"`, "198.18.0.53</textarea>", "corp.test 198.18.0.54</textarea>",
		"printer.mesh.internal A 198.19.50.10\ndb.corp.test AAAA 2001:db8::10</textarea>", `name="magic_dns" value="1" checked`} {
		if !strings.Contains(body, frag) {
			t.Errorf("DNS page after the save lacks %q:\n%s", frag, body)
		}
	}
	log, err := s.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(log) == 0 || log[0].Actor != "console:admin@" || log[0].Action != "dns set" || log[0].Target != "domain mesh.internal" {
		t.Fatalf("newest audit entry %+v, want console:admin@ dns set", log[0])
	}
	// Turning MagicDNS off: the unchecked box is false, not "unchanged".
	off := dnsFormValues(csrf)
	off.Del("magic_dns")
	off.Set("domain", "")
	if code, _, _ := b.do("POST", "/dns", off); code != http.StatusSeeOther || s.DNS().MagicDNS || s.DNS().Domain != "" {
		t.Fatalf("MagicDNS off: HTTP %d, in force %+v", code, s.DNS())
	}
}

// TestConsoleDNSFieldErrors: a bad form is refused with the problem shown
// beside its field and line, in the CLI's words, and changes nothing.
func TestConsoleDNSFieldErrors(t *testing.T) {
	s := startConsole(t)
	b := newBrowser(t, s)
	csrf := b.signIn(s, "")
	before := s.DNS()
	for _, tc := range []struct {
		name, field, value string
		errField, want     string
	}{
		{"bad nameserver", "nameservers", "198.18.0.53\n\n198.18.0.300", "nameservers", `line 3: "198.18.0.300" is not an IP address (or ip:53)`},
		{"resolver as nameserver", "nameservers", "100.100.100.100", "nameservers", "line 1: 100.100.100.100 is the node's own resolver"},
		{"bad domain", "domain", "bad_domain.test", "domain", `"bad_domain.test" is not a DNS name`},
		{"no domain", "domain", "", "domain", "required when magic_dns is true"},
		{"reverse domain", "domain", "in-addr.arpa", "domain", "reverse-lookup tree"},
		{"search duplicate", "search_domains", "corp.test\nCORP.test", "search_domains", "line 2: corp.test is already in the search list"},
		{"search too many", "search_domains", "a.test\nb.test\nc.test\nd.test\ne.test\nf.test", "search_domains", "6 domains, at most 5 allowed"},
		{"split without nameservers", "split", "corp.test 198.18.0.54\nlab.test", "split", "line 2: no nameservers"},
		{"split bad nameserver", "split", "corp.test 198.18.0.54, nope", "split", `line 1, nameserver 2: "nope" is not an IP address`},
		{"split in mesh domain", "split", "x.mesh.internal 198.18.0.54", "split", "line 1: inside the mesh domain mesh.internal"},
		{"split twice", "split", "corp.test 198.18.0.54\ncorp.test 198.18.0.55", "split", "line 2: corp.test is listed twice"},
		{"record short", "extra_records", "printer.mesh.internal A", "extra_records", "line 1: want NAME TYPE VALUE"},
		{"record type", "extra_records", "a.test A 198.19.0.1\nb.test MX 198.19.0.2", "extra_records", `line 2 (type): "MX" is not A, AAAA or CNAME`},
		{"record value", "extra_records", "a.test AAAA 198.19.0.1", "extra_records", `line 1 (value): "198.19.0.1" is not an IPv6 address`},
		{"cname and a", "extra_records", "a.test A 198.19.0.1\na.test CNAME b.test", "extra_records", "line 2: a.test has a CNAME and another record"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			form := dnsFormValues(csrf)
			form.Set(tc.field, tc.value)
			code, body, _ := b.do("POST", "/dns", form)
			if code != http.StatusBadRequest || !strings.Contains(body, "Not saved, the DNS settings in force are unchanged") {
				t.Fatalf("HTTP %d: %s", code, body)
			}
			if got := fieldError(body, tc.errField); !strings.Contains(got, tc.want) {
				t.Fatalf("error beside %s: %q, want %q\n%s", tc.errField, got, tc.want, body)
			}
			if !strings.Contains(body, `aria-invalid="true" aria-describedby="err-`+tc.errField+`"`) {
				t.Errorf("%s is not marked invalid", tc.errField)
			}
			// The form keeps what was typed, to fix it.
			if !strings.Contains(body, html.EscapeString(strings.Split(tc.value, "\n")[0])) {
				t.Errorf("the form lost the value typed: %q", tc.value)
			}
			if !reflect.DeepEqual(s.DNS(), before) {
				t.Fatalf("a refused save changed the settings: %+v", s.DNS())
			}
		})
	}
}

// TestConsoleDNSUser: a user sees the settings their machines receive but
// cannot change them; a save without the CSRF token changes nothing.
func TestConsoleDNSUser(t *testing.T) {
	s := startConsole(t)
	ctx := context.Background()
	if err := s.SetDNSText(ctx, []byte(dnsDoc)); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateUser(ctx, "alice@example.com"); err != nil {
		t.Fatal(err)
	}
	before := s.DNS()
	admin := newBrowser(t, s)
	adminCSRF := admin.signIn(s, "")
	for name, form := range map[string]url.Values{"no": {}, "a wrong": {"csrf": {"x" + adminCSRF}}} {
		f := dnsFormValues("")
		f.Set("domain", "changed.test")
		f.Del("csrf")
		for k, v := range form {
			f[k] = v
		}
		if code, _, _ := admin.do("POST", "/dns", f); code != http.StatusForbidden {
			t.Errorf("save with %s CSRF token: HTTP %d", name, code)
		}
	}
	b := newBrowser(t, s)
	csrf := b.signIn(s, "alice@example.com")
	code, body, _ := b.do("GET", "/dns", nil)
	if code != http.StatusOK || strings.Contains(body, `action="/dns"`) || !strings.Contains(body, "mesh.internal") || !strings.Contains(body, "printer.mesh.internal A 198.19.50.10") {
		t.Fatalf("DNS page as alice: HTTP %d: %s", code, body)
	}
	f := dnsFormValues(csrf)
	f.Set("domain", "alice.test")
	if code, _, _ := b.do("POST", "/dns", f); code != http.StatusForbidden {
		t.Errorf("save as alice: HTTP %d", code)
	}
	if !reflect.DeepEqual(s.DNS(), before) {
		t.Fatalf("settings changed: %+v", s.DNS())
	}
}
