package punch

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/wiremesh/wiremesh/metrics"
)

var hardPub = netip.MustParseAddr("198.18.2.2")

// fakeHardNAT stands for the hard side: the ports its N sockets were
// mapped to. A probe to one of them is answered at once through Deliver.
type fakeHardNAT struct {
	mu    sync.Mutex
	open  map[uint16]bool
	sent  []netip.AddrPort
	easy  *Easy
	delay time.Duration
}

func (f *fakeHardNAT) send(b []byte, to netip.AddrPort) error {
	f.mu.Lock()
	f.sent = append(f.sent, to)
	hit := f.open[to.Port()] && string(b) == "ping"
	f.mu.Unlock()
	if hit {
		go func() {
			time.Sleep(f.delay)
			f.easy.Deliver([]byte("pong"), to)
		}()
	}
	return nil
}

func newEasyTest(t *testing.T, f *fakeHardNAT, cfg EasyConfig) *Easy {
	t.Helper()
	cfg.Peer = hardPub
	cfg.Payload = func(uint16) []byte { return []byte("ping") }
	cfg.Send = f.send
	cfg.Verify = func(pkt []byte, from netip.AddrPort) ([]byte, bool) { return nil, string(pkt) == "pong" }
	cfg.Rand = rand.New(rand.NewPCG(1, 2))
	e, err := NewEasy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.easy = e
	return e
}

func TestEasyPacedAndBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeHardNAT{open: map[uint16]bool{}} // nothing open: a miss
		e := newEasyTest(t, f, EasyConfig{Probes: 500, Rate: 100, Timeout: time.Minute})
		done := make(chan struct{})
		var res Result
		var err error
		go func() {
			res, err = e.Run(context.Background())
			close(done)
		}()
		time.Sleep(time.Second - time.Millisecond)
		synctest.Wait()
		f.mu.Lock()
		n := len(f.sent)
		f.mu.Unlock()
		if n != 100 {
			t.Fatalf("%d probes in the first second at 100/s", n)
		}
		<-done
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("err %v, want ErrNotFound", err)
		}
		if res.Sent != 500 || len(f.sent) != 500 {
			t.Fatalf("sent %d (%d seen), want the budget of 500", res.Sent, len(f.sent))
		}
		seen := map[uint16]bool{}
		for _, to := range f.sent {
			if to.Addr() != hardPub || to.Port() < minPort || seen[to.Port()] {
				t.Fatalf("probe to %v: wrong address, low port or repeated", to)
			}
			seen[to.Port()] = true
		}
	})
}

func TestEasyTimeoutBoundsTheSearch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeHardNAT{open: map[uint16]bool{}}
		e := newEasyTest(t, f, EasyConfig{Probes: 4096, Rate: 10, Timeout: 3 * time.Second})
		start := time.Now()
		res, err := e.Run(context.Background())
		if !errors.Is(err, ErrNotFound) || time.Since(start) != 3*time.Second {
			t.Fatalf("ended after %v with %v, want ErrNotFound at 3 s", time.Since(start), err)
		}
		if res.Sent > 31 {
			t.Fatalf("%d probes in 3 s at 10/s", res.Sent)
		}
	})
}

func TestEasyStopsAtFirstPong(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Open the ports the seeded generator will probe 10th and 11th.
		order := ports(rand.New(rand.NewPCG(1, 2)), 20)
		f := &fakeHardNAT{open: map[uint16]bool{order[9]: true, order[10]: true}, delay: 2 * time.Millisecond}
		e := newEasyTest(t, f, EasyConfig{Probes: 20, Rate: 100})
		res, err := e.Run(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if res.Remote != netip.AddrPortFrom(hardPub, order[9]) {
			t.Fatalf("found %v, want the first open port %d", res.Remote, order[9])
		}
		if res.Sent != 10 {
			t.Fatalf("sent %d probes, want to stop after the 10th", res.Sent)
		}
		if res.Elapsed != 9*10*time.Millisecond+2*time.Millisecond {
			t.Fatalf("elapsed %v", res.Elapsed)
		}
	})
}

func TestEasyDeliverFiltersAndReplies(t *testing.T) {
	var replies []netip.AddrPort
	e, err := NewEasy(EasyConfig{Peer: hardPub,
		Payload: func(uint16) []byte { return nil },
		Send:    func(b []byte, to netip.AddrPort) error { replies = append(replies, to); return nil },
		Verify: func(pkt []byte, from netip.AddrPort) ([]byte, bool) {
			if string(pkt) == "ping" {
				return []byte("pong"), true
			}
			return nil, false
		}})
	if err != nil {
		t.Fatal(err)
	}
	if e.Deliver([]byte("ping"), netip.MustParseAddrPort("198.18.9.9:5000")) {
		t.Fatal("a datagram from another address was taken")
	}
	if !e.Deliver([]byte("junk"), netip.AddrPortFrom(hardPub, 5000)) || len(e.found) != 0 {
		t.Fatal("junk from the peer was not consumed, or counted as found")
	}
	v4mapped := netip.AddrPortFrom(netip.AddrFrom16(hardPub.As16()), 5001)
	if !e.Deliver([]byte("ping"), v4mapped) || len(replies) != 1 || replies[0] != netip.AddrPortFrom(hardPub, 5001) {
		t.Fatalf("a ping from the peer (v4-mapped) was not answered: %v", replies)
	}
	// More finds than the channel holds never block.
	for i := 0; i < 5; i++ {
		e.Deliver([]byte("ping"), netip.AddrPortFrom(hardPub, 5002))
	}
}

