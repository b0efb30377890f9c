//go:build lab

package punch

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/lab"
)

// farCounter counts, on the far router, UDP packets from the near side's
// public address, whether addressed to the router itself or forwarded.
const farCounter = `table inet wmprime {
	chain input {
		type filter hook input priority filter - 10; policy accept;
		ip saddr %s udp dport %d counter
	}
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		ip saddr %s udp dport %d counter
	}
}
`

var packetsRe = regexp.MustCompile(`counter packets (\d+)`)

// farSeen returns how many of the near side's packets reached the far
// router (input plus forward).
func farSeen(t *testing.T, r *lab.Router) int {
	t.Helper()
	out, err := r.Command(context.Background(), "nft", "list", "table", "inet", "wmprime").Output()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range packetsRe.FindAllStringSubmatch(string(out), -1) {
		k, _ := strconv.Atoi(m[1])
		n += k
	}
	return n
}

// TestLabTTLPriming: host A sits behind two bare Linux NAT routers (double
// NAT), host B behind a bare router. A primes towards B's public ip:port:
//
//   - TTL 3 (two NATs + 1): the packet opens both of A's NAT mappings and
//     dies in the core, so B's router never sees it; B's first packet to A's
//     public ip:port then comes straight through both of A's NATs.
//   - no priming: B's packet is dropped at A's outer router (nothing asked
//     for it).
//   - the normal TTL: the primer reaches B's bare router, which records a
//     connection to itself; B's own flow is then remapped to another port
//     and A's NATs, expecting the old one, drop it. This is the failure
//     priming avoids.
func TestLabTTLPriming(t *testing.T) {
	const port = 41641
	for _, tc := range []struct {
		name        string
		ttl         int  // 0: no priming
		raw         bool // through a Primer (raw socket, the node's port as source), not SendTTL
		wantFar     bool
		wantArrives bool
	}{
		{"ttl-3", 3, false, false, true},
		{"primer-ttl-3", 3, true, false, true},
		{"no-priming", 0, false, false, false},
		{"full-ttl", 64, false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := lab.New(t)
			outer, err := l.AddRouter("outer", lab.RouterConfig{NAT: lab.Easy, Firewall: lab.Bare})
			if err != nil {
				t.Fatal(err)
			}
			inner, err := l.AddRouter("inner", lab.RouterConfig{NAT: lab.Easy, Firewall: lab.Bare, Upstream: outer})
			if err != nil {
				t.Fatal(err)
			}
			far, err := l.AddRouter("far", lab.RouterConfig{NAT: lab.Easy, Firewall: lab.Bare})
			if err != nil {
				t.Fatal(err)
			}
			a, err := l.AddHost("a", inner)
			if err != nil {
				t.Fatal(err)
			}
			b, err := l.AddHost("b", far)
			if err != nil {
				t.Fatal(err)
			}
			if err := far.Nft(fmt.Sprintf(farCounter, outer.WAN, port, outer.WAN, port)); err != nil {
				t.Fatal(err)
			}
			ac, err := a.ListenUDP(fmt.Sprintf(":%d", port))
			if err != nil {
				t.Fatal(err)
			}
			defer ac.Close()
			bc, err := b.ListenUDP(fmt.Sprintf(":%d", port))
			if err != nil {
				t.Fatal(err)
			}
			defer bc.Close()
			bPub := netip.AddrPortFrom(far.WAN, port)   // B's mapping, if its router keeps the port
			aPub := netip.AddrPortFrom(outer.WAN, port) // A's, through two easy NATs
			if tc.raw {
				// The primer runs in a's namespace: a goroutine locked
				// to its thread there.
				if err := a.Do(func() error {
					p, err := NewPrimer(tc.ttl)
					if err != nil {
						return err
					}
					defer p.Close()
					return p.Send(port, bPub, []byte("prime"))
				}); err != nil {
					t.Fatal(err)
				}
			} else if tc.ttl > 0 {
				if tc.ttl == 64 {
					if _, err := ac.WriteToUDPAddrPort([]byte("prime"), bPub); err != nil {
						t.Fatal(err)
					}
				} else if err := SendTTL(ac, []byte("prime"), bPub, tc.ttl); err != nil {
					t.Fatal(err)
				}
			}
			// Let the primer travel (or die) before B sends: the lab's
			// hops take microseconds; 100 ms is ample on a loaded machine.
			time.Sleep(100 * time.Millisecond)
			if seen := farSeen(t, far); (seen > 0) != tc.wantFar {
				t.Fatalf("far router saw %d of A's packets, want reached=%v", seen, tc.wantFar)
			}
			arrived := false
			buf := make([]byte, 64)
			for try := 0; try < 5 && !arrived; try++ {
				if _, err := bc.WriteToUDPAddrPort([]byte("hello-a"), aPub); err != nil {
					t.Fatal(err)
				}
				ac.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				for {
					n, from, err := ac.ReadFromUDPAddrPort(buf)
					if err != nil {
						break
					}
					if string(buf[:n]) == "hello-a" {
						arrived = true
						t.Logf("A got B's packet from %v", from)
						if from != bPub {
							t.Fatalf("B's packet came from %v, want %v", from, bPub)
						}
						break
					}
				}
			}
			if arrived != tc.wantArrives {
				t.Fatalf("B's first packet reached A: %v, want %v", arrived, tc.wantArrives)
			}
		})
	}
}
