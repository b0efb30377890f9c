package disco

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/wiremesh/wiremesh/key"
)

func pair() (key.DiscoPrivate, key.DiscoPrivate, key.SharedKey, key.SharedKey) {
	a, b := key.NewDisco(), key.NewDisco()
	return a, b, key.Precompute(a, b.Public()), key.Precompute(b, a.Public())
}

func TestRoundTrip(t *testing.T) {
	a, _, ab, ba := pair()
	node := key.NewNode().Public()
	for _, tc := range []struct {
		name string
		m    Message
	}{
		{"ping", &Ping{TxID: NewTxID(), NodeKey: node}},
		{"ping padded", &Ping{TxID: NewTxID(), NodeKey: node, Padding: 1000}},
		{"pong v4", &Pong{TxID: NewTxID(), Src: netip.MustParseAddrPort("198.18.0.22:41641")}},
		{"pong v6", &Pong{TxID: NewTxID(), Src: netip.MustParseAddrPort("[2001:db8::1]:9")}},
		{"call-me-maybe", &CallMeMaybe{Endpoints: []netip.AddrPort{
			netip.MustParseAddrPort("198.19.1.2:41641"), netip.MustParseAddrPort("198.18.3.2:41641")}}},
		{"call-me-maybe empty", &CallMeMaybe{Endpoints: []netip.AddrPort{}}},
		{"punch", &Punch{Step: StepProbe, ID: 0xdeadbeef, Addr: netip.MustParseAddrPort("198.18.0.9:0")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt := Seal(nil, a.Public(), &ab, tc.m)
			if !LooksLikeDisco(pkt) {
				t.Fatal("sealed packet not recognised")
			}
			if pkt[0] >= 1 && pkt[0] <= 4 || pkt[0]&0xc0 == 0 {
				t.Fatalf("first byte %#x collides with WireGuard or STUN", pkt[0])
			}
			from, err := Sender(pkt)
			if err != nil || from != a.Public() {
				t.Fatalf("Sender = %v, %v", from, err)
			}
			got, err := Open(pkt, &ba)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.m) {
				t.Fatalf("got %#v, want %#v", got, tc.m)
			}
		})
	}
}

func TestOpenRejects(t *testing.T) {
	a, _, ab, ba := pair()
	_, _, _, other := pair()
	pkt := Seal(nil, a.Public(), &ab, &Ping{TxID: NewTxID()})
	if _, err := Open(pkt, &other); !errors.Is(err, key.ErrOpen) {
		t.Fatalf("wrong key: %v", err)
	}
	bad := bytes.Clone(pkt)
	bad[len(bad)-1] ^= 1
	if _, err := Open(bad, &ba); !errors.Is(err, key.ErrOpen) {
		t.Fatalf("tampered: %v", err)
	}
	if _, err := Open(pkt[:headerLen+5], &ba); !errors.Is(err, ErrNotDisco) {
		t.Fatalf("truncated: %v", err)
	}
	if _, err := Open([]byte{1, 0, 0, 0, 5, 5, 5}, &ba); !errors.Is(err, ErrNotDisco) {
		t.Fatalf("wireguard packet: %v", err)
	}
	big := Seal(nil, a.Public(), &ab, &Ping{Padding: MaxPacket})
	if _, err := Open(big, &ba); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
	// Sealed garbage of an unknown type authenticates but does not parse.
	raw := a.Public().Raw()
	unk := append([]byte(Magic), raw[:]...)
	unk = ab.Seal(unk, []byte{99, 0, 1, 2})
	if _, err := Open(unk, &ba); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unknown type: %v", err)
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"short ping", []byte{1, 0, 1, 2, 3}, ErrMalformed},
		{"short pong", append([]byte{2, 0}, make([]byte, txIDLen+epLen-1)...), ErrMalformed},
		{"ragged call-me-maybe", append([]byte{3, 0}, make([]byte, epLen+1)...), ErrMalformed},
		{"short punch", append([]byte{4, 0, 1}, make([]byte, 4+epLen-1)...), ErrMalformed},
		{"punch step 0", append([]byte{4, 0, 0}, make([]byte, 4+epLen)...), ErrMalformed},
		{"punch step 9", append([]byte{4, 0, 9}, make([]byte, 4+epLen)...), ErrMalformed},
		{"unknown", []byte{7, 0}, ErrUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(tc.in); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	// A future version's extra trailing bytes on a pong are ignored.
	p := (&Pong{Src: netip.MustParseAddrPort("198.18.0.1:1")}).AppendMarshal(nil)
	p = append(p, 0xee, 0xee)
	if m, err := Parse(p); err != nil || m.(*Pong).Src.Port() != 1 {
		t.Fatalf("extended pong: %v %v", m, err)
	}
}

func TestCallMeMaybeBounded(t *testing.T) {
	var eps []netip.AddrPort
	for i := 0; i < 3*MaxEndpoints; i++ {
		eps = append(eps, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}), 41641))
	}
	b := (&CallMeMaybe{Endpoints: eps}).AppendMarshal(nil)
	if len(b) != msgHdrLen+MaxEndpoints*epLen {
		t.Fatalf("marshalled %d bytes", len(b))
	}
	// A hostile peer's oversized list is trimmed on parse, too.
	raw := []byte{3, 0}
	for _, ep := range eps {
		raw = appendAddrPort(raw, ep)
	}
	m, err := Parse(raw)
	if err != nil || len(m.(*CallMeMaybe).Endpoints) != MaxEndpoints {
		t.Fatalf("parse: %v, %d endpoints", err, len(m.(*CallMeMaybe).Endpoints))
	}
	// Unusable candidates are dropped.
	raw = appendAddrPort([]byte{3, 0}, netip.AddrPortFrom(netip.IPv4Unspecified(), 5))
	raw = appendAddrPort(raw, netip.MustParseAddrPort("198.18.0.1:0"))
	m, _ = Parse(raw)
	if n := len(m.(*CallMeMaybe).Endpoints); n != 0 {
		t.Fatalf("kept %d unusable endpoints", n)
	}
}

func BenchmarkSealOpenPing(b *testing.B) {
	a, _, ab, ba := pair()
	ping := &Ping{TxID: NewTxID(), NodeKey: key.NewNode().Public()}
	buf := make([]byte, 0, 256)
	for b.Loop() {
		buf = Seal(buf[:0], a.Public(), &ab, ping)
		if _, err := Open(buf, &ba); err != nil {
			b.Fatal(err)
		}
	}
}
