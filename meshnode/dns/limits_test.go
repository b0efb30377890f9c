package dns

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	mdns "github.com/miekg/dns"
)

// pipeUpstream is an in-memory nameserver for synctest: each dial gets a
// net.Pipe, whose blocking is visible to synctest, so fake time runs while
// queries wait. udpSilent drops UDP queries; tcpSilent drops TCP ones.
type pipeUpstream struct {
	udpSilent, tcpSilent bool
	mu                   sync.Mutex
	dials                []dialRecord
	wg                   sync.WaitGroup
}

type dialRecord struct {
	network string
	at      time.Time
}

func (p *pipeUpstream) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	p.mu.Lock()
	p.dials = append(p.dials, dialRecord{network, time.Now()})
	p.mu.Unlock()
	client, server := net.Pipe()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer server.Close()
		conn := &mdns.Conn{Conn: server}
		if network == "udp" {
			conn.Conn = packetConn{server}
		}
		req, err := conn.ReadMsg()
		if err != nil {
			return
		}
		if network == "udp" && p.udpSilent || network == "tcp" && p.tcpSilent {
			server.Read(make([]byte, 1)) // hold until the client gives up
			return
		}
		m := new(mdns.Msg)
		m.SetReply(req)
		m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: req.Question[0].Name, Rrtype: mdns.TypeA,
			Class: mdns.ClassINET, Ttl: 60}, A: net.IPv4(198, 18, 0, 66).To4()})
		conn.WriteMsg(m)
	}()
	return client, nil
}

func (p *pipeUpstream) record() []dialRecord {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]dialRecord(nil), p.dials...)
}

// TestTCPRacedInAfterTwoSeconds: UDP gets no answer; TCP starts 2 s
// later and answers.
func TestTCPRacedInAfterTwoSeconds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := &pipeUpstream{udpSilent: true}
		r := meshResolver(t, Config{Dialer: up}, Settings{Nameservers: []netip.AddrPort{ap("198.18.0.53:53")}})
		start := time.Now()
		resp, src := ask(t, r, "slow-udp.example.", mdns.TypeA)
		if src != SourceGlobal || firstA(resp) != netip.MustParseAddr("198.18.0.66") {
			t.Fatalf("answer %v from %s", resp, src)
		}
		if took := time.Since(start); took != tcpRaceDelay {
			t.Fatalf("answered after %v, want %v", took, tcpRaceDelay)
		}
		d := up.record()
		if len(d) != 2 || d[0].network != "udp" || d[1].network != "tcp" || d[1].at.Sub(d[0].at) != 2*time.Second {
			t.Fatalf("dials %+v", d)
		}
		up.wg.Wait()
	})
}

// TestUDPAnswerNeedsNoTCP: a prompt UDP answer never starts TCP.
func TestUDPAnswerNeedsNoTCP(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := &pipeUpstream{}
		r := meshResolver(t, Config{Dialer: up}, Settings{Nameservers: []netip.AddrPort{ap("198.18.0.53:53")}})
		ask(t, r, "fast.example.", mdns.TypeA)
		time.Sleep(time.Minute) // any TCP attempt would have started
		if d := up.record(); len(d) != 1 || d[0].network != "udp" {
			t.Fatalf("dials %+v", d)
		}
		up.wg.Wait()
	})
}

// TestQueryTimeout: an upstream that answers nothing costs a query 10 s,
// then SERVFAIL.
func TestQueryTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := &pipeUpstream{udpSilent: true, tcpSilent: true}
		r := meshResolver(t, Config{Dialer: up}, Settings{Nameservers: []netip.AddrPort{ap("198.18.0.53:53"), ap("198.18.0.54:53")}})
		start := time.Now()
		resp, _ := ask(t, r, "black-hole.example.", mdns.TypeA)
		if resp.Rcode != mdns.RcodeServerFailure {
			t.Fatalf("answer %v", resp)
		}
		if took := time.Since(start); took != queryTimeout {
			t.Fatalf("gave up after %v, want %v", took, queryTimeout)
		}
		up.wg.Wait()
	})
}

// TestFloodBounded: a flood of forwarded queries to a nameserver that never
// answers holds at most 256 slots; the rest get SERVFAIL at once, and mesh
// names still answer while the flood is in flight.
func TestFloodBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := &pipeUpstream{udpSilent: true, tcpSilent: true}
		r := meshResolver(t, Config{Dialer: up}, Settings{Nameservers: []netip.AddrPort{ap("198.18.0.53:53")}})
		const flood = 400
		var done, servfail atomic.Int64
		var wg sync.WaitGroup
		for i := 0; i < flood; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := new(mdns.Msg)
				m.SetQuestion("flood.example.", mdns.TypeA)
				resp, _ := r.Query(context.Background(), m)
				done.Add(1)
				if resp.Rcode == mdns.RcodeServerFailure {
					servfail.Add(1)
				}
			}()
		}
		synctest.Wait() // every query is either answered or waiting
		if got := done.Load(); got != flood-maxInFlight {
			t.Fatalf("%d queries answered at once, want %d", got, flood-maxInFlight)
		}
		if got := len(r.sem); got != maxInFlight {
			t.Fatalf("%d in flight, want %d", got, maxInFlight)
		}
		resp, src := ask(t, r, "b.mesh.internal.", mdns.TypeA)
		if src != SourceMesh || firstA(resp) != netip.MustParseAddr("100.64.0.2") {
			t.Fatalf("mesh name during the flood: %v", resp)
		}
		wg.Wait()
		if servfail.Load() != flood {
			t.Fatalf("%d of %d flood queries got SERVFAIL", servfail.Load(), flood)
		}
		if len(r.sem) != 0 {
			t.Fatalf("%d slots still held", len(r.sem))
		}
		up.wg.Wait()
	})
}
