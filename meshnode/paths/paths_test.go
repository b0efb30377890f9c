package paths

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wiremesh/wiremesh/disco"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// fakeBind records path decisions and accepted addresses.
type fakeBind struct {
	mu       sync.Mutex
	direct   map[key.NodePublic]netip.AddrPort
	tent     map[key.NodePublic]bool
	accepted map[key.NodePublic]map[netip.AddrPort]bool
	log      []string // "tentative addr", "direct addr", "relay"
	tx       map[key.NodePublic]uint64
}

func newFakeBind() *fakeBind {
	return &fakeBind{direct: map[key.NodePublic]netip.AddrPort{}, tent: map[key.NodePublic]bool{},
		accepted: map[key.NodePublic]map[netip.AddrPort]bool{}, tx: map[key.NodePublic]uint64{}}
}

func (b *fakeBind) SetDirect(k key.NodePublic, a netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !a.IsValid() {
		if _, ok := b.direct[k]; ok {
			b.log = append(b.log, "relay")
		}
		delete(b.direct, k)
		return
	}
	b.direct[k], b.tent[k] = a, false
	b.log = append(b.log, "direct "+a.String())
}

func (b *fakeBind) SetTentative(k key.NodePublic, a netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.direct[k], b.tent[k] = a, true
	b.log = append(b.log, "tentative "+a.String())
}

func (b *fakeBind) AcceptFrom(k key.NodePublic, a netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.accepted[k] == nil {
		b.accepted[k] = map[netip.AddrPort]bool{}
	}
	b.accepted[k][a] = true
}

func (b *fakeBind) ForgetAddr(k key.NodePublic, a netip.AddrPort) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.accepted[k], a)
}

func (b *fakeBind) TxBytes(k key.NodePublic) uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tx[k]
}

// isAccepted reports whether the bind accepts packets from a as k's.
func (b *fakeBind) isAccepted(k key.NodePublic, a netip.AddrPort) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.accepted[k][a]
}

// nAccepted returns how many addresses the bind accepts as k's.
func (b *fakeBind) nAccepted(k key.NodePublic) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.accepted[k])
}

// path returns the peer's current send path as the bind sees it.
func (b *fakeBind) path(k key.NodePublic) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	a, ok := b.direct[k]
	switch {
	case !ok:
		return "relay"
	case b.tent[k]:
		return "tentative " + a.String()
	}
	return "direct " + a.String()
}

// world joins nodes by a fake relay (always up, relayDelay each way) and
// fake UDP links between addresses (each with its own delay, or down).
type world struct {
	mu    sync.Mutex
	nodes map[key.NodePublic]*tnode
	owner map[netip.AddrPort]*tnode
	delay map[netip.AddrPort]time.Duration // to reach an address; absent: unreachable
	// second maps an extra address of a node to it: the world answers
	// pings sent there with the node's keys, from that address (a second
	// socket, as a second interface would give).
	second map[netip.AddrPort]*tnode
}

const relayDelay = 30 * time.Millisecond

type tnode struct {
	w    *world
	key  key.NodePrivate
	disc key.DiscoPrivate
	addr netip.AddrPort // where its UDP packets come from
	eps  []netip.AddrPort
	bind *fakeBind
	m    *Manager
	// sent, if set, is told of every UDP packet n sends.
	sent func(dst netip.AddrPort)
}

func newWorld() *world {
	return &world{nodes: map[key.NodePublic]*tnode{}, owner: map[netip.AddrPort]*tnode{}, delay: map[netip.AddrPort]time.Duration{},
		second: map[netip.AddrPort]*tnode{}}
}

func (w *world) add(addr string, delay time.Duration) *tnode {
	n := &tnode{w: w, key: key.NewNode(), disc: key.NewDisco(), addr: netip.MustParseAddrPort(addr), bind: newFakeBind()}
	n.eps = []netip.AddrPort{n.addr}
	n.m = New(Config{Bind: n.bind, Transport: n, Self: n.key.Public(), Disco: n.disc,
		Endpoints: func() []netip.AddrPort { return n.eps }})
	w.mu.Lock()
	w.nodes[n.key.Public()] = n
	w.owner[n.addr] = n
	w.delay[n.addr] = delay
	w.mu.Unlock()
	return n
}

