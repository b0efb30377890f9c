//go:build lab

package punch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/lab"
)

// birthdayLab is an easy-NAT host and a hard-NAT host (masquerade
// random,fully-random), both behind home routers, and an observer on the
// internet that answers with the address it sees (a STUN stand-in).
type birthdayLab struct {
	easyR, hardR *lab.Router
	easy, hard   *lab.Host
	obs          netip.AddrPort
}

func newBirthdayLab(t *testing.T) *birthdayLab {
	t.Helper()
	l := lab.New(t)
	er, err := l.AddRouter("easy-gw", lab.RouterConfig{NAT: lab.Easy})
	if err != nil {
		t.Fatal(err)
	}
	hr, err := l.AddRouter("hard-gw", lab.RouterConfig{NAT: lab.Hard})
	if err != nil {
		t.Fatal(err)
	}
	e, err := l.AddHost("easy", er)
	if err != nil {
		t.Fatal(err)
	}
	h, err := l.AddHost("hard", hr)
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.AddHost("stun", nil)
	if err != nil {
		t.Fatal(err)
	}
	oc, err := s.ListenUDP(":3478")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { oc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := oc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			oc.WriteToUDPAddrPort([]byte(from.String()), from)
		}
	}()
	return &birthdayLab{easyR: er, hardR: hr, easy: e, hard: h, obs: netip.AddrPortFrom(s.Addr, 3478)}
}

// observed returns c's public ip:port as the observer sees it.
func (bl *birthdayLab) observed(t *testing.T, c *net.UDPConn) netip.AddrPort {
	t.Helper()
	buf := make([]byte, 64)
	for try := 0; try < 5; try++ {
		c.WriteToUDPAddrPort([]byte("?"), bl.obs)
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil || from != bl.obs {
			continue
		}
		c.SetReadDeadline(time.Time{})
		ap, err := netip.ParseAddrPort(string(buf[:n]))
		if err != nil {
			t.Fatal(err)
		}
		return ap
	}
	t.Fatal("no answer from the observer")
	return netip.AddrPort{}
}

// hardLead is how much longer the hard side waits than the easy side
// probes: it starts first and spends up to a second opening its sockets.
const hardLead = 3 * time.Second

// runResult is one search's outcome.
type runResult struct {
	found      bool
	elapsed    time.Duration // easy side: first probe to verified answer
	easySent   int
	hardSent   int
	hardRemote netip.AddrPort
}

