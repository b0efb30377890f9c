package coordinator

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/wiremesh/wiremesh/coordinator/dnsconf"
)

// FuzzDNSForm: any DNS page form either is refused with a message for a
// field the page has, or gives settings that the page shows back as a form
// that gives the very same settings (what is saved is what is shown).
func FuzzDNSForm(f *testing.F) {
	f.Add(true, "mesh.internal", "198.18.0.53\n[2001:db8::53]:53", "corp.test", "corp.test 198.18.0.54, 198.18.0.55\nlab.test: 198.18.0.56",
		"printer.mesh.internal A 198.19.50.10\nwww.corp.test CNAME printer.mesh.internal\nv6.corp.test AAAA 2001:db8::1")
	f.Add(false, "", "", "", "", "")
	f.Add(true, "Mesh.Internal.", "198.18.0.300", "a.test\na.test", "corp.test", "x A")
	f.Add(true, "m.test", "\r\n\r\n1.2.3.4\r\n", "", ",,,\n corp.test ,, 1.2.3.4 ", "a.test MX 1.2.3.4")
	fields := []string{"", dnsFieldMagic, dnsFieldDomain, dnsFieldNS, dnsFieldSearch, dnsFieldSplit, dnsFieldRecords}
	f.Fuzz(func(t *testing.T, magic bool, domain, ns, search, split, records string) {
		form := dnsForm{MagicDNS: magic, Domain: domain, Nameservers: ns, SearchDomains: search, Split: split, ExtraRecords: records}
		doc, ln, err := form.document()
		var fe *formError
		if errors.As(err, &fe) {
			if !slices.Contains(fields, fe.Field) || fe.Msg == "" {
				t.Fatalf("form error %+v", fe)
			}
			return
		}
		text, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		d, err := dnsconf.Parse(text)
		if err != nil {
			var ce *dnsconf.FieldError
			if !errors.As(err, &ce) {
				t.Fatalf("not a field error: %v", err)
			}
			field, msg := placeError(ce, ln)
			if !slices.Contains(fields, field) || msg == "" {
				t.Fatalf("%v placed at %q: %q", err, field, msg)
			}
			return
		}
		doc2, ln2, err := formFromDNS(d).document()
		if err != nil {
			t.Fatalf("the form shown for %+v is refused: %v", d, err)
		}
		text2, _ := json.Marshal(doc2)
		d2, err := dnsconf.Parse(text2)
		if err != nil {
			field, msg := placeError(err.(*dnsconf.FieldError), ln2)
			t.Fatalf("the form shown for %+v is invalid: %s: %s", d, field, msg)
		}
		if !reflect.DeepEqual(d, d2) {
			t.Fatalf("saved %+v, the form shown gives %+v", d, d2)
		}
	})
}
