package disco

import (
	"net/netip"
	"testing"

	"github.com/wiremesh/wiremesh/key"
)

func FuzzParse(f *testing.F) {
	f.Add((&Ping{TxID: NewTxID(), NodeKey: key.NewNode().Public(), Padding: 3}).AppendMarshal(nil))
	f.Add((&Pong{Src: netip.MustParseAddrPort("198.18.0.2:41641")}).AppendMarshal(nil))
	f.Add((&CallMeMaybe{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:41641")}}).AppendMarshal(nil))
	f.Add([]byte{3, 0})
	f.Add((&Punch{Step: StepEasy, ID: 7, Addr: netip.MustParseAddrPort("198.18.0.2:41641")}).AppendMarshal(nil))
	f.Add([]byte{4, 0, 9, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		// Re-marshalling what parsed must parse to the same message.
		m2, err := Parse(m.AppendMarshal(nil))
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if m.Type() != m2.Type() {
			t.Fatalf("type changed %v -> %v", m.Type(), m2.Type())
		}
	})
}

func FuzzOpen(f *testing.F) {
	a, b := key.NewDisco(), key.NewDisco()
	ab := key.Precompute(a, b.Public())
	f.Add(Seal(nil, a.Public(), &ab, &Ping{TxID: NewTxID()}))
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		ba := key.Precompute(b, a.Public())
		Sender(pkt)
		Open(pkt, &ba)
	})
}
