package coordinator_test

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/coordinator/dnsconf"
	"github.com/wiremesh/wiremesh/netmap"
)

const dnsDoc = `{
	// the contract's example, with a record outside the mesh domain
	"magic_dns": true, "domain": "mesh.internal",
	"nameservers": ["198.18.0.53"], "search_domains": ["corp.test"],
	"split": {"corp.test": ["198.18.0.54"]},
	"extra_records": [
		{"name": "printer.mesh.internal", "type": "A", "value": "198.19.50.10"},
		{"name": "db.corp.test", "type": "AAAA", "value": "2001:db8::10"},
	],
}`

// lastDNSFrame returns the last frame that carried DNS settings.
func (w *watcher) lastDNSFrame() *netmap.MapResponse {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := len(w.frames) - 1; i >= 0; i-- {
		if w.frames[i].DNS != nil {
			return w.frames[i]
		}
	}
	return nil
}

// TestDNSSetReachesStreams: the flags are the settings until some are
// set; a set reaches a connected node as a delta; a bad document is
// refused naming its field and leaves the settings in force; the stored
// settings survive a restart and win over the flags.
func TestDNSSetReachesStreams(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	flags := func(domain string) func(c *coordinator.Config) {
		return func(c *coordinator.Config) {
			c.StateDir = dir
			c.DNSDomain = domain
			c.Nameservers = []netip.Addr{netip.MustParseAddr("198.18.0.53")}
		}
	}
	s := coordtest.Start(t, flags("flags.test"))
	if d := s.DNS(); d.Domain != "flags.test" || !d.MagicDNS || len(d.Nameservers) != 1 {
		t.Fatalf("settings before any dns set: %+v, want the flags", d)
	}
	key := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	a := s.Register(t, key, "a")
	s.Register(t, key, "b")
	w := watch(t, a, netmap.MapRequest{})
	w.waitFor("the flags' settings in the full map", func(nm *netmap.NetworkMap) bool { return nm.DNS.Domain == "flags.test" })

	start := time.Now()
	if err := s.SetDNSText(ctx, []byte(dnsDoc)); err != nil {
		t.Fatal(err)
	}
	nm := w.waitFor("the new settings on the stream", func(nm *netmap.NetworkMap) bool { return nm.DNS.Domain == "mesh.internal" })
	t.Logf("dns set to the node's map: %v", time.Since(start))
	if f := w.lastDNSFrame(); f == nil || f.Full {
		t.Errorf("settings arrived in %+v, want a delta frame", f)
	}
	want, err := dnsconf.Parse([]byte(dnsDoc))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(nm.DNS, want) || !reflect.DeepEqual(s.DNS(), want) {
		t.Fatalf("on the stream %+v, in force %+v, want %+v", nm.DNS, s.DNS(), want)
	}
	if len(nm.Peers) != 1 {
		t.Errorf("peers after a dns change: %d", len(nm.Peers))
	}

	// A bad document: refused with one line naming the field.
	err = s.SetDNSText(ctx, []byte(`{"domain": "mesh.internal", "nameservers": ["198.18.0.53", "not-an-ip"]}`))
	if err == nil || !errors.Is(err, dnsconf.ErrInvalid) || !strings.HasPrefix(err.Error(), "nameservers[1]:") {
		t.Fatalf("bad settings: %v", err)
	}
	if !reflect.DeepEqual(s.DNS(), want) {
		t.Fatalf("settings after a refused set: %+v", s.DNS())
	}
	// The same through the Go API the console uses.
	if err := s.SetDNS(ctx, netmap.DNS{MagicDNS: true}); err == nil || !strings.HasPrefix(err.Error(), "domain:") {
		t.Fatalf("SetDNS without a domain: %v", err)
	}
	w.stop()
	s.Stop()

	// Restart with other flags: the stored settings win.
	s2 := coordtest.Start(t, flags("other.test"))
	if !reflect.DeepEqual(s2.DNS(), want) {
		t.Fatalf("settings after restart: %+v, want the stored ones", s2.DNS())
	}
	a.Client = on(s2, a).Client
	w2 := watch(t, a, netmap.MapRequest{})
	nm = w2.waitFor("stored settings in the full map after restart", func(nm *netmap.NetworkMap) bool { return nm.DNS.Domain != "" })
	if !reflect.DeepEqual(nm.DNS, want) {
		t.Fatalf("after restart the node got %+v", nm.DNS)
	}
	// Setting the same again sends nothing new; a change sends it.
	if err := s2.SetDNSText(ctx, []byte(`{"domain": "mesh.internal", "magic_dns": false}`)); err != nil {
		t.Fatal(err)
	}
	w2.waitFor("MagicDNS off", func(nm *netmap.NetworkMap) bool { return !nm.DNS.MagicDNS && len(nm.DNS.Nameservers) == 0 })
}

// TestDNSCoordinatorName: settings that would capture the coordinator's
// own name are refused, as start-up flags and through SetDNS.
func TestDNSCoordinatorName(t *testing.T) {
	ctx := context.Background()
	cfg := func(domain string) coordinator.Config {
		return coordinator.Config{Listen: "127.0.0.1:0", StateDir: t.TempDir(), NoAdminSocket: true,
			ServerURL: "https://coord.example.net:8443", DNSDomain: domain}
	}
	_, err := coordinator.New(ctx, cfg("mesh.example.net"))
	if err == nil || !strings.Contains(err.Error(), "--dns-domain") || !strings.Contains(err.Error(), "overlaps the coordinator's own domain example.net") {
		t.Fatalf("clashing --dns-domain: %v", err)
	}
	srv, err := coordinator.New(ctx, cfg("mesh.internal"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopped, cancel := context.WithCancel(ctx)
		cancel()
		srv.Run(stopped) // returns at once, closing the listener and the store
	})
	for _, doc := range []string{
		`{"domain": "example.net"}`,
		`{"domain": "mesh.internal", "extra_records": [{"name": "coord.example.net", "type": "A", "value": "198.18.0.1"}]}`,
	} {
		if err := srv.SetDNSText(ctx, []byte(doc)); err == nil || !errors.Is(err, dnsconf.ErrInvalid) {
			t.Errorf("%s: %v, want refused", doc, err)
		}
	}
	if err := srv.SetDNSText(ctx, []byte(`{"domain": "corp.internal", "extra_records": [{"name": "www.example.net", "type": "A", "value": "198.18.0.1"}]}`)); err != nil {
		t.Fatalf("a record elsewhere in the coordinator's domain: %v", err)
	}
	if d := srv.DNS(); d.Domain != "corp.internal" || !slices.ContainsFunc(d.ExtraRecords, func(r netmap.DNSRecord) bool { return r.Name == "www.example.net" }) {
		t.Fatalf("settings: %+v", d)
	}
}
