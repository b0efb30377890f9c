//go:build lab

package e2e

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	mdns "github.com/miekg/dns"
	"github.com/wiremesh/wiremesh/internal/poll"
	"github.com/wiremesh/wiremesh/meshnode/dns/dnstest"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// fakeResolved stands in for systemd-resolved's manager on a private bus
// and records what the node asked for.
type fakeResolved struct {
	mu       sync.Mutex
	link     int32
	dns      []netip.Addr
	domains  []string // "~x" for routing-only domains
	def      bool
	reverted []int32
}

type resolvedDNS struct {
	Family  int32
	Address []byte
}

type resolvedDomain struct {
	Domain      string
	RoutingOnly bool
}

func (f *fakeResolved) SetLinkDNS(link int32, addrs []resolvedDNS) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.link, f.dns = link, nil
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.Address)
		f.dns = append(f.dns, ip)
	}
	return nil
}

func (f *fakeResolved) SetLinkDomains(link int32, ds []resolvedDomain) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.domains = nil
	for _, d := range ds {
		if d.RoutingOnly {
			f.domains = append(f.domains, "~"+strings.TrimPrefix(d.Domain, "~"))
		} else {
			f.domains = append(f.domains, d.Domain)
		}
	}
	return nil
}

func (f *fakeResolved) SetLinkDefaultRoute(link int32, on bool) *dbus.Error {
	f.mu.Lock()
	f.def = on
	f.mu.Unlock()
	return nil
}

func (f *fakeResolved) RevertLink(link int32) *dbus.Error {
	f.mu.Lock()
	f.reverted = append(f.reverted, link)
	f.mu.Unlock()
	return nil
}

// TestLabMagicDNSResolved: where systemd-resolved is the system's
// resolver (it owns org.freedesktop.resolve1 and resolv.conf names its
// stub), a kernel-mode node configures its TUN link over D-Bus instead of
// writing the file: 100.100.100.100 as the link's DNS server, the mesh
// domain as a search domain, "~." (global nameservers are set) and the
// link's default route; the file is never written, the resolver answers on
// 100.100.100.100, status says "resolved", and stopping reverts the link.
// The bus is a private dbus-daemon with a stand-in for resolved.
func TestLabMagicDNSResolved(t *testing.T) {
	busAddr := dnstest.PrivateBus(t)
	svc, err := dbus.Connect(busAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	fake := &fakeResolved{}
	if err := svc.Export(fake, "/org/freedesktop/resolve1", "org.freedesktop.resolve1.Manager"); err != nil {
		t.Fatal(err)
	}
	if reply, err := svc.RequestName("org.freedesktop.resolve1", dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("request name: %v %v", reply, err)
	}
	// The node finds the system bus through the standard variable.
	t.Setenv("DBUS_SYSTEM_BUS_ADDRESS", busAddr)

	w := newWorld(t, "nyc")
	upstream, err := w.l.AddHost("dns", nil)
	if err != nil {
		t.Fatal(err)
	}
	w.coordArgs = []string{"--dns-domain", "mesh.test", "--dns-nameservers", upstream.Addr.String()}
	w.stopCoordinator()
	w.startCoordinator(w.relayMap)
	ah := hardNATHost(t, w, "a")
	const stub = "# resolved's stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\n"
	file := netnsResolvConf(t, ah, stub)
	a := w.startNode("a", ah, "--accept-dns")
	b := w.startNode("b", hardNATHost(t, w, "b"))
	for _, n := range []*node{a, b} {
		n.waitStatus("one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	bIP := b.ip()
	a.waitStatus("dns mode resolved", func(st localapi.Status) bool {
		return st.DNS != nil && st.DNS.Mode == "resolved" && st.DNS.Domain == "mesh.test" && st.DNS.Health == ""
	})
	var wm0 int
	if err := ah.Do(func() error {
		ifi, err := net.InterfaceByName("wm0")
		if err == nil {
			wm0 = ifi.Index
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !poll.Wait(10*time.Second, func() bool {
		fake.mu.Lock()
		defer fake.mu.Unlock()
		return int(fake.link) == wm0 && slices.Equal(fake.dns, []netip.Addr{netip.MustParseAddr("100.100.100.100")}) &&
			slices.Equal(fake.domains, []string{"mesh.test", "~."}) && fake.def
	}) {
		fake.mu.Lock()
		t.Fatalf("resolved got link %d (wm0 is %d), dns %v, domains %v, default route %v", fake.link, wm0, fake.dns, fake.domains, fake.def)
	}
	if got := readFile(t, file); got != stub {
		t.Fatalf("resolv.conf written in resolved mode:\n%s", got)
	}
	// resolved would now send b.mesh.test to 100.100.100.100: it answers.
	var got netip.Addr
	if err := ah.Do(func() error {
		c := &mdns.Client{Timeout: 5 * time.Second}
		m := new(mdns.Msg)
		m.SetQuestion("b.mesh.test.", mdns.TypeA)
		r, _, err := c.ExchangeContext(context.Background(), m, "100.100.100.100:53")
		if err == nil && len(r.Answer) == 1 {
			if rr, ok := r.Answer[0].(*mdns.A); ok {
				got, _ = netip.AddrFromSlice(rr.A.To4())
			}
		}
		return err
	}); err != nil || got != bIP {
		t.Fatalf("100.100.100.100 answered b.mesh.test with %v (%v), want %v", got, err, bIP)
	}
	a.stop()
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if !slices.Equal(fake.reverted, []int32{int32(wm0)}) {
		t.Fatalf("RevertLink calls %v, want [%d]", fake.reverted, wm0)
	}
}
