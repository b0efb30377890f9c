package filter

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"
)

// ipv4 builds a minimal IPv4 packet with a TCP/UDP/ICMP header.
func ipv4(proto uint8, src, dst string, sport, dport uint16) []byte {
	b := make([]byte, 20+8)
	b[0] = 0x45
	b[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	switch proto {
	case ProtoTCP, ProtoUDP:
		binary.BigEndian.PutUint16(b[20:], sport)
		binary.BigEndian.PutUint16(b[22:], dport)
	case ProtoICMP:
		b[20] = byte(sport) // type
		binary.BigEndian.PutUint16(b[24:], dport)
	}
	return b
}

func icmpEcho(src, dst string, reply bool, id uint16) []byte {
	typ := uint16(8)
	if reply {
		typ = 0
	}
	return ipv4(ProtoICMP, src, dst, typ, id)
}

const (
	me    = "100.64.0.1"
	peerB = "100.64.0.2"
	peerC = "100.64.0.3"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func TestInbound(t *testing.T) {
	f := New(nil)
	f.SetRules([]Rule{
		{Srcs: []netip.Prefix{pfx(peerB + "/32")}, Dsts: []PortRange{{Dst: pfx(me + "/32"), First: 22, Last: 22}, {Dst: pfx(me + "/32"), First: 8000, Last: 8080}}},
		{Srcs: []netip.Prefix{pfx("100.64.0.0/10")}, Dsts: []PortRange{{Dst: pfx(me + "/32"), First: 53, Last: 53}}},
	})
	frag := ipv4(ProtoUDP, peerB, me, 1, 2)
	binary.BigEndian.PutUint16(frag[6:], 10) // offset 80 bytes
	fragC := ipv4(ProtoUDP, "100.128.0.9", me, 1, 2)
	binary.BigEndian.PutUint16(fragC[6:], 10)
	for _, tc := range []struct {
		name string
		pkt  []byte
		want Verdict
	}{
		{"B tcp 22", ipv4(ProtoTCP, peerB, me, 40000, 22), Accept},
		{"B tcp 8080 range end", ipv4(ProtoTCP, peerB, me, 40000, 8080), Accept},
		{"B tcp 8081", ipv4(ProtoTCP, peerB, me, 40000, 8081), DropNoRule},
		{"C tcp 22", ipv4(ProtoTCP, peerC, me, 40000, 22), DropNoRule},
		{"C udp 53 via cidr", ipv4(ProtoUDP, peerC, me, 40000, 53), Accept},
		{"outside cidr udp 53", ipv4(ProtoUDP, "198.18.0.1", me, 40000, 53), DropNoRule},
		{"B to other dst", ipv4(ProtoTCP, peerB, peerC, 40000, 22), DropNoRule},
		{"B ping", icmpEcho(peerB, me, false, 7), Accept},
		{"outsider ping", icmpEcho("100.100.0.1", me, false, 7), Accept}, // 100.64/10 may reach :53, so ping passes
		{"unsolicited echo reply", icmpEcho("100.127.0.1", me, true, 7), DropNoRule},
		{"fragment from allowed src", frag, Accept},
		{"fragment from stranger", fragC, DropFragment},
		{"garbage", []byte{0x45, 1, 2}, DropMalformed},
		{"empty", nil, DropMalformed},
		{"gre any-port only", ipv4(47, peerB, me, 0, 0), DropNoRule},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := f.Inbound(tc.pkt); got != tc.want {
				t.Fatalf("Inbound = %v, want %v", got, tc.want)
			}
		})
	}
	if f.Drops(DropNoRule) == 0 || f.Drops(DropMalformed) != 2 || f.Drops(DropFragment) != 1 {
		t.Fatalf("drop counters: no_rule=%d malformed=%d fragment=%d", f.Drops(DropNoRule), f.Drops(DropMalformed), f.Drops(DropFragment))
	}
}