// birthdayRun runs one search between fresh sockets: the easy side on port,
// the hard side with n sockets; probes and rate configure the easy side.
// After a find it checks the path carries data both ways and that the hard
// side kept exactly one socket.
func (bl *birthdayLab) run(t *testing.T, port, n, probes, rate int, timeout time.Duration, plain bool) runResult {
	t.Helper()
	ec, err := bl.easy.ListenUDP(fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	easyPub := bl.observed(t, ec)
	if easyPub.Addr() != bl.easyR.WAN {
		t.Fatalf("easy side seen as %v, want its router %v", easyPub, bl.easyR.WAN)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*timeout+hardLead)
	defer cancel()
	hardVerify := func(pkt []byte, from netip.AddrPort) ([]byte, bool) {
		if from != easyPub || string(pkt) != "E-probe" {
			return nil, false
		}
		return []byte("H-pong"), true
	}
	ready := make(chan struct{})
	type hardOut struct {
		r   Result
		err error
	}
	hardc := make(chan hardOut, 1)
	var plainTarget netip.AddrPort
	if plain {
		// The baseline, plain hole punching: one socket, whose public
		// address the observer reports, and the easy side probes just
		// that address. A hard NAT maps the flow to the peer elsewhere.
		hc, err := bl.hard.ListenUDP(":0")
		if err != nil {
			t.Fatal(err)
		}
		plainTarget = bl.observed(t, hc)
		n = 1
		go func() {
			r, err := Hard(ctx, HardConfig{Peer: easyPub, Sockets: 1, Timeout: timeout + hardLead,
				Payload: func(int) []byte { return []byte("H-ping") }, Verify: hardVerify,
				Listen: func() (*net.UDPConn, error) { return hc, nil }, Sent: func() { close(ready) }})
			hardc <- hardOut{r, err}
		}()
	} else {
		go func() {
			r, err := Hard(ctx, HardConfig{Peer: easyPub, Sockets: n, Timeout: timeout + hardLead,
				Payload: func(int) []byte { return []byte("H-ping") }, Verify: hardVerify,
				Listen: func() (*net.UDPConn, error) { return bl.hard.ListenUDP(":0") }, Sent: func() { close(ready) }})
			hardc <- hardOut{r, err}
		}()
	}
	select {
	case <-ready:
	case ho := <-hardc:
		t.Fatalf("hard side ended before sending: %+v %v", ho.r, ho.err)
	}

	easy, err := NewEasy(EasyConfig{Peer: bl.hardR.WAN, Probes: probes, Rate: rate, Timeout: timeout,
		Payload: func(uint16) []byte { return []byte("E-probe") },
		Send: func(b []byte, to netip.AddrPort) error {
			if plain {
				to = plainTarget
			}
			_, err := ec.WriteToUDPAddrPort(b, to)
			return err
		},
		Verify: func(pkt []byte, from netip.AddrPort) ([]byte, bool) {
			return nil, strings.HasPrefix(string(pkt), "H-")
		}})
	if err != nil {
		t.Fatal(err)
	}
	readerDone := make(chan struct{})
	stopReader := make(chan struct{})
	go func() {
		defer close(readerDone)
		buf := make([]byte, 1500)
		for {
			ec.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			m, from, err := ec.ReadFromUDPAddrPort(buf)
			select {
			case <-stopReader:
				return
			default:
			}
			if err == nil {
				easy.Deliver(buf[:m], from)
			}
		}
	}()
	er, eerr := easy.Run(ctx)
	if eerr != nil {
		cancel() // the hard side's wait is over too
	}
	close(stopReader)
	<-readerDone
	ec.SetReadDeadline(time.Time{})
	ho := <-hardc
	res := runResult{found: eerr == nil && ho.err == nil, elapsed: er.Elapsed, easySent: er.Sent, hardSent: ho.r.Sent, hardRemote: ho.r.Remote}
	if eerr == nil && ho.err != nil && !errors.Is(ho.err, context.Canceled) {
		t.Fatalf("easy side found %v but the hard side failed: %v", er.Remote, ho.err)
	}
	if ho.err != nil {
		return res
	}
	defer ho.r.Conn.Close()
	if er.Remote.Addr() != bl.hardR.WAN || ho.r.Remote != easyPub {
		t.Fatalf("found easy→%v, hard→%v; want the hard router's address and %v", er.Remote, ho.r.Remote, easyPub)
	}
	if er.Sent > probes || ho.r.Sent > n {
		t.Fatalf("sent %d probes (budget %d) and %d hard packets (budget %d)", er.Sent, probes, ho.r.Sent, n)
	}
	// The path carries data both ways.
	if _, err := ec.WriteToUDPAddrPort([]byte("data-e"), er.Remote); err != nil {
		t.Fatal(err)
	}
	if got := readFrom(ho.r.Conn, easyPub); got != "data-e" {
		t.Fatalf("hard side got %q over the found path", got)
	}
	if _, err := ho.r.Conn.WriteToUDPAddrPort([]byte("data-h"), easyPub); err != nil {
		t.Fatal(err)
	}
	if got := readFrom(ec, er.Remote); got != "data-h" {
		t.Fatalf("easy side got %q over the found path", got)
	}
	// Every socket but the winner is closed.
	if k := udpSockets(t, bl.hard); k != 1 {
		t.Fatalf("hard side has %d UDP sockets open after the search, want 1", k)
	}
	return res
}

// readFrom returns the first datagram from "from" within a second.
func readFrom(c *net.UDPConn, from netip.AddrPort) string {
	buf := make([]byte, 1500)
	deadline := time.Now().Add(time.Second)
	c.SetReadDeadline(deadline)
	defer c.SetReadDeadline(time.Time{})
	for {
		n, f, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return ""
		}
		if f == from && strings.HasPrefix(string(buf[:n]), "data-") {
			return string(buf[:n])
		}
	}
}

// udpSockets counts the UDP sockets open in h's namespace.
func udpSockets(t *testing.T, h *lab.Host) int {
	t.Helper()
	out, err := h.Command(context.Background(), "ss", "-Huan").Output()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return n
}

// TestLabBirthdaySearch runs the easy-hard search 20 times with the default
// budgets (256 hard sockets, up to 2048 probes at 500/s) and, as the
// baseline, plain hole punching (the easy side probes only the address the
// hard side's STUN saw) 20 times. It requires 90% of the searches to find
// a path that carries data both ways, and the baseline to find none.
func TestLabBirthdaySearch(t *testing.T) {
	bl := newBirthdayLab(t)
	const runs = 20
	var found, plainFound int
	var times []time.Duration
	var easySent, hardSent int
	for i := 0; i < runs; i++ {
		r := bl.run(t, 42000+i, DefaultSockets, DefaultProbes, DefaultRate, DefaultTimeout, false)
		easySent += r.easySent
		hardSent += r.hardSent
		t.Logf("run %d: found=%v after %v, %d probes", i, r.found, r.elapsed.Round(time.Millisecond), r.easySent)
		if r.found {
			found++
			times = append(times, r.elapsed)
		}
	}
	for i := 0; i < runs; i++ {
		if r := bl.run(t, 43000+i, 1, 1, DefaultRate, 1500*time.Millisecond, true); r.found {
			plainFound++
		}
	}
	slices.Sort(times)
	median := time.Duration(0)
	if len(times) > 0 {
		median = times[len(times)/2]
	}
	t.Logf("birthday search: %d/%d found; time to path median %v, max %v; packets per run: easy %d, hard %d",
		found, runs, median.Round(time.Millisecond), lastOr(times).Round(time.Millisecond), easySent/runs, hardSent/runs)
	t.Logf("baseline (plain hole punching): %d/%d found", plainFound, runs)
	if found < runs*9/10 {
		t.Errorf("birthday search found a path in %d of %d runs, want at least 90%%", found, runs)
	}
	if plainFound != 0 {
		t.Errorf("plain hole punching found a path through the hard NAT in %d runs: the lab's hard NAT is not hard", plainFound)
	}
}

func lastOr(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[len(d)-1]
}
