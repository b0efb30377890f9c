package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
)

func TestMeshNames(t *testing.T) {
	r := meshResolver(t, Config{}, Settings{})
	for _, tc := range []struct {
		name string
		want string
	}{
		{"b.mesh.internal.", "100.64.0.2"},
		{"B.Mesh.Internal.", "100.64.0.2"},
		{"b.", "100.64.0.2"}, // bare name
		{"a.mesh.internal.", "100.64.0.1"},
		{"a.", "100.64.0.1"}, // own name
		{"c.mesh.internal", "100.64.0.3"},
	} {
		resp, src := ask(t, r, tc.name, mdns.TypeA)
		if resp.Rcode != mdns.RcodeSuccess || firstA(resp) != netip.MustParseAddr(tc.want) || src != SourceMesh || !resp.Authoritative {
			t.Errorf("%s: %v from %s", tc.name, resp, src)
			continue
		}
		if ttl := resp.Answer[0].Header().Ttl; ttl != 5 {
			t.Errorf("%s: TTL %d, want 5", tc.name, ttl)
		}
	}
	// No IPv6 address: NOERROR, no records, an SOA.
	if resp, _ := ask(t, r, "b.mesh.internal.", mdns.TypeAAAA); resp.Rcode != mdns.RcodeSuccess || len(resp.Answer) != 0 || len(resp.Ns) != 1 {
		t.Errorf("AAAA of b: %v", resp)
	}
	// Unknown names in the mesh domain: NXDOMAIN with an SOA whose
	// negative TTL is 10 s.
	for _, name := range []string{"nobody.mesh.internal.", "x.b.mesh.internal."} {
		resp, src := ask(t, r, name, mdns.TypeA)
		if resp.Rcode != mdns.RcodeNameError || src != SourceMesh || len(resp.Ns) != 1 {
			t.Fatalf("%s: %v", name, resp)
		}
		s, ok := resp.Ns[0].(*mdns.SOA)
		if !ok || s.Hdr.Name != "mesh.internal." || s.Minttl != 10 || s.Hdr.Ttl != 10 {
			t.Fatalf("%s: SOA %v", name, resp.Ns[0])
		}
	}
	if resp, _ := ask(t, r, "mesh.internal.", mdns.TypeSOA); resp.Rcode != mdns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Errorf("SOA of the domain: %v", resp)
	}
	if resp, _ := ask(t, r, "nobody.", mdns.TypeA); resp.Rcode != mdns.RcodeNameError {
		t.Errorf("unknown bare name: %v", resp)
	}
	if got := r.SearchDomains(); !slices.Equal(got, []string{"mesh.internal"}) {
		t.Errorf("search domains %v", got)
	}
}

// TestDeltas: peers come and go one at a time; a rename moves the name and
// the PTR answer with it.
func TestDeltas(t *testing.T) {
	r := meshResolver(t, Config{}, Settings{})
	if err := r.PeerUpsert("nodekey:b", "bee", []netip.Addr{netip.MustParseAddr("100.64.0.2")}); err != nil {
		t.Fatal(err)
	}
	if resp, _ := ask(t, r, "b.mesh.internal.", mdns.TypeA); resp.Rcode != mdns.RcodeNameError {
		t.Errorf("old name after rename: %v", resp)
	}
	if resp, _ := ask(t, r, "bee.mesh.internal.", mdns.TypeA); firstA(resp) != netip.MustParseAddr("100.64.0.2") {
		t.Errorf("new name after rename: %v", resp)
	}
	if resp, _ := ask(t, r, "2.0.64.100.in-addr.arpa.", mdns.TypePTR); len(resp.Answer) != 1 || resp.Answer[0].(*mdns.PTR).Ptr != "bee.mesh.internal." {
		t.Errorf("PTR after rename: %v", resp)
	}
	// A new address for c.
	r.PeerUpsert("nodekey:c", "c", []netip.Addr{netip.MustParseAddr("100.64.0.9")})
	if resp, _ := ask(t, r, "c.mesh.internal.", mdns.TypeA); firstA(resp) != netip.MustParseAddr("100.64.0.9") {
		t.Errorf("c's new address: %v", resp)
	}
	if resp, _ := ask(t, r, "3.0.64.100.in-addr.arpa.", mdns.TypePTR); resp.Rcode != mdns.RcodeNameError {
		t.Errorf("c's old address still has a PTR: %v", resp)
	}
	r.PeerRemove("nodekey:c")
	r.PeerRemove("nodekey:never-there")
	if resp, _ := ask(t, r, "c.mesh.internal.", mdns.TypeA); resp.Rcode != mdns.RcodeNameError {
		t.Errorf("removed peer: %v", resp)
	}
	if err := r.PeerUpsert("nodekey:x", "not a label", nil); err == nil {
		t.Error("bad peer name accepted")
	}
	// A domain change applies to existing peers at once.
	if err := r.SetSettings(Settings{Domain: "corp.mesh"}); err != nil {
		t.Fatal(err)
	}
	if resp, _ := ask(t, r, "bee.corp.mesh.", mdns.TypeA); firstA(resp) != netip.MustParseAddr("100.64.0.2") {
		t.Errorf("after the domain change: %v", resp)
	}
}

