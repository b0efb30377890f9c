package dnsconf

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	nodedns "github.com/wiremesh/wiremesh/meshnode/dns"
)

// FuzzParse: any input is either refused with a one-line FieldError
// wrapping ErrInvalid, or accepted as settings that Check leaves as they
// are, that survive Format and Parse unchanged, within every limit, and
// that the node's resolver (meshnode/dns) accepts as they are.
// Seeds are in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(contractExample))
	node := nodedns.New(nodedns.Config{})
	f.Fuzz(func(t *testing.T, text []byte) {
		d, err := Parse(text)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || !errors.Is(err, ErrInvalid) || strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("error %q: want a one-line FieldError", err)
			}
			return
		}
		if len(d.Nameservers) > MaxNameservers || len(d.SearchDomains) > MaxSearchDomains ||
			len(d.Split) > MaxSplit || len(d.ExtraRecords) > MaxExtraRecords {
			t.Fatalf("accepted past a limit: %+v", d)
		}
		if d.MagicDNS && d.Domain == "" {
			t.Fatal("accepted MagicDNS without a domain")
		}
		c, err := Check(d)
		if err != nil || !reflect.DeepEqual(c, d) {
			t.Fatalf("Check of parsed settings: %+v, %v\nwant %+v", c, err, d)
		}
		if err := node.SetSettings(nodedns.SettingsFromNetmap(d)); err != nil {
			t.Fatalf("accepted settings the node's resolver refuses: %v\n%+v", err, d)
		}
		again, err := Parse(Format(d))
		if err != nil || !reflect.DeepEqual(again, d) {
			t.Fatalf("Format/Parse round trip: %+v, %v\nwant %+v", again, err, d)
		}
	})
}