func TestConfigBounds(t *testing.T) {
	ok := EasyConfig{Peer: hardPub, Payload: func(uint16) []byte { return nil },
		Send: func([]byte, netip.AddrPort) error { return nil }, Verify: func([]byte, netip.AddrPort) ([]byte, bool) { return nil, false }}
	for name, mod := range map[string]func(*EasyConfig){
		"too many probes": func(c *EasyConfig) { c.Probes = MaxProbes + 1 },
		"too fast":        func(c *EasyConfig) { c.Rate = MaxRate + 1 },
		"no verify":       func(c *EasyConfig) { c.Verify = nil },
	} {
		c := ok
		mod(&c)
		if _, err := NewEasy(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Hard(context.Background(), HardConfig{Peer: netip.MustParseAddrPort("198.18.1.2:1"), Sockets: MaxSockets + 1,
		Payload: func(int) []byte { return nil }, Verify: ok.Verify}); err == nil {
		t.Error("hard side accepted more than MaxSockets")
	}
}

// TestHardKeepsOnlyTheWinner runs the hard side on loopback: the "easy
// side" answers from the socket of the 5th packet it receives.
func TestHardKeepsOnlyTheWinner(t *testing.T) {
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peerAddr := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	var mu sync.Mutex
	var opened []*net.UDPConn
	listen := func() (*net.UDPConn, error) {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err == nil {
			mu.Lock()
			opened = append(opened, c)
			mu.Unlock()
		}
		return c, err
	}
	target := make(chan netip.AddrPort, 1)
	go func() {
		buf := make([]byte, 100)
		for i := 0; ; i++ {
			_, from, err := peer.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if i == 4 {
				target <- from
				peer.WriteToUDPAddrPort([]byte("garbage"), from)
				peer.WriteToUDPAddrPort([]byte("probe"), from)
				return // the test reads the pong
			}
		}
	}()
	var replied []byte
	res, err := Hard(context.Background(), HardConfig{Peer: peerAddr, Sockets: 16, Timeout: 10 * time.Second,
		Listen:  listen,
		Payload: func(i int) []byte { return []byte("hello") },
		Verify: func(pkt []byte, from netip.AddrPort) ([]byte, bool) {
			if from != peerAddr || string(pkt) != "probe" {
				return nil, false
			}
			replied = []byte("pong")
			return replied, true
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Conn.Close()
	want := <-target
	if res.Local != want || res.Remote != peerAddr {
		t.Fatalf("won on %v → %v, want %v → %v", res.Local, res.Remote, want, peerAddr)
	}
	buf := make([]byte, 100)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, from, err := peer.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatal("no pong from the winner")
		}
		if from == want && string(buf[:n]) == "pong" {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, c := range opened {
		_, err := c.WriteToUDPAddrPort([]byte("x"), peerAddr)
		if c == res.Conn {
			if err != nil {
				t.Fatalf("the winner is closed: %v", err)
			}
		} else if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("socket %v still open after the search", c.LocalAddr())
		}
	}
	if res.Sent < 5 || res.Sent > 16 {
		t.Fatalf("sent %d", res.Sent)
	}
}

func TestHardNotFoundClosesAll(t *testing.T) {
	var opened []*net.UDPConn
	res, err := Hard(context.Background(), HardConfig{Peer: netip.MustParseAddrPort("127.0.0.1:9"), Sockets: 4,
		Timeout: 200 * time.Millisecond,
		Listen: func() (*net.UDPConn, error) {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			opened = append(opened, c)
			return c, err
		},
		Payload: func(int) []byte { return []byte("hello") },
		Verify:  func([]byte, netip.AddrPort) ([]byte, bool) { return nil, false }})
	if !errors.Is(err, ErrNotFound) || res.Conn != nil {
		t.Fatalf("%+v, %v; want ErrNotFound", res, err)
	}
	for _, c := range opened {
		if _, err := c.WriteToUDPAddrPort([]byte("x"), netip.MustParseAddrPort("127.0.0.1:9")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("socket %v left open", c.LocalAddr())
		}
	}
}

func TestMetrics(t *testing.T) {
	reg := metrics.NewRegistry()
	m := NewMetrics(reg)
	m.Observe(SideEasy, Result{Sent: 300}, nil)
	m.Observe(SideHard, Result{Sent: 256}, ErrNotFound)
	m.Observe(SideHard, Result{}, context.Canceled)
	problems, err := metrics.Lint(reg)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) > 0 {
		t.Fatalf("metric naming problems:\n%s", strings.Join(problems, "\n"))
	}
	for _, tc := range []struct {
		side, result string
		want         float64
	}{{"easy", "found", 1}, {"hard", "not_found", 1}, {"hard", "error", 1}, {"easy", "not_found", 0}} {
		if got := testutil.ToFloat64(m.searches.WithLabelValues(tc.side, tc.result)); got != tc.want {
			t.Errorf("searches{%s,%s} = %v, want %v", tc.side, tc.result, got, tc.want)
		}
	}
	if got := testutil.ToFloat64(m.packets.WithLabelValues("easy")); got != 300 {
		t.Errorf("packets{easy} = %v", got)
	}
	var nilm *Metrics
	nilm.Observe(SideEasy, Result{}, nil)
}
