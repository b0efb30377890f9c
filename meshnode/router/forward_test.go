package router

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/meshnode/filter"
	"github.com/wiremesh/wiremesh/meshnode/routes"
	"github.com/wiremesh/wiremesh/meshnode/tuntest"
	"github.com/wiremesh/wiremesh/metrics"
	"golang.zx2c4.com/wireguard/tun"
)

// tcp4 builds a minimal IPv4 TCP packet.
func tcp4(src, dst string, sport, dport uint16) []byte {
	b := make([]byte, 40)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], 40)
	b[8] = 64
	b[9] = filter.ProtoTCP
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	binary.BigEndian.PutUint16(b[20:], sport)
	binary.BigEndian.PutUint16(b[22:], dport)
	b[32] = 5 << 4
	return b
}

const (
	self    = "100.64.0.1"
	client  = "100.64.0.2"
	printer = "198.19.50.10"
)

func newTestForwarder(t *testing.T) (*Forwarder, *tuntest.TUN, *filter.Filter) {
	t.Helper()
	pol := filter.New(nil)
	pol.SetRules([]filter.Rule{{
		Srcs: []netip.Prefix{netip.MustParsePrefix(client + "/32")},
		Dsts: []filter.PortRange{{Dst: netip.MustParsePrefix("198.19.50.0/24"), First: 80, Last: 80}},
	}})
	dev := &tuntest.TUN{}
	f := NewForwarder(dev, netip.MustParseAddr(self), pol, nil)
	f.SetRoutes([]netip.Prefix{netip.MustParsePrefix("198.19.50.0/24")})
	return f, dev, pol
}

func TestForwarderPolicy(t *testing.T) {
	f, dev, _ := newTestForwarder(t)
	const off = 16
	in := [][]byte{
		tcp4(client, printer, 40000, 80),       // allowed
		tcp4(client, printer, 40001, 22),       // port not allowed
		tcp4(client, "198.19.60.1", 40002, 80), // not a route we offer
		tcp4(client, self, 40003, 22),          // for the node itself: not ours to judge
		tcp4(client, "100.64.0.9", 40004, 22),  // inside the mesh: not forwarded
		{0x45, 0},                              // garbage: left to the node's filter
	}
	bufs := make([][]byte, len(in))
	for i, p := range in {
		bufs[i] = append(make([]byte, off), p...)
	}
	n, err := f.Write(bufs, off)
	if err != nil || n != len(in) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(in))
	}
	if len(dev.Written) != 4 {
		t.Fatalf("%d packets reached the kernel, want 4", len(dev.Written))
	}
	for i, want := range []int{0, 3, 4, 5} {
		if string(dev.Written[i]) != string(in[want]) {
			t.Fatalf("packet %d reaching the kernel is input %d's? got %x", i, want, dev.Written[i])
		}
	}
	for r, want := range map[Reason]uint64{ReasonNoRule: 1, ReasonNotRouted: 1, ReasonMalformed: 0, ReasonFragment: 0} {
		if got := f.Drops(r); got != want {
			t.Errorf("drops %v = %d, want %d", r, got, want)
		}
	}
	if f.Forwarded() != 1 {
		t.Errorf("forwarded = %d, want 1", f.Forwarded())
	}
}

// TestForwarderLANStartedFlow: a flow the LAN starts towards the mesh is
// recorded on the way out, so the peer's replies pass although no rule
// allows the peer to reach the printer's port.
func TestForwarderLANStartedFlow(t *testing.T) {
	f, dev, _ := newTestForwarder(t)
	reply := tcp4(client, printer, 443, 51000)
	if ok, r := f.judge(reply); ok || r != ReasonNoRule {
		t.Fatalf("reply before the flow: ok=%v reason=%v, want dropped no_rule", ok, r)
	}
	dev.Reads = [][]byte{tcp4(printer, client, 51000, 443)}
	bufs, sizes := [][]byte{make([]byte, 1500)}, []int{0}
	if n, _ := f.Read(bufs, sizes, 0); n != 1 {
		t.Fatalf("Read = %d", n)
	}
	if ok, _ := f.judge(reply); !ok {
		t.Fatal("reply to a LAN-started flow dropped")
	}
}

func TestForwarderExit(t *testing.T) {
	f, _, pol := newTestForwarder(t)
	pol.SetRules([]filter.Rule{{
		Srcs: []netip.Prefix{netip.MustParsePrefix(client + "/32")},
		Dsts: []filter.PortRange{{Dst: routes.ExitPrefix, First: 0, Last: 65535}},
	}})
	pkt := tcp4(client, "198.18.9.9", 40000, 443)
	if ok, r := f.judge(pkt); ok || r != ReasonNotRouted {
		t.Fatalf("internet before exit node: ok=%v %v", ok, r)
	}
	f.SetRoutes([]netip.Prefix{routes.ExitPrefix})
	if ok, r := f.judge(pkt); !ok {
		t.Fatalf("internet through exit node dropped: %v", r)
	}
}