func TestPTR(t *testing.T) {
	up := startUpstream(t, "198.18.0.99")
	r := meshResolver(t, Config{}, Settings{Nameservers: []netip.AddrPort{up.addr}})
	resp, src := ask(t, r, "2.0.64.100.in-addr.arpa.", mdns.TypePTR)
	if src != SourcePTR || len(resp.Answer) != 1 || resp.Answer[0].(*mdns.PTR).Ptr != "b.mesh.internal." || resp.Answer[0].Header().Ttl != 5 {
		t.Fatalf("PTR of b: %v", resp)
	}
	if resp, _ := ask(t, r, "1.0.64.100.in-addr.arpa.", mdns.TypePTR); len(resp.Answer) != 1 || resp.Answer[0].(*mdns.PTR).Ptr != "a.mesh.internal." {
		t.Fatalf("PTR of self: %v", resp)
	}
	// Anywhere in 100.64.0.0/10, even an address nobody has: ours.
	for _, name := range []string{"9.9.64.100.in-addr.arpa.", "255.255.127.100.in-addr.arpa."} {
		resp, src := ask(t, r, name, mdns.TypePTR)
		if resp.Rcode != mdns.RcodeNameError || src != SourcePTR || len(resp.Ns) != 1 || resp.Ns[0].(*mdns.SOA).Minttl != 10 {
			t.Errorf("%s: %v", name, resp)
		}
	}
	if resp, _ := ask(t, r, "64.100.in-addr.arpa.", mdns.TypePTR); resp.Rcode != mdns.RcodeSuccess || len(resp.Answer) != 0 {
		t.Errorf("partial reverse name: %v", resp)
	}
	// Outside the /10: forwarded.
	for _, name := range []string{"1.1.128.100.in-addr.arpa.", "1.1.63.100.in-addr.arpa.", "1.0.18.198.in-addr.arpa."} {
		if _, src := ask(t, r, name, mdns.TypePTR); src != SourceGlobal {
			t.Errorf("%s answered by %s, want forwarded", name, src)
		}
	}
}

func TestExtraRecords(t *testing.T) {
	up := startUpstream(t, "198.18.0.99")
	r := meshResolver(t, Config{}, Settings{
		Nameservers: []netip.AddrPort{up.addr},
		Extra: []Record{
			{Name: "printer.mesh.internal", Type: "A", Value: "198.19.50.10"},
			{Name: "db.corp.test", Type: "A", Value: "198.19.50.11"}, // outside the mesh domain
			{Name: "v6.corp.test", Type: "AAAA", Value: "2001:db8::1"},
			{Name: "alias.mesh.internal", Type: "CNAME", Value: "b.mesh.internal"},
		},
	})
	for name, want := range map[string]string{"printer.mesh.internal.": "198.19.50.10", "db.corp.test.": "198.19.50.11", "DB.corp.test.": "198.19.50.11"} {
		resp, src := ask(t, r, name, mdns.TypeA)
		if src != SourceExtra || firstA(resp) != netip.MustParseAddr(want) || resp.Answer[0].Header().Ttl != 5 {
			t.Errorf("%s: %v from %s", name, resp, src)
		}
	}
	if resp, _ := ask(t, r, "v6.corp.test.", mdns.TypeAAAA); len(resp.Answer) != 1 {
		t.Errorf("AAAA record: %v", resp)
	}
	resp, _ := ask(t, r, "alias.mesh.internal.", mdns.TypeA)
	if len(resp.Answer) != 2 || resp.Answer[0].(*mdns.CNAME).Target != "b.mesh.internal." || firstA(resp) != netip.MustParseAddr("100.64.0.2") {
		t.Errorf("CNAME: %v", resp)
	}
	// Other names in corp.test are not ours.
	if _, src := ask(t, r, "www.corp.test.", mdns.TypeA); src != SourceGlobal {
		t.Errorf("www.corp.test answered by %s", src)
	}
	// Bad settings are refused and the old ones stay.
	for _, bad := range []Settings{
		{Domain: "mesh.internal", Extra: []Record{{Name: "x.mesh.internal", Type: "MX", Value: "y"}}},
		{Domain: "mesh.internal", Extra: []Record{{Name: "x.mesh.internal", Type: "A", Value: "2001:db8::1"}}},
		{Domain: "mesh.internal", Extra: []Record{{Name: "bad name!", Type: "A", Value: "198.19.0.1"}}},
		{Domain: "..bad"},
		{Domain: "mesh.internal", Split: map[string][]netip.AddrPort{"corp.test": nil}},
	} {
		if err := r.SetSettings(bad); err == nil {
			t.Errorf("settings %+v accepted", bad)
		}
	}
	if _, src := ask(t, r, "printer.mesh.internal.", mdns.TypeA); src != SourceExtra {
		t.Error("rejected settings replaced the old ones")
	}
}

