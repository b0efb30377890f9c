//go:build lab

package e2e

import (
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/meshnode/localapi"
)

// revocationGoal is the end-to-end bound for a deleted node: every relay
// closes its session, and every peer drops it, within 2 s.
const revocationGoal = 2 * time.Second

// TestLabRevocation: `coordinator nodes delete c` makes the relay (joined
// with a join key, so it follows the coordinator's revocation poll) close
// c's session, and c's peer drop it, each within 2 s. It logs both times
// (BENCHMARKS.md records them).
func TestLabRevocation(t *testing.T) {
	w := newWorld(t)
	out, err := w.run("coordinator", "relaykey", "create", "--region", "nyc", "--state-dir", w.coordDir)
	if err != nil {
		t.Fatal(err)
	}
	joinKey := lastLine(out)
	host, err := w.l.AddHost("relay-nyc", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	addr := netip.AddrPortFrom(host.Addr, 443).String()
	metricsURL := "http://" + netip.AddrPortFrom(host.Addr, 9100).String() + "/metrics"
	w.proc(host.Namespace, "relayd", "--coordinator", w.coordURL, "--join-key", joinKey, "--region", "nyc",
		"--listen", addr, "--public-addr", addr, "--state-dir", dir,
		"--metrics-listen", netip.AddrPortFrom(host.Addr, 9100).String())
	waitFor(t, "the relay to join", func() bool {
		out, err := w.run("coordinator", "relays", "list", "--json", "--state-dir", w.coordDir)
		var rs []struct{ Region, State string }
		return err == nil && json.Unmarshal([]byte(out), &rs) == nil && len(rs) == 1 && rs[0].State == "up"
	})
	a := w.startNode("a", hardNATHost(t, w, "a"))
	c := w.startNode("c", hardNATHost(t, w, "c"))
	for _, n := range []*node{a, c} {
		n.waitStatus("its peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	if err := a.ping(c.ip(), 3); err != nil {
		t.Fatal(err)
	}
	clients := func() int {
		n := 0
		for _, l := range strings.Split(metricsOf(host.Namespace, metricsURL, "relayd_clients"), "\n") {
			f := strings.Fields(l)
			if len(f) == 2 {
				v, _ := strconv.ParseFloat(f[1], 64)
				n += int(v)
			}
		}
		return n
	}
	waitFor(t, "both nodes at the relay", func() bool { return clients() == 2 })

	start := time.Now()
	if _, err := w.run("coordinator", "nodes", "delete", "c", "--state-dir", w.coordDir); err != nil {
		t.Fatal(err)
	}
	deleted := time.Since(start)
	var relayClosed, peerDropped time.Duration
	for relayClosed == 0 || peerDropped == 0 {
		if relayClosed == 0 && clients() == 1 {
			relayClosed = time.Since(start)
		}
		if peerDropped == 0 {
			if st, err := a.status(); err == nil {
				if _, ok := peerOf(st, "c"); !ok {
					peerDropped = time.Since(start)
				}
			}
		}
		if time.Since(start) > 10*revocationGoal {
			t.Fatalf("after 20 s: relay closed c's session: %v, a dropped c: %v", relayClosed != 0, peerDropped != 0)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("BENCH revocation: nodes delete returned %v; relay closed the session %v; peer dropped the node %v",
		deleted.Round(time.Millisecond), relayClosed.Round(time.Millisecond), peerDropped.Round(time.Millisecond))
	if relayClosed > revocationGoal || peerDropped > revocationGoal {
		t.Errorf("revocation took relay %v, peer %v; the goal is %v", relayClosed, peerDropped, revocationGoal)
	}
	// c stays out: its token is refused until it expires.
	if n := clients(); n != 1 {
		t.Errorf("relay has %d clients after c was revoked, want 1", n)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// waitFor polls cond every 50 ms for up to 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s never happened", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
