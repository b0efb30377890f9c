package stunprobe

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/pion/stun/v3"
)

// echoRelay answers binding requests with a fixed mapped address, or drops
// the first drop requests.
type echoRelay struct {
	p      *Prober
	mapped netip.AddrPort
	mu     sync.Mutex
	drop   int
	seen   int
}

func (r *echoRelay) WriteTo(pkt []byte, dst netip.AddrPort) error {
	r.mu.Lock()
	r.seen++
	drop := r.drop > 0
	if drop {
		r.drop--
	}
	r.mu.Unlock()
	if drop {
		return nil
	}
	req := &stun.Message{Raw: append([]byte(nil), pkt...)}
	if err := req.Decode(); err != nil {
		return err
	}
	resp, err := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: net.IP(r.mapped.Addr().AsSlice()), Port: int(r.mapped.Port())})
	if err != nil {
		return err
	}
	go r.p.Handle(dst, resp.Raw)
	return nil
}

func TestProbeRetriesLostPacket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &echoRelay{mapped: netip.MustParseAddrPort("198.18.0.9:4242"), drop: 1}
		r.p = New(r, nil)
		m, _, ok := r.p.Probe(context.Background(), "198.18.1.1:3478")
		if !ok || m != r.mapped || r.seen != 2 {
			t.Fatalf("probe: %v %v after %d requests", m, ok, r.seen)
		}
		if len(r.p.pending) != 0 {
			t.Fatalf("pending left: %d", len(r.p.pending))
		}
	})
}

func TestProbeGivesUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := &echoRelay{mapped: netip.MustParseAddrPort("198.18.0.9:4242"), drop: 100}
		r.p = New(r, nil)
		if _, _, ok := r.p.Probe(context.Background(), "198.18.1.1:3478"); ok || r.seen != tries {
			t.Fatalf("ok=%v after %d requests", ok, r.seen)
		}
	})
}

func TestHandleIgnoresUnknownAndGarbage(t *testing.T) {
	p := New(nil, nil)
	resp, _ := stun.Build(stun.TransactionID, stun.BindingSuccess, &stun.XORMappedAddress{IP: net.IPv4(198, 18, 0, 1), Port: 1})
	p.Handle(netip.AddrPort{}, resp.Raw) // no such request: nothing happens
	p.Handle(netip.AddrPort{}, []byte{0, 1, 0, 0})
	if _, _, err := ParseResponse(resp.Raw); err != nil {
		t.Fatal(err)
	}
	req, _ := stun.Build(stun.TransactionID, stun.BindingRequest)
	if _, _, err := ParseResponse(req.Raw); err != ErrNotSuccess {
		t.Fatalf("request parsed as response: %v", err)
	}
}

// FuzzParseResponse: no input crashes the parser, and whatever it accepts
// carries a valid address.
func FuzzParseResponse(f *testing.F) {
	resp, _ := stun.Build(stun.TransactionID, stun.BindingSuccess, &stun.XORMappedAddress{IP: net.IPv4(198, 18, 0, 1), Port: 41641})
	f.Add(resp.Raw)
	req, _ := stun.Build(stun.TransactionID, stun.BindingRequest)
	f.Add(req.Raw)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		_, ap, err := ParseResponse(pkt)
		if err == nil && !ap.IsValid() {
			t.Fatalf("accepted %x with invalid address", pkt)
		}
	})
}
