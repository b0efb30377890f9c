package punch

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// TestSendTTL checks the TTL on the wire with IP_RECVTTL on a loopback
// receiver (loopback does not decrement it), and that the socket's own TTL
// is unchanged for the next packet.
func TestSendTTL(t *testing.T) {
	rc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	pc := ipv4.NewPacketConn(rc)
	if err := pc.SetControlMessage(ipv4.FlagTTL, true); err != nil {
		t.Fatal(err)
	}
	sc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	to := rc.LocalAddr().(*net.UDPAddr).AddrPort()
	defTTL, err := ipv4.NewConn(sc).TTL()
	if err != nil {
		t.Fatal(err)
	}
	if err := SendTTL(sc, []byte("prime"), to, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.WriteToUDPAddrPort([]byte("normal"), to); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for _, want := range []struct {
		msg string
		ttl int
	}{{"prime", 3}, {"normal", defTTL}} {
		n, cm, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		if string(buf[:n]) != want.msg || cm == nil || cm.TTL != want.ttl {
			t.Fatalf("got %q with control %+v, want %q with TTL %d", buf[:n], cm, want.msg, want.ttl)
		}
	}
	for _, bad := range []int{0, MaxPrimingTTL + 1} {
		if err := SendTTL(sc, nil, to, bad); err == nil {
			t.Errorf("TTL %d accepted", bad)
		}
	}
	if err := SendTTL(sc, nil, netip.MustParseAddrPort("[2001:db8::1]:1"), 2); err == nil {
		t.Error("IPv6 destination accepted")
	}
}
