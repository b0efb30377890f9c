package dns

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
)

// fakeWriter is a ResponseWriter that keeps what the resolver writes.
type fakeWriter struct {
	udp bool
	out []*mdns.Msg
}

func (w *fakeWriter) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(100, 100, 100, 100), Port: 53}
}
func (w *fakeWriter) RemoteAddr() net.Addr {
	if w.udp {
		return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
}
func (w *fakeWriter) WriteMsg(m *mdns.Msg) error  { w.out = append(w.out, m); return nil }
func (w *fakeWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *fakeWriter) Close() error                { return nil }
func (w *fakeWriter) TsigStatus() error           { return nil }
func (w *fakeWriter) TsigTimersOnly(bool)         {}
func (w *fakeWriter) Hijack()                     {}
func (w *fakeWriter) Network() string {
	if w.udp {
		return "udp"
	}
	return "tcp"
}

func packed(t testing.TB, name string, qtype uint16, edns bool) []byte {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	if edns {
		m.SetEdns0(4096, true)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func fuzzSeeds(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"b.mesh.internal.", mdns.TypeA}, {"b.", mdns.TypeAAAA}, {"2.0.64.100.in-addr.arpa.", mdns.TypePTR},
		{"printer.mesh.internal.", mdns.TypeANY}, {"db.corp.test.", mdns.TypeA}, {"example.test.", mdns.TypeMX},
		{".", mdns.TypeNS}, {"alias.mesh.internal.", mdns.TypeCNAME},
	} {
		f.Add(packed(f, q.name, q.qtype, false), true)
		f.Add(packed(f, q.name, q.qtype, true), false)
	}
	full := packed(f, "b.mesh.internal.", mdns.TypeA, true)
	f.Add(full[:len(full)/2], true)                                        // truncated
	f.Add(full[:12], true)                                                 // header only
	f.Add([]byte("\xde\xad\xbe\xef garbage"), true)                        // garbage
	f.Add(append(full, bytes.Repeat([]byte{0xc0, 0x0c}, 32000)...), false) // oversized
	f.Add([]byte{}, true)
}

// FuzzResolver: whatever a client sends, the resolver answers (or drops)
// without panicking, and whatever it answers packs.
func FuzzResolver(f *testing.F) {
	fuzzSeeds(f)
	up := &pipeUpstream{}
	r := meshResolver(f, Config{Dialer: up}, Settings{
		Nameservers: []netip.AddrPort{ap("198.18.0.53:53")},
		Split:       map[string][]netip.AddrPort{"corp.test": {ap("198.18.0.54:53")}},
		Extra: []Record{{Name: "printer.mesh.internal", Type: "A", Value: "198.19.50.10"},
			{Name: "alias.mesh.internal", Type: "CNAME", Value: "b.mesh.internal"}},
	})
	f.Fuzz(func(t *testing.T, raw []byte, udp bool) {
		req := new(mdns.Msg)
		if err := req.Unpack(raw); err != nil {
			return // the server drops what does not unpack
		}
		w := &fakeWriter{udp: udp}
		r.ServeDNS(w, req)
		for _, m := range w.out {
			b, err := m.Pack()
			if err != nil {
				t.Fatalf("answer does not pack: %v\n%v", err, m)
			}
			if udp && len(b) > maxUDPSize {
				t.Fatalf("UDP answer of %d bytes", len(b))
			}
		}
	})
}

// hostileUpstream answers every query with the given bytes.
type hostileUpstream struct{ answer []byte }

func (h *hostileUpstream) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	client, server := net.Pipe()
	go func() {
		defer server.Close()
		buf := make([]byte, 2048)
		n, _ := server.Read(buf)
		q := buf[:n]
		if network == "tcp" && len(q) >= 2 {
			q = q[2:]
		}
		// The query's ID, so that the answer is taken for one.
		answer := append([]byte(nil), h.answer...)
		if len(answer) >= 2 && len(q) >= 2 {
			copy(answer, q[:2])
		}
		if network == "tcp" {
			server.Write([]byte{byte(len(answer) >> 8), byte(len(answer))})
		}
		server.Write(answer)
	}()
	return client, nil
}

// FuzzUpstreamAnswer: a nameserver is on the network too; whatever it
// answers, the resolver survives and answers its client.
func FuzzUpstreamAnswer(f *testing.F) {
	ok := new(mdns.Msg)
	ok.SetQuestion("example.test.", mdns.TypeA)
	ok.Response = true
	b, _ := ok.Pack()
	f.Add(b)
	f.Add(b[:5])
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, answer []byte) {
		r := meshResolver(t, Config{Dialer: &hostileUpstream{answer: answer}}, Settings{Nameservers: []netip.AddrPort{ap("198.18.0.53:53")}})
		m := new(mdns.Msg)
		m.SetQuestion("example.test.", mdns.TypeA)
		ctx, cancel := context.WithTimeout(context.Background(), 50_000_000) // 50 ms: the pipe answers at once
		defer cancel()
		resp, _ := r.Query(ctx, m)
		if resp == nil || resp.Id != m.Id {
			t.Fatalf("answer %v", resp)
		}
		if _, err := resp.Pack(); err != nil {
			t.Fatalf("answer does not pack: %v", err)
		}
	})
}