// link makes a and b peers of each other, each with the other's endpoints.
func link(a, b *tnode) {
	a.m.UpsertPeer(netmap.Node{NodeKey: b.key.Public(), DiscoKey: b.disc.Public(), Endpoints: b.eps})
	b.m.UpsertPeer(netmap.Node{NodeKey: a.key.Public(), DiscoKey: a.disc.Public(), Endpoints: a.eps})
}

func (w *world) setDelay(addr netip.AddrPort, d time.Duration, up bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if up {
		w.delay[addr] = d
	} else {
		delete(w.delay, addr)
	}
}

func (n *tnode) WriteTo(pkt []byte, dst netip.AddrPort) error {
	if n.sent != nil {
		n.sent(dst)
	}
	n.w.mu.Lock()
	to, d, up := n.w.owner[dst], n.w.delay[dst], false
	if _, ok := n.w.delay[dst]; ok && to != nil {
		up = true
	}
	sec := n.w.second[dst]
	n.w.mu.Unlock()
	if sec != nil && up {
		go sec.answerAt(dst, n, pkt, d)
		return nil
	}
	if up {
		pkt = append([]byte(nil), pkt...)
		src := n.addr
		go func() { time.Sleep(d); to.m.HandleDisco(Source{Addr: src}, pkt) }()
	}
	return nil
}

func (n *tnode) SendDisco(peer key.NodePublic, pkt []byte) error {
	n.w.mu.Lock()
	to := n.w.nodes[peer]
	n.w.mu.Unlock()
	pkt = append([]byte(nil), pkt...)
	from := n.key.Public()
	go func() { time.Sleep(relayDelay); to.m.HandleDisco(Source{Peer: from}, pkt) }()
	return nil
}

// answerAt answers a ping that from sent to n's second address at, after
// delay each way.
func (n *tnode) answerAt(at netip.AddrPort, from *tnode, pkt []byte, delay time.Duration) {
	shared := key.Precompute(n.disc, from.disc.Public())
	msg, err := disco.Open(pkt, &shared)
	ping, ok := msg.(*disco.Ping)
	if err != nil || !ok {
		return
	}
	time.Sleep(2 * delay)
	pong := disco.Seal(nil, n.disc.Public(), &shared, &disco.Pong{TxID: ping.TxID, Src: from.addr})
	from.m.HandleDisco(Source{Addr: at}, pong)
}

// active marks traffic from n to peer (the bind's byte counter moves).
func (n *tnode) active(peer *tnode) {
	n.bind.mu.Lock()
	n.bind.tx[peer.key.Public()] += 1000
	n.bind.mu.Unlock()
}

// run starts n's machine; stop it before the bubble ends.
func (n *tnode) run(ctx context.Context) { go n.m.Run(ctx) }

// drain lets packets in flight arrive before a bubble ends (deferred
// first, so it runs after the machines' contexts are cancelled).
func drain() { time.Sleep(time.Second) }

// linkedPair makes two peers 5 ms (one way) apart.
func linkedPair() (*world, *tnode, *tnode) {
	w := newWorld()
	a := w.add("198.18.0.1:41641", 5*time.Millisecond)
	b := w.add("198.18.0.2:41641", 5*time.Millisecond)
	link(a, b)
	return w, a, b
}

// directPair makes two linked nodes 10 ms apart whose relayed traffic
// took a to a confirmed direct path to b.
func directPair(t *testing.T) (*world, *tnode, *tnode) {
	t.Helper()
	w, a, b := linkedPair()
	a.m.RelaySent(b.key.Public())
	time.Sleep(time.Second)
	if got := a.bind.path(b.key.Public()); got != "direct 198.18.0.2:41641" {
		t.Fatalf("a's path to b: %s, want direct", got)
	}
	return w, a, b
}

// TestTentativeThenConfirmed: relayed traffic starts an upgrade; the first
// pong makes the path tentative (both ways), the second confirms it.
func TestTentativeThenConfirmed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer drain()
		_, a, b := linkedPair()
		a.m.RelaySent(b.key.Public())
		time.Sleep(11 * time.Millisecond) // one direct round trip
		synctest.Wait()
		if got := a.bind.path(b.key.Public()); got != "tentative 198.18.0.2:41641" {
			t.Fatalf("after the first pong: %s", got)
		}
		time.Sleep(11 * time.Millisecond)
		synctest.Wait()
		if got := a.bind.path(b.key.Public()); got != "direct 198.18.0.2:41641" {
			t.Fatalf("after the second pong: %s", got)
		}
		// b learned a's address from the ping and accepts WireGuard from it.
		if !b.bind.isAccepted(a.key.Public(), a.addr) {
			t.Fatal("b does not accept packets from a's address")
		}
		if _, rtt, ok := a.m.Direct(b.key.Public()); !ok || rtt != 10*time.Millisecond {
			t.Fatalf("direct rtt %v %v", rtt, ok)
		}
	})
}

