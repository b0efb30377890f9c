// Package stunprobe asks relays, over the node's own UDP socket, which
// public address they see it at (a STUN binding request), and measures the
// round trip while it is at it.
//
// The request goes out through a Writer (the bind's socket: a STUN answer
// is only meaningful for the socket that asked) and the answer comes back
// through Handle, which the bind's demultiplexer calls for every STUN
// packet. Answers that match no outstanding request are dropped.
package stunprobe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v3"
)

// Timing of one probe: three tries a third of Timeout apart. A relay on
// another continent answers in 300 ms; a lost packet is retried well before
// the probe gives up.
const (
	Timeout = 2 * time.Second
	tries   = 3
	// maxPending bounds outstanding requests (each is one relay probe;
	// a node probes at most a few dozen relays at once).
	maxPending = 1024
)

// Writer sends one packet from the node's UDP socket.
type Writer interface {
	WriteTo(pkt []byte, dst netip.AddrPort) error
}

// Prober sends STUN requests and matches their answers. Create it with New.
type Prober struct {
	w   Writer
	now func() time.Time

	mu      sync.Mutex
	pending map[[stun.TransactionIDSize]byte]chan netip.AddrPort
}

// New returns a Prober that writes through w and reads time from now
// (time.Now if nil).
func New(w Writer, now func() time.Time) *Prober {
	if now == nil {
		now = time.Now
	}
	return &Prober{w: w, now: now, pending: map[[stun.TransactionIDSize]byte]chan netip.AddrPort{}}
}

// ErrNotSuccess is returned by ParseResponse for a STUN message that is
// not a binding success.
var ErrNotSuccess = errors.New("stunprobe: not a binding success response")

// ParseResponse decodes a binding success response: its transaction id and
// the XOR-mapped address it carries.
func ParseResponse(pkt []byte) ([stun.TransactionIDSize]byte, netip.AddrPort, error) {
	m := &stun.Message{Raw: append([]byte(nil), pkt...)}
	if err := m.Decode(); err != nil {
		return [stun.TransactionIDSize]byte{}, netip.AddrPort{}, fmt.Errorf("stunprobe: %w", err)
	}
	if m.Type != stun.BindingSuccess {
		return m.TransactionID, netip.AddrPort{}, ErrNotSuccess
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(m); err != nil {
		return m.TransactionID, netip.AddrPort{}, fmt.Errorf("stunprobe: mapped address: %w", err)
	}
	ip, ok := netip.AddrFromSlice(xor.IP)
	if !ok || xor.Port <= 0 || xor.Port > 65535 {
		return m.TransactionID, netip.AddrPort{}, errors.New("stunprobe: malformed mapped address")
	}
	return m.TransactionID, netip.AddrPortFrom(ip.Unmap(), uint16(xor.Port)), nil
}

// Handle takes a STUN packet that arrived on the socket.
func (p *Prober) Handle(src netip.AddrPort, pkt []byte) {
	tx, mapped, err := ParseResponse(pkt)
	if err != nil {
		return
	}
	p.mu.Lock()
	ch, ok := p.pending[tx]
	delete(p.pending, tx)
	p.mu.Unlock()
	if ok {
		select {
		case ch <- mapped:
		default:
		}
	}
}

// Probe asks the relay at relayAddr (host:port) for our mapped address,
// retrying a lost packet, and returns it with the round trip of the
// answered request.
func (p *Prober) Probe(ctx context.Context, relayAddr string) (netip.AddrPort, time.Duration, bool) {
	dst, err := ResolveAddrPort(relayAddr)
	if err != nil {
		return netip.AddrPort{}, 0, false
	}
	for try := 0; try < tries && ctx.Err() == nil; try++ {
		if m, rtt, ok := p.once(ctx, dst); ok {
			return m, rtt, true
		}
	}
	return netip.AddrPort{}, 0, false
}

func (p *Prober) once(ctx context.Context, dst netip.AddrPort) (netip.AddrPort, time.Duration, bool) {
	msg, err := stun.Build(stun.TransactionID, stun.BindingRequest)
	if err != nil {
		return netip.AddrPort{}, 0, false
	}
	ch := make(chan netip.AddrPort, 1)
	p.mu.Lock()
	if len(p.pending) >= maxPending {
		p.mu.Unlock()
		return netip.AddrPort{}, 0, false
	}
	p.pending[msg.TransactionID] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.pending, msg.TransactionID)
		p.mu.Unlock()
	}()
	sent := p.now()
	if err := p.w.WriteTo(msg.Raw, dst); err != nil {
		return netip.AddrPort{}, 0, false
	}
	t := time.NewTimer(Timeout / tries)
	defer t.Stop()
	select {
	case m := <-ch:
		return m, p.now().Sub(sent), true
	case <-t.C:
	case <-ctx.Done():
	}
	return netip.AddrPort{}, 0, false
}

// ProbeAll probes every address in parallel and returns relay address →
// mapped address for those that answered.
func (p *Prober) ProbeAll(ctx context.Context, addrs []string) map[string]netip.AddrPort {
	out := map[string]netip.AddrPort{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Go(func() {
			if m, _, ok := p.Probe(ctx, a); ok {
				mu.Lock()
				out[a] = m
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// ResolveAddrPort parses host:port, resolving a name if it is one.
func ResolveAddrPort(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	ua, err := net.ResolveUDPAddr("udp4", s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return ua.AddrPort(), nil
}
