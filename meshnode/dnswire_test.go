package meshnode

import (
	"context"
	"errors"
	"time"

	"github.com/wiremesh/wiremesh/internal/poll"
	"net/netip"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/meshnode/dns"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/netmap"
)

// askDNS is `meshnode dns query` without the socket.
func askDNS(t *testing.T, n *Node, name, qtype string) localapi.DNSAnswer {
	t.Helper()
	a, err := n.DNSQuery(context.Background(), name, qtype)
	if err != nil {
		t.Fatalf("dns query %s %s: %v", name, qtype, err)
	}
	return a
}

func wantAnswer(t *testing.T, a localapi.DNSAnswer, rcode, source, contains string) {
	t.Helper()
	if a.Rcode != rcode || a.Source != source || contains != "" && !strings.Contains(strings.Join(a.Answers, "\n"), contains) ||
		contains == "" && len(a.Answers) != 0 {
		t.Fatalf("%s %s: got %+v, want %s from %s with %q", a.Name, a.Type, a, rcode, source, contains)
	}
}

// TestDNSFedFromNetmapDeltas: the resolver follows the netmap one change
// at a time: the full map's peers, own name and settings; a delta that
// renames a peer, adds one, removes one, and one that changes only the
// settings; and a peer whose key expired drops out.
func TestDNSFedFromNetmapDeltas(t *testing.T) {
	n := newTestNodeWith(t, Config{AcceptDNS: true})
	self := selfNode()
	self.NodeKey = n.priv.Public()
	b, c := testPeer(2, "100.64.0.2"), testPeer(3, "100.64.0.3")
	b.Name, c.Name = "b", "c"
	settings := netmap.DNS{MagicDNS: true, Domain: "mesh.test"}
	if err := n.applyFrame(&netmap.MapResponse{Full: true, Self: &self, Peers: []netmap.Node{b, c}, DNS: &settings}); err != nil {
		t.Fatal(err)
	}
	wantAnswer(t, askDNS(t, n, "b.mesh.test", "A"), "NOERROR", dns.SourceMesh, "100.64.0.2")
	wantAnswer(t, askDNS(t, n, "c", "A"), "NOERROR", dns.SourceMesh, "100.64.0.3")
	wantAnswer(t, askDNS(t, n, "self", "A"), "NOERROR", dns.SourceMesh, "100.64.0.1")
	wantAnswer(t, askDNS(t, n, "2.0.64.100.in-addr.arpa", "PTR"), "NOERROR", dns.SourcePTR, "b.mesh.test.")
	if st := n.Status().DNS; st == nil || st.Mode != dns.ModeUserspace || st.Domain != "mesh.test" || st.Health != "" {
		t.Fatalf("status dns %+v", st)
	}

	// Rename b, add d, remove c: one delta.
	b2 := b
	b2.Name = "bee"
	d := testPeer(4, "100.64.0.4")
	d.Name = "d"
	if err := n.applyFrame(&netmap.MapResponse{PeersChanged: []netmap.Node{b2, d}, PeersRemoved: []netmap.NodeID{c.ID}}); err != nil {
		t.Fatal(err)
	}
	wantAnswer(t, askDNS(t, n, "bee.mesh.test", "A"), "NOERROR", dns.SourceMesh, "100.64.0.2")
	wantAnswer(t, askDNS(t, n, "b.mesh.test", "A"), "NXDOMAIN", dns.SourceMesh, "")
	wantAnswer(t, askDNS(t, n, "c.mesh.test", "A"), "NXDOMAIN", dns.SourceMesh, "")
	wantAnswer(t, askDNS(t, n, "d.mesh.test", "A"), "NOERROR", dns.SourceMesh, "100.64.0.4")

	// A settings-only delta: an extra record outside the mesh domain.
	settings.ExtraRecords = []netmap.DNSRecord{{Name: "printer.corp.test", Type: "A", Value: "198.18.50.10"}}
	if err := n.applyFrame(&netmap.MapResponse{DNS: &settings}); err != nil {
		t.Fatal(err)
	}
	wantAnswer(t, askDNS(t, n, "printer.corp.test", "A"), "NOERROR", dns.SourceExtra, "198.18.50.10")
	wantAnswer(t, askDNS(t, n, "d", "A"), "NOERROR", dns.SourceMesh, "100.64.0.4")

	// Settings the resolver refuses leave the old ones in force.
	bad := settings
	bad.ExtraRecords = []netmap.DNSRecord{{Name: "x.corp.test", Type: "A", Value: "not-an-address"}}
	if err := n.applyFrame(&netmap.MapResponse{DNS: &bad}); err != nil {
		t.Fatal(err)
	}
	wantAnswer(t, askDNS(t, n, "printer.corp.test", "A"), "NOERROR", dns.SourceExtra, "198.18.50.10")

	// MagicDNS off: no names.
	off := netmap.DNS{MagicDNS: false, Domain: "mesh.test"}
	if err := n.applyFrame(&netmap.MapResponse{DNS: &off}); err != nil {
		t.Fatal(err)
	}
	if a := askDNS(t, n, "d.mesh.test", "A"); a.Source == dns.SourceMesh && a.Rcode == "NOERROR" {
		t.Fatalf("MagicDNS off still answers %+v", a)
	}

	// Bad requests are refused before the resolver.
	if _, err := n.DNSQuery(context.Background(), "d", "NOSUCHTYPE"); err == nil {
		t.Fatal("unknown type accepted")
	}
	if _, err := n.DNSQuery(context.Background(), strings.Repeat("a", 70)+".x", "A"); err == nil {
		t.Fatal("a 70-character label accepted")
	}
}