// TestTrustLapseRelayRetry: a confirmed path whose pongs stop falls back to
// the relay after TrustFor, and is retried after UpgradeRetry while the
// peer is active.
func TestTrustLapseRelayRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer drain()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		w, a, b := linkedPair()
		a.run(ctx)
		b.run(ctx)
		a.active(b)
		a.m.RelaySent(b.key.Public())
		time.Sleep(100 * time.Millisecond)
		if got := a.bind.path(b.key.Public()); got != "direct 198.18.0.2:41641" {
			t.Fatalf("before the cut: %s", got)
		}
		// Heartbeats keep it while the link is up.
		for range 10 {
			a.active(b)
			time.Sleep(time.Second)
		}
		if got := a.bind.path(b.key.Public()); got != "direct 198.18.0.2:41641" {
			t.Fatalf("with heartbeats: %s", got)
		}
		w.setDelay(b.addr, 0, false) // b's address no longer reachable
		cut := time.Now()
		for a.bind.path(b.key.Public()) != "relay" {
			a.active(b)
			time.Sleep(time.Second)
		}
		if lapse := time.Since(cut); lapse < TrustFor-HeartbeatInterval || lapse > TrustFor+2*tickEvery {
			t.Fatalf("fell back after %v, want about TrustFor (%v)", lapse, TrustFor)
		}
		w.setDelay(b.addr, 5*time.Millisecond, true)
		back := time.Now()
		for a.bind.path(b.key.Public()) != "direct 198.18.0.2:41641" {
			a.active(b)
			time.Sleep(time.Second)
			if time.Since(back) > 2*UpgradeRetry {
				t.Fatal("no retry after the link came back")
			}
		}
		if since := time.Since(back); since > UpgradeRetry+2*tickEvery {
			t.Fatalf("retried after %v, want within UpgradeRetry", since)
		}
		if n := len(a.bind.log); a.bind.log[n-1] != "direct 198.18.0.2:41641" || a.bind.log[n-2] != "tentative 198.18.0.2:41641" {
			t.Fatalf("decisions %v", a.bind.log)
		}
	})
}

// TestHysteresis: a second candidate replaces the best only when clearly
// faster (BetterAbs and BetterRel).
func TestHysteresis(t *testing.T) {
	for _, tc := range []struct {
		name       string
		first, alt time.Duration // one-way delays
		wantSwitch bool
	}{
		{"slightly faster", 5 * time.Millisecond, 4500 * time.Microsecond, false}, // 1 ms RTT gain
		{"much faster", 5 * time.Millisecond, 2 * time.Millisecond, true},
		{"slower", 5 * time.Millisecond, 8 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				defer drain()
				w := newWorld()
				a := w.add("198.18.0.1:41641", 5*time.Millisecond)
				b := w.add("198.18.0.2:41641", tc.first)
				alt := netip.MustParseAddrPort("198.18.9.2:41641")
				w.mu.Lock()
				w.owner[alt], w.delay[alt], w.second[alt] = b, tc.alt, b
				w.mu.Unlock()
				link(a, b)
				a.m.RelaySent(b.key.Public())
				time.Sleep(time.Second)
				if got := a.bind.path(b.key.Public()); got != "direct 198.18.0.2:41641" {
					t.Fatalf("first path: %s", got)
				}
				// b announces a second address; a pings both.
				b.eps = append(b.eps, alt)
				a.m.gotCallMeMaybe(b.key.Public(), b.eps)
				time.Sleep(time.Second)
				want := "direct 198.18.0.2:41641"
				if tc.wantSwitch {
					want = "direct " + alt.String()
				}
				if got := a.bind.path(b.key.Public()); got != want {
					t.Fatalf("after the second candidate answered: %s, want %s", got, want)
				}
			})
		})
	}
}

