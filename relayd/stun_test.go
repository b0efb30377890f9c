package relayd_test

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/wiremesh/wiremesh/relayd"
	"github.com/wiremesh/wiremesh/relayd/relaytest"
)

// stunQuery sends one Binding request to addr from a fresh socket and
// returns the mapped address and the socket's own address.
func stunQuery(t *testing.T, addr string) (*stun.XORMappedAddress, *net.UDPAddr) {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ra, _ := net.ResolveUDPAddr("udp", addr)
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	buf := make([]byte, 1500)
	for range 5 { // UDP: retry a lost request
		c.WriteTo(req.Raw, ra)
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			continue
		}
		m := &stun.Message{Raw: buf[:n]}
		if err := m.Decode(); err != nil {
			t.Fatal(err)
		}
		var xa stun.XORMappedAddress
		if err := xa.GetFrom(m); err != nil {
			t.Fatal(err)
		}
		return &xa, c.LocalAddr().(*net.UDPAddr)
	}
	t.Fatal("no STUN answer")
	return nil, nil
}

func TestSTUNOnQUICPortAndExtraPort(t *testing.T) {
	r := relaytest.Start(t, func(c *relayd.Config) { c.ListenSTUN = "127.0.0.1:0" })
	for _, addr := range []string{r.Server.Addr().String(), r.Server.STUNAddr().String()} {
		xa, local := stunQuery(t, addr)
		if !xa.IP.Equal(local.IP) || xa.Port != local.Port {
			t.Fatalf("%s mapped %s:%d, want %s", addr, xa.IP, xa.Port, local)
		}
	}
	if got := counter(t, r.Registry, "relayd_stun_requests_total", "result", "ok"); got < 2 {
		t.Fatalf("stun ok = %v, want ≥ 2", got)
	}
	// QUIC still works on the shared port.
	dial(t, r, true, nil)
}

// TestSTUNInteropCoturn runs coturn's turnutils_stunclient against the
// relay's QUIC port (scripts/deps.sh installs it).
func TestSTUNInteropCoturn(t *testing.T) {
	bin, err := exec.LookPath("turnutils_stunclient")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("turnutils_stunclient not installed (package coturn; scripts/deps.sh installs it)")
		}
		t.Skip("turnutils_stunclient not installed (package coturn; run make deps)")
	}
	r := relaytest.Start(t, nil)
	port := strconv.Itoa(r.Server.Addr().Port)
	out, err := exec.Command(bin, "-p", port, "127.0.0.1").CombinedOutput()
	if err != nil {
		t.Fatalf("turnutils_stunclient: %v\n%s", err, out)
	}
	// It prints "UDP reflexive addr: 127.0.0.1:PORT".
	if !strings.Contains(string(out), "UDP reflexive addr: 127.0.0.1:") {
		t.Fatalf("no reflexive address in output:\n%s", out)
	}
	if got := counter(t, r.Registry, "relayd_stun_requests_total", "result", "ok"); got < 1 {
		t.Fatalf("stun ok = %v, want ≥ 1\n%s", got, out)
	}
}

// TestSTUNRateLimitedPerSource: a flood of Binding requests from one
// source is answered only up to its burst; the rest are counted.
func TestSTUNRateLimitedPerSource(t *testing.T) {
	r := relaytest.Start(t, nil)
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	// quic-go queues few non-QUIC packets, so send in small bursts.
	sent := 0
	waitUntil(t, "flood rate-limited", func() bool {
		for range 10 {
			c.WriteTo(req.Raw, r.Server.Addr())
			sent++
		}
		return counter(t, r.Registry, "relayd_stun_requests_total", "result", "rate_limited") >= 50
	})
	ok := counter(t, r.Registry, "relayd_stun_requests_total", "result", "ok")
	limited := counter(t, r.Registry, "relayd_stun_requests_total", "result", "rate_limited")
	if ok >= limited {
		t.Fatalf("%v of %d flooded requests answered, %v limited", ok, sent, limited)
	}
	// Another source is unaffected.
	stunQuery(t, r.Server.Addr().String())
}