func TestReasonStrings(t *testing.T) {
	seen := map[string]bool{}
	for r := Reason(0); r < numReasons; r++ {
		s := r.String()
		if s == "unknown" || seen[s] {
			t.Fatalf("reason %d label %q", r, s)
		}
		seen[s] = true
	}
	if reasonOf(filter.DropFragment) != ReasonFragment || reasonOf(filter.DropMalformed) != ReasonMalformed || reasonOf(filter.DropNoRule) != ReasonNoRule {
		t.Fatal("verdict mapping wrong")
	}
}

func TestMetricsLint(t *testing.T) {
	reg := metrics.NewRegistry()
	m := NewMetrics(reg)
	f := NewForwarder(&tuntest.TUN{}, netip.MustParseAddr(self), filter.New(nil), m)
	f.drops[ReasonNoRule].Add(3)
	m.bindSpoof(func() uint64 { return 2 })
	m.applyErrors.Inc()
	problems, err := metrics.Lint(reg)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("metric naming problems:\n%s", strings.Join(problems, "\n"))
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mm := range mf.GetMetric() {
			v := mm.GetCounter().GetValue() + mm.GetGauge().GetValue()
			name := mf.GetName()
			for _, l := range mm.GetLabel() {
				name += "{" + l.GetValue() + "}"
			}
			got[name] = v
		}
	}
	for name, want := range map[string]float64{
		"meshnode_router_forward_drops_total{no_rule}":    3,
		"meshnode_router_forward_drops_total{not_routed}": 0,
		"meshnode_router_forwarded_packets_total":         0,
		"meshnode_router_spoofed_drops_total":             2,
		"meshnode_router_routes{up}":                      0,
		"meshnode_router_apply_errors_total":              1,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
}

// FuzzForwarderWrite: whatever a peer sends, the forward filter neither
// panics nor loses count: every packet is reported handled and either
// reaches the kernel or is counted as a drop.
func FuzzForwarderWrite(f *testing.F) {
	f.Add(tcp4(client, printer, 40000, 80))
	f.Add(tcp4(client, printer, 40000, 22))
	f.Add(tcp4(client, "198.19.60.1", 1, 2))
	f.Add([]byte{0x45})
	f.Add([]byte{0x60, 0, 0, 0})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		fw, dev, _ := newTestForwarder(t)
		const off = 16
		buf := append(make([]byte, off), pkt...)
		n, err := fw.Write([][]byte{buf}, off)
		if err != nil || n != 1 {
			t.Fatalf("Write = %d, %v", n, err)
		}
		var drops uint64
		for r := Reason(0); r < numReasons; r++ {
			drops += fw.Drops(r)
		}
		if uint64(len(dev.Written))+drops != 1 {
			t.Fatalf("%d delivered + %d dropped, want 1 in all", len(dev.Written), drops)
		}
	})
}

// BenchmarkForwarderWrite measures the forward filter per batch of 64
// packets: forwarded packets the policy accepts, packets for the node
// itself (passed through untouched), and the bare device as the baseline.
func BenchmarkForwarderWrite(b *testing.B) {
	const off, batch = 16, 64
	mk := func(dst string) [][]byte {
		bufs := make([][]byte, batch)
		for i := range bufs {
			bufs[i] = append(make([]byte, off), tcp4(client, dst, uint16(40000+i), 80)...)
		}
		return bufs
	}
	pol := filter.New(nil)
	pol.SetRules([]filter.Rule{{
		Srcs: []netip.Prefix{netip.MustParsePrefix(client + "/32")},
		Dsts: []filter.PortRange{{Dst: netip.MustParsePrefix("198.19.50.0/24"), First: 80, Last: 80}},
	}})
	f := NewForwarder(&discardTUN{}, netip.MustParseAddr(self), pol, nil)
	f.SetRoutes([]netip.Prefix{netip.MustParsePrefix("198.19.50.0/24")})
	for _, tc := range []struct {
		name string
		bufs [][]byte
		dev  tun.Device
	}{
		{"baseline", mk(printer), &discardTUN{}},
		{"forwarded", mk(printer), f},
		{"local", mk(self), f},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(batch * 40))
			b.ReportAllocs()
			for b.Loop() {
				tc.dev.Write(tc.bufs, off)
			}
		})
	}
}

// discardTUN is a tun.Device whose writes vanish.
type discardTUN struct{ tuntest.TUN }

func (*discardTUN) Write(bufs [][]byte, off int) (int, error) { return len(bufs), nil }
