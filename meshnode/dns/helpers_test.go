package dns

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	mdns "github.com/miekg/dns"
)

// upstream is a real DNS server on loopback (UDP and TCP, one port) that
// answers every A query with its own address, so a test can tell which
// upstream answered.
type upstream struct {
	addr   netip.AddrPort
	answer netip.Addr
	// truncUDP sets TC on UDP answers (with no records).
	truncUDP atomic.Bool
	udp, tcp atomic.Int64
	mu       sync.Mutex
	names    []string
}

func startUpstream(t testing.TB, answer string) *upstream {
	t.Helper()
	u := &upstream{answer: netip.MustParseAddr(answer)}
	pc, ln := listenBoth(t)
	port := pc.LocalAddr().(*net.UDPAddr).Port
	u.addr = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, req *mdns.Msg) {
		_, isUDP := w.RemoteAddr().(*net.UDPAddr)
		if isUDP {
			u.udp.Add(1)
		} else {
			u.tcp.Add(1)
		}
		u.mu.Lock()
		u.names = append(u.names, req.Question[0].Name)
		u.mu.Unlock()
		m := new(mdns.Msg)
		m.SetReply(req)
		if isUDP && u.truncUDP.Load() {
			m.Truncated = true
			w.WriteMsg(m)
			return
		}
		if req.Question[0].Qtype == mdns.TypeA {
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: req.Question[0].Name, Rrtype: mdns.TypeA,
				Class: mdns.ClassINET, Ttl: 60}, A: u.answer.AsSlice()})
		}
		w.WriteMsg(m)
	})
	for _, s := range []*mdns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
		t.Cleanup(func() { s.Shutdown() })
	}
	return u
}

// listenBoth listens on one loopback port for UDP and TCP; the UDP port
// the kernel picks may be taken for TCP, so it tries a few.
func listenBoth(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for i := 0; ; i++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close()
		if i == 20 {
			t.Fatal(err)
		}
	}
}

func (u *upstream) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.names...)
}

func ask(t testing.TB, r *Resolver, name string, qtype uint16) (*mdns.Msg, string) {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	resp, src := r.Query(context.Background(), m)
	if resp == nil {
		t.Fatalf("%s %s: no answer", name, mdns.TypeToString[qtype])
	}
	if resp.Id != m.Id {
		t.Fatalf("%s: answer id %d, query id %d", name, resp.Id, m.Id)
	}
	return resp, src
}

// firstA returns the first A record's address in m.
func firstA(m *mdns.Msg) netip.Addr {
	for _, rr := range m.Answer {
		if a, ok := rr.(*mdns.A); ok {
			ip, _ := netip.AddrFromSlice(a.A)
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// meshResolver has the mesh of the tests: domain mesh.internal, this node
// a (100.64.0.1), peers b (100.64.0.2) and c (100.64.0.3).
func meshResolver(t testing.TB, cfg Config, s Settings) *Resolver {
	t.Helper()
	r := New(cfg)
	if s.Domain == "" {
		s.Domain = "mesh.internal"
	}
	if err := r.SetSettings(s); err != nil {
		t.Fatal(err)
	}
	if err := r.SetSelf("a", []netip.Addr{netip.MustParseAddr("100.64.0.1")}); err != nil {
		t.Fatal(err)
	}
	for id, p := range map[string]struct{ name, ip string }{"nodekey:b": {"b", "100.64.0.2"}, "nodekey:c": {"c", "100.64.0.3"}} {
		if err := r.PeerUpsert(id, p.name, []netip.Addr{netip.MustParseAddr(p.ip)}); err != nil {
			t.Fatal(err)
		}
	}
	return r
}