func TestStatefulReplies(t *testing.T) {
	now := time.Unix(1000, 0)
	f := New(func() time.Time { return now })
	// No rules at all: only replies to our own flows pass.
	if v := f.Inbound(ipv4(ProtoTCP, peerC, me, 80, 40000)); v != DropNoRule {
		t.Fatalf("unsolicited: %v", v)
	}
	f.Outbound(ipv4(ProtoTCP, me, peerC, 40000, 80))
	f.Outbound(icmpEcho(me, peerC, false, 99))
	f.Outbound(ipv4(ProtoUDP, me, peerC, 5353, 53))
	for _, tc := range []struct {
		name string
		pkt  []byte
		want Verdict
	}{
		{"tcp reply", ipv4(ProtoTCP, peerC, me, 80, 40000), Accept},
		{"tcp other port", ipv4(ProtoTCP, peerC, me, 81, 40000), DropNoRule},
		{"udp reply", ipv4(ProtoUDP, peerC, me, 53, 5353), Accept},
		{"echo reply", icmpEcho(peerC, me, true, 99), Accept},
		{"echo reply other id", icmpEcho(peerC, me, true, 98), DropNoRule},
		{"echo request back", icmpEcho(peerC, me, false, 99), DropNoRule},
		{"other peer same ports", ipv4(ProtoTCP, peerB, me, 80, 40000), DropNoRule},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := f.Inbound(tc.pkt); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	// Flows expire.
	now = now.Add(flowTTL + time.Second)
	if v := f.Inbound(ipv4(ProtoTCP, peerC, me, 80, 40000)); v != DropNoRule {
		t.Fatalf("expired flow still accepted: %v", v)
	}
	f.Expire()
	if f.Flows() != 0 {
		t.Fatalf("%d flows after Expire", f.Flows())
	}
}

func TestFlowTableBounded(t *testing.T) {
	f := New(nil)
	for i := 0; i < maxFlows+1000; i++ {
		f.Outbound(ipv4(ProtoUDP, me, peerC, uint16(i), uint16(i>>16)+1))
	}
	if n := f.Flows(); n > maxFlows {
		t.Fatalf("%d flows tracked, cap %d", n, maxFlows)
	}
}

func TestIPv6(t *testing.T) {
	b := make([]byte, 48)
	b[0] = 0x60
	b[6] = ProtoTCP
	src := netip.MustParseAddr("fd7a::2").As16()
	dst := netip.MustParseAddr("fd7a::1").As16()
	copy(b[8:], src[:])
	copy(b[24:], dst[:])
	binary.BigEndian.PutUint16(b[42:], 443)
	p, ok := Parse(b)
	if !ok || p.Src != netip.MustParseAddr("fd7a::2") || p.DstPort != 443 {
		t.Fatalf("Parse v6 = %+v %v", p, ok)
	}
	f := New(nil)
	f.SetRules([]Rule{{Srcs: []netip.Prefix{pfx("fd7a::/16")}, Dsts: []PortRange{{Dst: pfx("fd7a::1/128"), First: 443, Last: 443}}}})
	if v := f.Inbound(b); v != Accept {
		t.Fatalf("v6: %v", v)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(ipv4(ProtoTCP, peerB, me, 1, 2))
	f.Add(icmpEcho(peerB, me, false, 3))
	f.Add([]byte{0x60})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := Parse(b)
		if ok && !p.Src.IsValid() {
			t.Fatal("ok without source")
		}
		fl := New(nil)
		fl.Outbound(b)
		fl.Inbound(b)
	})
}

func BenchmarkInboundRule(b *testing.B) {
	f := New(nil)
	var rules []Rule
	for i := 0; i < 20; i++ {
		rules = append(rules, Rule{Srcs: []netip.Prefix{pfx("100.64.1.0/24")}, Dsts: []PortRange{{Dst: pfx(me + "/32"), First: 1000, Last: 1000}}})
	}
	rules = append(rules, Rule{Srcs: []netip.Prefix{pfx(peerB + "/32")}, Dsts: []PortRange{{Dst: pfx(me + "/32"), First: 22, Last: 22}}})
	f.SetRules(rules)
	pkt := ipv4(ProtoTCP, peerB, me, 40000, 22)
	for b.Loop() {
		if f.Inbound(pkt) != Accept {
			b.Fatal("dropped")
		}
	}
}

func BenchmarkOutboundAndReply(b *testing.B) {
	f := New(nil)
	out := ipv4(ProtoTCP, me, peerC, 40000, 80)
	in := ipv4(ProtoTCP, peerC, me, 80, 40000)
	for b.Loop() {
		f.Outbound(out)
		if f.Inbound(in) != Accept {
			b.Fatal("dropped")
		}
	}
}

// TestLocalOnly: an address set local-only (the node's DNS resolver) is
// never reached by a peer, not even through a rule whose destination is
// "*" (0.0.0.0/0), nor by a packet posing as a reply to one of our flows;
// the node's own address still is.
func TestLocalOnly(t *testing.T) {
	const quad100 = "100.100.100.100"
	f := New(nil)
	f.SetRules([]Rule{{Srcs: []netip.Prefix{pfx("0.0.0.0/0")}, Dsts: []PortRange{{Dst: pfx("0.0.0.0/0"), First: 0, Last: 65535}}}})
	if got := f.Inbound(ipv4(ProtoUDP, peerB, quad100, 40000, 53)); got != Accept {
		t.Fatalf("before SetLocalOnly: %v", got)
	}
	f.SetLocalOnly([]netip.Addr{netip.MustParseAddr(quad100)})
	f.Outbound(ipv4(ProtoUDP, quad100, peerB, 53, 40000))
	for _, pkt := range [][]byte{ipv4(ProtoUDP, peerB, quad100, 40000, 53), ipv4(ProtoTCP, peerC, quad100, 40000, 53), icmpEcho(peerB, quad100, false, 1)} {
		if got := f.Inbound(pkt); got != DropNoRule {
			t.Fatalf("a peer reached the local-only address: %v", got)
		}
	}
	if got := f.Inbound(ipv4(ProtoUDP, peerB, me, 40000, 53)); got != Accept {
		t.Fatalf("the node's own address: %v", got)
	}
}