// TestDNSOffWithoutAcceptDNS: --accept-dns=false runs no resolver, says
// "off" in status, answers no query and the SOCKS5 proxy knows no names.
func TestDNSOffWithoutAcceptDNS(t *testing.T) {
	n := newTestNode(t, nil)
	self := selfNode()
	self.NodeKey = n.priv.Public()
	b := testPeer(2, "100.64.0.2")
	b.Name = "b"
	if err := n.applyFrame(&netmap.MapResponse{Full: true, Self: &self, Peers: []netmap.Node{b},
		DNS: &netmap.DNS{MagicDNS: true, Domain: "mesh.test"}}); err != nil {
		t.Fatal(err)
	}
	if st := n.Status().DNS; st == nil || st.Mode != dns.ModeOff {
		t.Fatalf("status dns %+v", st)
	}
	if _, err := n.DNSQuery(context.Background(), "b", "A"); err == nil {
		t.Fatal("a query answered with the resolver off")
	}
	if _, ok := n.resolveName("b"); ok {
		t.Fatal("SOCKS5 resolved a name with the resolver off")
	}
}

// TestSOCKS5ResolvesThroughMagicDNS: the proxy's names are the resolver's
// (mesh names with and without the domain, extra records), not a peer
// list of its own.
func TestSOCKS5ResolvesThroughMagicDNS(t *testing.T) {
	n := newTestNodeWith(t, Config{AcceptDNS: true})
	self := selfNode()
	self.NodeKey = n.priv.Public()
	b := testPeer(2, "100.64.0.2")
	b.Name = "b"
	s := netmap.DNS{MagicDNS: true, Domain: "mesh.test",
		ExtraRecords: []netmap.DNSRecord{{Name: "db.corp.test", Type: "CNAME", Value: "b.mesh.test"}}}
	if err := n.applyFrame(&netmap.MapResponse{Full: true, Self: &self, Peers: []netmap.Node{b}, DNS: &s}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"b", "b.mesh.test", "b.mesh.test.", "db.corp.test"} {
		if a, ok := n.resolveName(name); !ok || a != netip.MustParseAddr("100.64.0.2") {
			t.Fatalf("resolve %s: %v %v", name, a, ok)
		}
	}
	if _, ok := n.resolveName("nobody.mesh.test"); ok {
		t.Fatal("an unknown mesh name resolved")
	}
}

// TestDNSServeFailureIsAHealthWarning: a resolver that cannot start (port
// 53 taken) does not stop the node: status carries the reason as the DNS
// health warning, and the OS is not pointed at a resolver that is not
// there.
func TestDNSServeFailureIsAHealthWarning(t *testing.T) {
	n := newTestNodeWith(t, Config{AcceptDNS: true})
	fos := &countingOS{}
	n.dns.os = fos
	n.dns.serveFailed(n.log, errors.New("listen udp 100.100.100.100:53: address already in use"))
	self := selfNode()
	self.NodeKey = n.priv.Public()
	if err := n.applyFrame(&netmap.MapResponse{Full: true, Self: &self, DNS: &netmap.DNS{MagicDNS: true, Domain: "mesh.test"}}); err != nil {
		t.Fatal(err)
	}
	if st := n.Status().DNS; st == nil || !strings.Contains(st.Health, "address already in use") {
		t.Fatalf("status dns %+v", st)
	}
	if fos.sets != 0 {
		t.Fatalf("the OS was pointed at a resolver that is not serving (%d Set calls)", fos.sets)
	}
}

// countingOS is an OS configurator that counts Set calls.
type countingOS struct{ sets int }

func (c *countingOS) Set(context.Context, dns.OSConfig) error { c.sets++; return nil }
func (c *countingOS) Restore(context.Context) error           { return nil }
func (c *countingOS) Health() error                           { return nil }
func (c *countingOS) Mode() string                            { return dns.ModeFile }

// TestDNSRenamedPeer: a peer renamed at the coordinator (the console's
// rename) reaches the other node's resolver as a delta: the new name
// answers through `meshnode dns query` (the local API) and the old one is
// NXDOMAIN.
func TestDNSRenamedPeer(t *testing.T) {
	m := newMesh(t, "nyc")
	a := m.startNode(t, "a", "")
	b := m.startNode(t, "b", "")
	for _, n := range []*testNode{a, b} {
		n.waitStatus(t, "one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	ctx := context.Background()
	ask := func(name string) localapi.DNSAnswer {
		ans, err := a.api.DNSQuery(ctx, name, "A")
		if err != nil {
			t.Fatalf("dns query %s: %v", name, err)
		}
		return ans
	}
	if ans := ask("b"); ans.Rcode != "NOERROR" || ans.Source != dns.SourceMesh || len(ans.Answers) != 1 {
		t.Fatalf("b before the rename: %+v", ans)
	}
	if err := m.coord.RenameNode(ctx, "b", "bee"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	poll.Until(t, "the new name answers", func() bool { return ask("bee").Rcode == "NOERROR" })
	t.Logf("rename visible on a after %v", time.Since(start))
	if ans := ask("b.mesh.internal"); ans.Rcode != "NXDOMAIN" {
		t.Fatalf("the old name after the rename: %+v", ans)
	}
	if ans := ask("bee.mesh.internal"); len(ans.Answers) != 1 || !strings.Contains(ans.Answers[0], "100.64.") {
		t.Fatalf("the new name: %+v", ans)
	}
}
