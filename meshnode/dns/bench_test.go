package dns

import (
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
)

// Benchmarks over real loopback UDP sockets, each query a full round trip
// from a miekg/dns client. BenchmarkUpstreamDirect is the baseline: the
// same client asking the upstream nameserver (a miekg/dns server) itself.
//
//	go test -run '^$' -bench . -benchtime 20000x ./meshnode/dns/
//	go test -run '^$' -bench 'Parallel' -cpu 1 ./meshnode/dns/   (queries/s on one core)

func benchQuery(b *testing.B, addr, name string) {
	c := &mdns.Client{Net: "udp"}
	conn, err := c.Dial(addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	m := new(mdns.Msg)
	m.SetQuestion(name, mdns.TypeA)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, _, err := c.ExchangeWithConn(m, conn)
		if err != nil || len(resp.Answer) == 0 {
			b.Fatalf("%s: %v %v", name, resp, err)
		}
	}
}

// BenchmarkMeshName: the resolver's answer for a peer's name.
func BenchmarkMeshName(b *testing.B) {
	r := meshResolver(b, Config{}, Settings{})
	benchQuery(b, serve(b, r), "b.mesh.internal.")
}

// BenchmarkUpstreamDirect: the upstream asked directly (baseline).
func BenchmarkUpstreamDirect(b *testing.B) {
	up := startUpstream(b, "198.18.0.1")
	benchQuery(b, up.addr.String(), "www.example.test.")
}

// BenchmarkForwarded: a name forwarded to that upstream.
func BenchmarkForwarded(b *testing.B) {
	up := startUpstream(b, "198.18.0.1")
	r := meshResolver(b, Config{}, Settings{Nameservers: []netip.AddrPort{up.addr}})
	benchQuery(b, serve(b, r), "www.example.test.")
}

// BenchmarkParallelMeshName: many clients at once; with -cpu 1 its ns/op
// is the inverse of queries per second on one core.
func BenchmarkParallelMeshName(b *testing.B) {
	r := meshResolver(b, Config{}, Settings{})
	benchParallel(b, serve(b, r), "b.mesh.internal.")
}

// BenchmarkParallelUpstreamDirect: the same load on the plain miekg/dns
// server (baseline for queries per second).
func BenchmarkParallelUpstreamDirect(b *testing.B) {
	up := startUpstream(b, "198.18.0.1")
	benchParallel(b, up.addr.String(), "www.example.test.")
}

func benchParallel(b *testing.B, addr, name string) {
	b.SetParallelism(16)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := &mdns.Client{Net: "udp"}
		conn, err := c.Dial(addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		m := new(mdns.Msg)
		m.SetQuestion(name, mdns.TypeA)
		for pb.Next() {
			if _, _, err := c.ExchangeWithConn(m, conn); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
