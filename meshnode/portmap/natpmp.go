package portmap

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	natpmp "github.com/jackpal/go-nat-pmp"
)

// NAT-PMP (RFC 6886) through github.com/jackpal/go-nat-pmp. The library
// sends each request from a fresh socket to gateway:5351, retransmits from
// 250 ms doubling, accepts answers only from the gateway's address, reads
// them into a 16-byte buffer and checks version, opcode, result code and
// exact length before reading fields (FuzzNATPMPReply feeds it garbage over
// loopback). It takes no context, so every call is bounded by a timeout.

// natpmpProto speaks NAT-PMP to one gateway.
type natpmpProto struct {
	gw, self netip.Addr
	port     uint16
	lifetime time.Duration
	// port 5351 on gw unless a test says otherwise
	newClient func(timeout time.Duration) *natpmp.Client
	ext       netip.Addr // external address from the last probe or check
}

func newNATPMP(gw, self netip.Addr, cfg *Config) *natpmpProto {
	return &natpmpProto{
		gw: gw, self: self, port: cfg.Port, lifetime: cfg.Lifetime,
		newClient: func(timeout time.Duration) *natpmp.Client {
			return natpmp.NewClientWithLocalAndTimeout(gw.AsSlice(), self.AsSlice(), timeout)
		},
	}
}

func (p *natpmpProto) kind() Kind { return KindNATPMP }

// timeout returns the time left before ctx's deadline, capped at
// requestTimeout, since the library cannot be cancelled.
func timeout(ctx context.Context) time.Duration {
	d := requestTimeout
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < d {
			d = left
		}
	}
	if d < time.Millisecond {
		d = time.Millisecond
	}
	return d
}

// externalAddress asks for the gateway's external address and epoch.
func (p *natpmpProto) externalAddress(ctx context.Context) (status, error) {
	if err := ctx.Err(); err != nil {
		return status{}, err
	}
	r, err := p.newClient(timeout(ctx)).GetExternalAddress()
	if err != nil {
		return status{}, fmt.Errorf("nat-pmp external address: %w", err)
	}
	ext := netip.AddrFrom4(r.ExternalIPAddress)
	if ext.IsUnspecified() || ext.IsMulticast() || ext.IsLoopback() {
		return status{}, fmt.Errorf("nat-pmp: gateway has no usable external address (%v)", ext)
	}
	p.ext = ext
	return status{epoch: r.SecondsSinceStartOfEpoc, hasEpoch: true}, nil
}

func (p *natpmpProto) probe(ctx context.Context) (status, error) { return p.externalAddress(ctx) }

func (p *natpmpProto) mapPort(ctx context.Context, prev netip.AddrPort) (mapping, error) {
	if !p.ext.IsValid() {
		if _, err := p.externalAddress(ctx); err != nil {
			return mapping{}, err
		}
	}
	want := p.port
	if prev.IsValid() {
		want = prev.Port()
	}
	r, err := p.newClient(timeout(ctx)).AddPortMapping("udp", int(p.port), int(want), int(p.lifetime/time.Second))
	if err != nil {
		return mapping{}, fmt.Errorf("nat-pmp map: %w", err)
	}
	if r.InternalPort != p.port {
		return mapping{}, fmt.Errorf("nat-pmp: gateway mapped internal port %d, asked %d", r.InternalPort, p.port)
	}
	if r.MappedExternalPort == 0 || r.PortMappingLifetimeInSeconds == 0 {
		return mapping{}, errors.New("nat-pmp: gateway granted no port")
	}
	return mapping{
		external: netip.AddrPortFrom(p.ext, r.MappedExternalPort),
		lifetime: time.Duration(r.PortMappingLifetimeInSeconds) * time.Second,
		st:       status{epoch: r.SecondsSinceStartOfEpoc, hasEpoch: true},
	}, nil
}

// check asks for the external address: its answer carries the epoch, and a
// changed external address means the mapping's address changed too.
func (p *natpmpProto) check(ctx context.Context, m mapping) (status, error) {
	st, err := p.externalAddress(ctx)
	if err != nil {
		return st, err
	}
	if p.ext != m.external.Addr() {
		return st, fmt.Errorf("nat-pmp: external address moved from %v to %v", m.external.Addr(), p.ext)
	}
	return st, nil
}

// unmap deletes the mapping: RFC 6886 §3.4, lifetime 0 and external port 0.
func (p *natpmpProto) unmap(ctx context.Context, m mapping) error {
	if _, err := p.newClient(timeout(ctx)).AddPortMapping("udp", int(p.port), 0, 0); err != nil {
		return fmt.Errorf("nat-pmp delete: %w", err)
	}
	return nil
}