// TestForwardOrder: longest split suffix, then global, then the OS's
// resolvers.
func TestForwardOrder(t *testing.T) {
	corp := startUpstream(t, "198.18.0.1")
	sub := startUpstream(t, "198.18.0.2")
	global := startUpstream(t, "198.18.0.3")
	osr := startUpstream(t, "198.18.0.4")
	r := meshResolver(t, Config{}, Settings{
		Nameservers: []netip.AddrPort{global.addr},
		Split: map[string][]netip.AddrPort{
			"corp.test":     {corp.addr},
			"sub.corp.test": {sub.addr},
		},
	})
	r.SetOSResolvers([]netip.AddrPort{osr.addr})
	for name, want := range map[string]struct {
		ip, src string
	}{
		"db.corp.test.":      {"198.18.0.1", SourceSplit},
		"x.sub.corp.test.":   {"198.18.0.2", SourceSplit},
		"xsub.corp.test.":    {"198.18.0.1", SourceSplit}, // a suffix is whole labels
		"example.test.":      {"198.18.0.3", SourceGlobal},
		"corp.test.example.": {"198.18.0.3", SourceGlobal},
	} {
		resp, src := ask(t, r, name, mdns.TypeA)
		if firstA(resp) != netip.MustParseAddr(want.ip) || src != want.src {
			t.Errorf("%s: %v from %s, want %s from %s", name, firstA(resp), src, want.ip, want.src)
		}
	}
	// Without global nameservers, the OS's resolvers.
	r.SetSettings(Settings{Domain: "mesh.internal", Split: map[string][]netip.AddrPort{"corp.test": {corp.addr}}})
	if resp, src := ask(t, r, "example.test.", mdns.TypeA); firstA(resp) != netip.MustParseAddr("198.18.0.4") || src != SourceOS {
		t.Errorf("fallback: %v from %s", resp, src)
	}
	// With nothing at all: SERVFAIL.
	r.SetOSResolvers(nil)
	if resp, src := ask(t, r, "example.test.", mdns.TypeA); resp.Rcode != mdns.RcodeServerFailure || src != SourceNone {
		t.Errorf("nowhere to forward: %v from %s", resp, src)
	}
	all, suffixes := r.Routes()
	if all || !slices.Equal(suffixes, []string{"mesh.internal", "corp.test"}) {
		t.Errorf("Routes() = %v %v", all, suffixes)
	}
}

// TestForwardRetriesTruncatedOverTCP: a truncated UDP answer is asked again
// over TCP at once.
func TestForwardRetriesTruncatedOverTCP(t *testing.T) {
	up := startUpstream(t, "198.18.0.7")
	up.truncUDP.Store(true)
	r := meshResolver(t, Config{}, Settings{Nameservers: []netip.AddrPort{up.addr}})
	resp, _ := ask(t, r, "big.example.", mdns.TypeA)
	if resp.Truncated || firstA(resp) != netip.MustParseAddr("198.18.0.7") {
		t.Fatalf("answer %v", resp)
	}
	if up.udp.Load() != 1 || up.tcp.Load() != 1 {
		t.Fatalf("upstream saw %d UDP and %d TCP queries", up.udp.Load(), up.tcp.Load())
	}
}

// TestForwardNextNameserver: a dead first nameserver does not stop the
// query; the next one answers.
func TestForwardNextNameserver(t *testing.T) {
	up := startUpstream(t, "198.18.0.8")
	// A closed port: UDP and TCP are refused at once.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	r := meshResolver(t, Config{}, Settings{Nameservers: []netip.AddrPort{dead, up.addr}})
	if resp, _ := ask(t, r, "x.example.", mdns.TypeA); firstA(resp) != netip.MustParseAddr("198.18.0.8") {
		t.Fatalf("answer %v", resp)
	}
}

// recordingDialer records what it dials and dials for real.
type recordingDialer struct {
	dialed chan string
	d      net.Dialer
}

func (r *recordingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	r.dialed <- network + " " + addr
	return r.d.DialContext(ctx, network, addr)
}

