package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	mdns "github.com/miekg/dns"
)

// Forwarding, per query:
//
//	take a slot (at most maxInFlight; none free: SERVFAIL now)
//	for each nameserver of the route, in order, until one answers:
//	    UDP query ──(answer)──────────────► done
//	       │ TC bit ──► TCP query now
//	       └ no answer in 2 s ──► TCP query raced beside it
//	    first usable answer wins; an error or SERVFAIL moves on
//	all of it within queryTimeout (10 s)
//
// The upstream query carries a fresh random ID; the client's ID is put back
// on the answer.

// errUpstream is returned for an answer that does not answer the question.
var errUpstream = errors.New("dns: upstream answer does not match the query")

func (r *Resolver) forward(ctx context.Context, req *mdns.Msg, ns []netip.AddrPort, source string) *mdns.Msg {
	select {
	case r.sem <- struct{}{}:
	default:
		r.metrics.forwardRefused.Inc()
		return reply(req, mdns.RcodeServerFailure)
	}
	r.metrics.inFlight.Inc()
	defer func() { <-r.sem; r.metrics.inFlight.Dec() }()

	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	start := time.Now()
	up := req.Copy()
	up.Id = mdns.Id()
	up.Compress = true
	if o := up.IsEdns0(); o == nil {
		up.SetEdns0(maxUDPSize, false)
	} else if o.UDPSize() < maxUDPSize {
		o.SetUDPSize(maxUDPSize)
	}
	var lastErr error
	for _, addr := range ns {
		resp, err := r.exchange(ctx, up, addr)
		if err == nil && resp.Rcode != mdns.RcodeServerFailure {
			r.metrics.forwardLatency.WithLabelValues(source).Observe(time.Since(start).Seconds())
			resp.Id = req.Id
			// The client's EDNS0 is answered by this resolver, not the
			// upstream: drop the upstream's OPT if the client sent none.
			if req.IsEdns0() == nil {
				stripOPT(resp)
			}
			return resp
		}
		if err == nil {
			err = fmt.Errorf("dns: %s answered SERVFAIL", addr)
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	r.metrics.forwardLatency.WithLabelValues(source).Observe(time.Since(start).Seconds())
	r.log.Debug("dns forward failed", "name", req.Question[0].Name, "source", source, "err", lastErr)
	return reply(req, mdns.RcodeServerFailure)
}

func stripOPT(m *mdns.Msg) {
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != mdns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	m.Extra = extra
}

type result struct {
	m   *mdns.Msg
	err error
	tcp bool
}

// exchange asks one nameserver: UDP, with TCP raced in after tcpRaceDelay
// or at once on a truncated UDP answer.
func (r *Resolver) exchange(ctx context.Context, m *mdns.Msg, addr netip.AddrPort) (*mdns.Msg, error) {
	// Packed once: Pack writes to the message, and two attempts may run.
	wire, err := m.Pack()
	if err != nil {
		return nil, fmt.Errorf("dns: pack query: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the attempt still running
	results := make(chan result, 2)
	go func() { results <- r.attempt(ctx, m, wire, addr, "udp") }()
	race := time.NewTimer(tcpRaceDelay)
	defer race.Stop()
	tcpStarted := false
	pending := 1
	startTCP := func() {
		if !tcpStarted {
			tcpStarted = true
			pending++
			go func() { results <- r.attempt(ctx, m, wire, addr, "tcp") }()
		}
	}
	var lastErr error
	for pending > 0 {
		select {
		case <-race.C:
			startTCP()
		case res := <-results:
			pending--
			switch {
			case res.err != nil:
				lastErr = res.err
			case res.m.Truncated && !res.tcp:
				lastErr = fmt.Errorf("dns: %s: truncated UDP answer", addr)
				startTCP()
			default:
				return res.m, nil
			}
			if pending == 0 && ctx.Err() == nil {
				// UDP failed outright (ICMP unreachable, ...): TCP
				// may still work; try it now rather than never.
				startTCP()
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("dns: %s: %w", addr, ctx.Err())
		}
	}
	return nil, lastErr
}

// attempt sends m (packed: wire) once over network and reads the matching
// answer. m is only read.
func (r *Resolver) attempt(ctx context.Context, m *mdns.Msg, wire []byte, addr netip.AddrPort, network string) result {
	d := r.cfg.Dialer
	if meshPrefix.Contains(addr.Addr()) {
		d = r.cfg.MeshDialer
	}
	c, err := d.DialContext(ctx, network, addr.String())
	if err != nil {
		return result{err: fmt.Errorf("dns: dial %s %s: %w", network, addr, err), tcp: network == "tcp"}
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	conn := &mdns.Conn{Conn: c, UDPSize: maxUDPSize}
	if network == "udp" {
		conn.Conn = packetConn{c}
	}
	if _, err := conn.Write(wire); err != nil {
		return result{err: fmt.Errorf("dns: write %s %s: %w", network, addr, err), tcp: network == "tcp"}
	}
	for {
		resp, err := conn.ReadMsg()
		if err != nil {
			return result{err: fmt.Errorf("dns: read %s %s: %w", network, addr, err), tcp: network == "tcp"}
		}
		if resp.Id != m.Id || !sameQuestion(resp, m) {
			if network == "udp" {
				continue // a stray or spoofed datagram: keep waiting
			}
			return result{err: fmt.Errorf("%w (%s %s)", errUpstream, network, addr), tcp: true}
		}
		return result{m: resp, tcp: network == "tcp"}
	}
}

func sameQuestion(a, b *mdns.Msg) bool {
	if len(a.Question) != 1 || len(b.Question) != 1 {
		return false
	}
	qa, qb := a.Question[0], b.Question[0]
	return qa.Qtype == qb.Qtype && qa.Qclass == qb.Qclass && mdns.CanonicalName(qa.Name) == mdns.CanonicalName(qb.Name)
}

// packetConn marks a connected datagram conn (a netstack UDP conn may not
// say so by its type) so that miekg/dns reads whole datagrams, without the
// TCP length prefix.
type packetConn struct{ net.Conn }

func (p packetConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, err := p.Read(b)
	return n, p.RemoteAddr(), err
}

func (p packetConn) WriteTo(b []byte, _ net.Addr) (int, error) { return p.Write(b) }