// TestMigration: the peer's call-me-maybe without our best address means
// it moved: the direct path is dropped at once and its new endpoint wins.
func TestMigration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer drain()
		w, a, b := directPair(t)
		// b moves networks: new address, old one gone.
		moved := netip.MustParseAddrPort("198.18.5.2:41641")
		w.mu.Lock()
		delete(w.owner, b.addr)
		b.addr = moved
		w.owner[moved], w.delay[moved] = b, 5*time.Millisecond
		w.mu.Unlock()
		b.eps = []netip.AddrPort{moved}
		b.m.NetworkChanged()
		b.m.attempt(a.key.Public(), true) // what Announce does for an active peer
		time.Sleep(relayDelay + time.Millisecond)
		synctest.Wait()
		if got := a.bind.path(b.key.Public()); got == "direct 198.18.0.2:41641" {
			t.Fatal("old path kept after the peer's call-me-maybe")
		}
		time.Sleep(time.Second)
		if got := a.bind.path(b.key.Public()); got != "direct "+moved.String() {
			t.Fatalf("after migration: %s", got)
		}
		if a.bind.isAccepted(b.key.Public(), netip.MustParseAddrPort("198.18.0.2:41641")) {
			t.Fatal("old address still accepted")
		}
	})
}

// TestCandidatesPruned: addresses learned from pings expire, and removing a
// peer takes back every address the bind accepts for it.
func TestCandidatesPruned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer drain()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		_, a, b := linkedPair()
		a.run(ctx)
		bk := b.key.Public()
		// Pings from addresses b never reported (a NAT rebinding, or a
		// forger that knows b's disco key would be worse; either way
		// bounded) are candidates that expire.
		for i := range 2 * MaxCandidates {
			a.m.gotPing(bk, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 7, byte(i)}), 1))
		}
		if n := len(a.m.Candidates(bk)); n != MaxCandidates {
			t.Fatalf("%d candidates, want the bound %d", n, MaxCandidates)
		}
		if n := a.bind.nAccepted(bk); n > MaxCandidates {
			t.Fatalf("bind accepts %d addresses, more than the bound", n)
		}
		time.Sleep(CandidateTTL + 2*tickEvery)
		if got := a.m.Candidates(bk); len(got) != 1 || got[0] != b.addr {
			t.Fatalf("after expiry: %v, want only the reported endpoint", got)
		}
		if n := a.bind.nAccepted(bk); n != 0 {
			t.Fatalf("bind still accepts %d expired addresses", n)
		}
		a.m.gotPing(bk, b.addr)
		a.m.RemovePeer(bk)
		if n := a.bind.nAccepted(bk); n != 0 {
			t.Fatalf("bind accepts %d addresses of a removed peer", n)
		}
		if a.m.Candidates(bk) != nil {
			t.Fatal("removed peer still has candidates")
		}
	})
}

// TestRestartedPeerUnconfirmed: a new disco key drops the old path.
func TestRestartedPeerUnconfirmed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer drain()
		_, a, b := directPair(t)
		a.m.UpsertPeer(netmap.Node{NodeKey: b.key.Public(), DiscoKey: key.NewDisco().Public(), Endpoints: b.eps})
		if got := a.bind.path(b.key.Public()); got != "relay" {
			t.Fatalf("after the restart: %s", got)
		}
	})
}

// TestDiscoRejects: packets from unknown disco keys, or whose relay-given
// sender does not own the disco key, are dropped.
func TestDiscoRejects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer drain()
		w := newWorld()
		a := w.add("198.18.0.1:41641", 5*time.Millisecond)
		b := w.add("198.18.0.2:41641", 5*time.Millisecond)
		c := w.add("198.18.0.3:41641", 5*time.Millisecond)
		link(a, b)
		link(a, c)
		// c relays a ping sealed with b's disco key, claiming to be c.
		b.m.UpsertPeer(netmap.Node{NodeKey: a.key.Public(), DiscoKey: a.disc.Public()})
		got := 0
		ch := make(chan Pong, 4)
		b.m.Probe(a.key.Public(), ch)
		time.Sleep(time.Second)
		got = len(ch)
		if got == 0 {
			t.Fatal("genuine probe got no pong")
		}
		a.m.HandleDisco(Source{Peer: c.key.Public()}, []byte("WM\xf0\x9f\x92\xacgarbage"))
		a.m.HandleDisco(Source{Addr: netip.MustParseAddrPort("198.18.9.9:1")}, nil)
	})
}
