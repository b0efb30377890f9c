package dns

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/wiremesh/wiremesh/meshnode/dns/dnstest"
)

func connect(t *testing.T, addr string) *dbus.Conn {
	t.Helper()
	c, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// fakeResolved answers resolved's manager methods and records the calls.
type fakeResolved struct {
	mu      sync.Mutex
	calls   []string
	dns     []linkDNS
	domains []linkDomain
	def     bool
}

func (f *fakeResolved) rec(s string) { f.mu.Lock(); f.calls = append(f.calls, s); f.mu.Unlock() }

func (f *fakeResolved) SetLinkDNS(link int32, addrs []linkDNS) *dbus.Error {
	f.rec("SetLinkDNS")
	f.mu.Lock()
	f.dns = addrs
	f.mu.Unlock()
	return nil
}

func (f *fakeResolved) SetLinkDomains(link int32, domains []linkDomain) *dbus.Error {
	f.rec("SetLinkDomains")
	f.mu.Lock()
	f.domains = domains
	f.mu.Unlock()
	return nil
}

func (f *fakeResolved) SetLinkDefaultRoute(link int32, on bool) *dbus.Error {
	f.rec("SetLinkDefaultRoute")
	f.mu.Lock()
	f.def = on
	f.mu.Unlock()
	return nil
}

func (f *fakeResolved) RevertLink(link int32) *dbus.Error {
	f.rec("RevertLink")
	return nil
}

// TestResolved drives the configurator over a real D-Bus daemon against a
// stand-in for org.freedesktop.resolve1.
func TestResolved(t *testing.T) {
	addr := dnstest.PrivateBus(t)
	client := connect(t, addr)
	dir := t.TempDir()
	stub := filepath.Join(dir, "resolv.conf")
	os.WriteFile(stub, []byte("nameserver 127.0.0.53\noptions edns0\n"), 0o644)
	if ResolvedActive(context.Background(), client, stub) {
		t.Fatal("resolved active before anyone owns its name")
	}

	svc := connect(t, addr)
	fake := &fakeResolved{}
	if err := svc.Export(fake, resolvedPath, resolvedManager); err != nil {
		t.Fatal(err)
	}
	if reply, err := svc.RequestName(resolvedBusName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("request name: %v %v", reply, err)
	}
	if !ResolvedActive(context.Background(), client, stub) {
		t.Fatal("resolved not detected")
	}
	other := filepath.Join(dir, "other.conf")
	os.WriteFile(other, []byte("nameserver 198.18.0.53\n"), 0o644)
	if ResolvedActive(context.Background(), client, other) {
		t.Fatal("resolved detected although resolv.conf names another server")
	}
	link := filepath.Join(dir, "link.conf")
	os.Symlink("../run/systemd/resolve/stub-resolv.conf", link)
	if !ResolvedActive(context.Background(), client, link) {
		t.Fatal("resolved's stub link not detected")
	}

	// ChooseOS picks resolved here, the file where resolved is not the
	// system's resolver, and the file without a bus.
	if c := ChooseOS(context.Background(), OSPaths{ResolvConf: stub, Bus: client, Link: 7}); c.Mode() != ModeResolved {
		t.Fatalf("ChooseOS with resolved: %s", c.Mode())
	}
	if c := ChooseOS(context.Background(), OSPaths{ResolvConf: other, Bus: client}); c.Mode() != ModeFile {
		t.Fatalf("ChooseOS with another nameserver: %s", c.Mode())
	}
	if c := ChooseOS(context.Background(), OSPaths{ResolvConf: stub}); c.Mode() != ModeFile {
		t.Fatalf("ChooseOS without a bus: %s", c.Mode())
	}

	r := &Resolved{Conn: client, Link: 7}
	quad := []netip.Addr{netip.MustParseAddr("100.100.100.100")}
	// The node takes every name: "~." and the default route.
	if err := r.Set(context.Background(), OSConfig{Nameservers: quad, SearchDomains: []string{"mesh.internal", "corp.test"}, All: true,
		MatchDomains: []string{"mesh.internal", "corp.test"}}); err != nil {
		t.Fatal(err)
	}
	fake.mu.Lock()
	if len(fake.dns) != 1 || fake.dns[0].Family != afInet || netip.AddrFrom4([4]byte(fake.dns[0].Address)) != quad[0] {
		t.Errorf("link DNS %+v", fake.dns)
	}
	want := []linkDomain{{"mesh.internal", false}, {"corp.test", false}, {"~.", true}}
	if !slices.Equal(fake.domains, want) || !fake.def {
		t.Errorf("all names: domains %+v default route %v", fake.domains, fake.def)
	}
	fake.mu.Unlock()
	// Only the mesh domain and split suffixes.
	if err := r.Set(context.Background(), OSConfig{Nameservers: quad, SearchDomains: []string{"mesh.internal"},
		MatchDomains: []string{"mesh.internal", "corp.test"}}); err != nil {
		t.Fatal(err)
	}
	fake.mu.Lock()
	want = []linkDomain{{"mesh.internal", false}, {"corp.test", true}}
	if !slices.Equal(fake.domains, want) || fake.def {
		t.Errorf("split only: domains %+v default route %v", fake.domains, fake.def)
	}
	fake.mu.Unlock()
	if err := r.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	fake.mu.Lock()
	if fake.calls[len(fake.calls)-1] != "RevertLink" {
		t.Errorf("calls %v", fake.calls)
	}
	fake.mu.Unlock()

	// A resolved older than 240 has no SetLinkDefaultRoute: Set still
	// succeeds on "~." alone.
	svc.ReleaseName(resolvedBusName)
	old := connect(t, addr)
	if err := old.Export(&oldResolved{fake: &fakeResolved{}}, resolvedPath, resolvedManager); err != nil {
		t.Fatal(err)
	}
	if reply, err := old.RequestName(resolvedBusName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("request name: %v %v", reply, err)
	}
	if err := r.Set(context.Background(), OSConfig{Nameservers: quad, All: true}); err != nil {
		t.Fatalf("old resolved: %v", err)
	}
}

// oldResolved lacks SetLinkDefaultRoute.
type oldResolved struct{ fake *fakeResolved }

func (o *oldResolved) SetLinkDNS(link int32, addrs []linkDNS) *dbus.Error {
	return o.fake.SetLinkDNS(link, addrs)
}

func (o *oldResolved) SetLinkDomains(link int32, domains []linkDomain) *dbus.Error {
	return o.fake.SetLinkDomains(link, domains)
}