// TestMeshNameserverThroughTunnel: a nameserver on a mesh address (the
// Pi-hole case) is reached through the mesh dialer, others directly.
func TestMeshNameserverThroughTunnel(t *testing.T) {
	up := startUpstream(t, "198.18.0.5")
	mesh := &recordingDialer{dialed: make(chan string, 8)}
	direct := &recordingDialer{dialed: make(chan string, 8)}
	r := meshResolver(t, Config{MeshDialer: mesh, Dialer: direct}, Settings{
		Nameservers: []netip.AddrPort{ap("100.64.0.53:53")},
		Split:       map[string][]netip.AddrPort{"lan.test": {up.addr}},
	})
	// The mesh dialer is the tunnel; here it leads nowhere, so point it
	// at the loopback upstream to get an answer back.
	mesh.d = net.Dialer{}
	meshTarget := up.addr.String()
	r.cfg.MeshDialer = dialerFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		mesh.dialed <- network + " " + addr
		var d net.Dialer
		return d.DialContext(ctx, network, meshTarget)
	})
	if resp, _ := ask(t, r, "ads.example.", mdns.TypeA); firstA(resp) != netip.MustParseAddr("198.18.0.5") {
		t.Fatalf("through the mesh: %v", resp)
	}
	if got := <-mesh.dialed; got != "udp 100.64.0.53:53" {
		t.Fatalf("mesh dialer dialed %q", got)
	}
	ask(t, r, "nas.lan.test.", mdns.TypeA)
	if got := <-direct.dialed; got != "udp "+up.addr.String() {
		t.Fatalf("direct dialer dialed %q", got)
	}
	select {
	case got := <-mesh.dialed:
		t.Fatalf("LAN nameserver dialed through the mesh: %s", got)
	default:
	}
}

type dialerFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (f dialerFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}

func TestLookupHost(t *testing.T) {
	corp := startUpstream(t, "198.18.0.1")
	r := meshResolver(t, Config{}, Settings{
		SearchDomains: []string{"corp.test"},
		Split:         map[string][]netip.AddrPort{"corp.test": {corp.addr}},
	})
	for name, want := range map[string]struct{ ip, src string }{
		"b":                {"100.64.0.2", SourceMesh},
		"b.mesh.internal":  {"100.64.0.2", SourceMesh},
		"db":               {"198.18.0.1", SourceSplit}, // db.corp.test through the search list
		"db.corp.test":     {"198.18.0.1", SourceSplit},
		"100.64.0.3":       {"100.64.0.3", SourceNone},
		"b.mesh.internal.": {"100.64.0.2", SourceMesh},
	} {
		addrs, src, err := r.LookupHost(context.Background(), name)
		if err != nil || len(addrs) == 0 || addrs[0] != netip.MustParseAddr(want.ip) || src != want.src {
			t.Errorf("LookupHost(%q) = %v %s %v", name, addrs, src, err)
		}
	}
	if got := corp.seen(); !slices.Contains(got, "db.corp.test.") {
		t.Errorf("split upstream saw %v", got)
	}
	if _, _, err := r.LookupHost(context.Background(), "nobody.mesh.internal"); !errors.Is(err, ErrNoAnswer) {
		t.Errorf("unknown name: %v", err)
	}
}

func TestMalformedQueries(t *testing.T) {
	r := meshResolver(t, Config{}, Settings{})
	m := new(mdns.Msg)
	m.SetQuestion("b.mesh.internal.", mdns.TypeA)
	m.Question = append(m.Question, m.Question[0])
	if resp, _ := r.Query(context.Background(), m); resp.Rcode != mdns.RcodeNotImplemented {
		t.Errorf("two questions: %v", resp)
	}
	m = new(mdns.Msg)
	m.SetQuestion("b.mesh.internal.", mdns.TypeA)
	m.Response = true
	if resp, _ := r.Query(context.Background(), m); resp != nil {
		t.Errorf("answered a response: %v", resp)
	}
	m = new(mdns.Msg)
	m.SetQuestion("b.mesh.internal.", mdns.TypeA)
	m.Question[0].Qclass = mdns.ClassCHAOS
	if resp, _ := r.Query(context.Background(), m); resp.Rcode != mdns.RcodeRefused {
		t.Errorf("CHAOS class: %v", resp)
	}
	m = new(mdns.Msg)
	m.SetQuestion(strings.Repeat("x", 64)+".mesh.internal.", mdns.TypeA)
	if resp, _ := r.Query(context.Background(), m); resp.Rcode != mdns.RcodeFormatError {
		t.Errorf("64+ byte label: %v", resp)
	}
	// Not a host name, but in the mesh domain: never forwarded.
	m = new(mdns.Msg)
	m.SetQuestion("b*x.mesh.internal.", mdns.TypeA)
	if resp, src := r.Query(context.Background(), m); resp.Rcode != mdns.RcodeNameError || src != SourceMesh {
		t.Errorf("odd name in the mesh domain: %v from %s", resp, src)
	}
}
