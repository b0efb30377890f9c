package dns

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/wiremesh/wiremesh/meshnode/netstack"
)

// wireStacks pumps packets between two netstacks until they close: a
// tunnel without WireGuard.
func wireStacks(a, b *netstack.Stack) {
	pump := func(from, to *netstack.Stack) {
		bufs := make([][]byte, 32)
		for i := range bufs {
			bufs[i] = make([]byte, 2000)
		}
		sizes := make([]int, 32)
		for {
			n, err := from.Read(bufs, sizes, 0)
			if err != nil {
				return
			}
			out := make([][]byte, n)
			for i := 0; i < n; i++ {
				out[i] = bufs[i][:sizes[i]]
			}
			to.Write(out, 0)
		}
	}
	go pump(a, b)
	go pump(b, a)
}

// TestUserspaceResolverAndPiHole is userspace mode: the resolver serves
// inside this node's netstack on 100.100.100.100:53, and the mesh's global
// nameserver is a DNS server on a peer's mesh address (a Pi-hole), which
// the resolver reaches through the netstack, never the host network.
func TestUserspaceResolverAndPiHole(t *testing.T) {
	node, err := netstack.New(netip.MustParseAddr("100.64.0.1"), 1248)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	peer, err := netstack.New(netip.MustParseAddr("100.64.0.53"), 1248)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	wireStacks(node, peer)

	// The Pi-hole on the peer.
	piholeUDP, err := peer.ListenUDP(ap("100.64.0.53:53"))
	if err != nil {
		t.Fatal(err)
	}
	piholeTCP, err := peer.ListenTCP(53)
	if err != nil {
		t.Fatal(err)
	}
	pihole := New(Config{})
	pihole.SetSettings(Settings{Extra: []Record{{Name: "ads.example", Type: "A", Value: "198.18.0.5"}}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	piholeDone := make(chan error, 1)
	go func() { piholeDone <- pihole.Serve(ctx, piholeUDP, piholeTCP) }()

	// This node's resolver, in its own netstack.
	direct := &recordingDialer{dialed: make(chan string, 8)}
	r := meshResolver(t, Config{MeshDialer: node, Dialer: direct}, Settings{Nameservers: []netip.AddrPort{ap("100.64.0.53:53")}})
	if err := node.AddAddress(Address.Addr()); err != nil {
		t.Fatal(err)
	}
	pc, err := node.ListenUDP(Address)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := node.ListenTCPAddr(Address)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx, pc, ln) }()

	dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
	defer dcancel()
	for _, network := range []string{"udp", "tcp"} {
		c, err := node.DialContext(dctx, network, Address.String())
		if err != nil {
			t.Fatalf("%s dial: %v", network, err)
		}
		conn := &mdns.Conn{Conn: c}
		if network == "udp" {
			conn.Conn = packetConn{c}
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		for name, want := range map[string]string{"b.mesh.internal.": "100.64.0.2", "ads.example.": "198.18.0.5"} {
			m := new(mdns.Msg)
			m.SetQuestion(name, mdns.TypeA)
			if err := conn.WriteMsg(m); err != nil {
				t.Fatal(err)
			}
			resp, err := conn.ReadMsg()
			if err != nil || firstA(resp) != netip.MustParseAddr(want) {
				t.Fatalf("%s %s: %v %v", network, name, resp, err)
			}
		}
		c.Close()
	}
	select {
	case got := <-direct.dialed:
		t.Fatalf("the host network was used for a mesh nameserver: %s", got)
	default:
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-piholeDone; err != nil {
		t.Fatal(err)
	}
}

var _ Dialer = (*netstack.Stack)(nil)
var _ net.PacketConn = packetConn{}
