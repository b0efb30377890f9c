//go:build lab

package portmap

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/lab"
)

// The lab tests run the client against a real miniupnpd on a lab router.
// The client runs in a child process (this test binary, re-executed with
// helperEnv set) inside the host's namespace, because the client opens
// sockets from its own goroutines and only a whole process can be put in a
// namespace. The child opens the node's UDP port, answers each datagram
// that starts with "ping" with "echo:" and the datagram, prints "rx <from>
// <data>" for every datagram, prints "mapping <ip:port> <kind>" each time
// the mapping changes and, when its stdin closes, closes the client (which
// deletes the mapping) and prints "closed". "send IP:PORT DATA" on its
// stdin sends DATA from the node's socket.

const (
	helperEnv      = "WIREMESH_PORTMAP_HELPER"
	helperProtoEnv = "WIREMESH_PORTMAP_PROTOCOLS"
	helperObsEnv   = "WIREMESH_PORTMAP_OBSERVER"
	helperCheckEnv = "WIREMESH_PORTMAP_CHECK"
	nodePort       = 41641
	// labCheckInterval makes restarts show within a second or two.
	labCheckInterval = time.Second
	// mapWait bounds waiting for a mapping: probing takes up to 1.5 s.
	mapWait = 15 * time.Second
	// minUptime is how long miniupnpd runs before the test restarts it. A
	// restart shows in the epoch only when the old epoch exceeds the RFC's
	// 2 s tolerance: a router that restarts within 2 s of starting is
	// indistinguishable from one that did not.
	minUptime = 4 * time.Second
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(helperMain())
	}
	os.Exit(m.Run())
}

// helperMain is the child process.
func helperMain() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{Port: nodePort})
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		return 1
	}
	defer conn.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			msg := string(buf[:n])
			fmt.Printf("rx %v %s\n", from, msg)
			if strings.HasPrefix(msg, "ping") { // only the tests' probes: no echo loops
				conn.WriteToUDPAddrPort([]byte("echo:"+msg), from)
			}
		}
	}()
	var protos []Kind
	if s := os.Getenv(helperProtoEnv); s != "" {
		for _, k := range strings.Split(s, ",") {
			protos = append(protos, Kind(k))
		}
	}
	obs, _ := netip.ParseAddrPort(os.Getenv(helperObsEnv))
	check := labCheckInterval
	if d, err := time.ParseDuration(os.Getenv(helperCheckEnv)); err == nil {
		check = d
	}
	c, err := Start(context.Background(), Config{
		Port: nodePort, Logger: log, Protocols: protos,
		CheckInterval: check, RetryInterval: time.Second,
		PublicAddr: func() netip.Addr { return observe(obs) },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start:", err)
		return 1
	}
	// stdin: "send IP:PORT DATA" sends DATA from the node's socket; EOF
	// closes the client.
	eof := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 3 && f[0] == "send" {
				if to, err := netip.ParseAddrPort(f[1]); err == nil {
					conn.WriteToUDPAddrPort([]byte(f[2]), to)
				}
			}
		}
		close(eof)
	}()
	for {
		select {
		case <-c.Changed():
			ext, kind := c.Mapping()
			fmt.Printf("mapping %v %s\n", ext, kind)
		case <-eof:
			if err := c.Close(); err != nil {
				fmt.Fprintln(os.Stderr, "close:", err)
				return 1
			}
			fmt.Println("closed")
			return 0
		}
	}
}

// observe asks the observer on the internet which address it sees us
// from, as the node's STUN probes would; the helper's PublicAddr.
func observe(obs netip.AddrPort) netip.Addr {
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		return netip.Addr{}
	}
	defer c.Close()
	buf := make([]byte, 64)
	for try := 0; try < 3; try++ {
		c.WriteToUDPAddrPort([]byte("?"), obs)
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil || from != obs {
			continue
		}
		if ap, err := netip.ParseAddrPort(string(buf[:n])); err == nil {
			return ap.Addr()
		}
	}
	return netip.Addr{}
}

// observer answers each datagram on c with the address it came from.
func observer(c *net.UDPConn) {
	buf := make([]byte, 64)
	for {
		_, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		c.WriteToUDPAddrPort([]byte(from.String()), from)
	}
}

// helper is the test's handle on the child.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func startHelper(t *testing.T, pl *portmapLab, protos string, env ...string) *helper {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := pl.host.Command(context.Background(), self, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1", helperProtoEnv+"="+protos, helperObsEnv+"="+pl.obs.String())
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = testWriter{t}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	hp := &helper{cmd: cmd, stdin: stdin, lines: make(chan string, 64)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			hp.lines <- sc.Text()
		}
		close(hp.lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return hp
}

// testWriter sends the child's log to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("helper: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// nextMapping waits for the next "mapping" line with a valid address.
func (hp *helper) nextMapping(t *testing.T) (netip.AddrPort, Kind) {
	t.Helper()
	timeout := time.After(mapWait)
	for {
		select {
		case l, ok := <-hp.lines:
			if !ok {
				t.Fatal("helper exited")
			}
			f := strings.Fields(l)
			if len(f) < 2 || f[0] != "mapping" {
				continue
			}
			ap, err := netip.ParseAddrPort(f[1])
			if err != nil || !ap.IsValid() {
				continue // "mapping invalid AddrPort": the mapping was lost
			}
			kind := KindNone
			if len(f) > 2 {
				kind = Kind(f[2])
			}
			return ap, kind
		case <-timeout:
			t.Fatalf("no mapping within %v", mapWait)
		}
	}
}

// send makes the child send data from the node's socket to `to`, until it
// reports "rx <from> <want>" (tries times, 300 ms apart); it returns
// whether that arrived.
func (hp *helper) exchange(t *testing.T, to, from netip.AddrPort, data, want string, tries int) bool {
	t.Helper()
	for i := 0; i < tries; i++ {
		fmt.Fprintf(hp.stdin, "send %v %s\n", to, data)
		timeout := time.After(300 * time.Millisecond)
	wait:
		for {
			select {
			case l, ok := <-hp.lines:
				if !ok {
					t.Fatal("helper exited")
				}
				if l == fmt.Sprintf("rx %v %s", from, want) {
					return true
				}
			case <-timeout:
				break wait
			}
		}
	}
	return false
}

// close closes the child's stdin and waits for "closed" and its exit.
func (hp *helper) close(t *testing.T) {
	t.Helper()
	hp.stdin.Close()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l, ok := <-hp.lines:
			if !ok {
				t.Fatal("helper exited without closing")
			}
			if l == "closed" {
				if err := hp.cmd.Wait(); err != nil {
					t.Fatalf("helper: %v", err)
				}
				return
			}
		case <-timeout:
			t.Fatal("helper did not close")
		}
	}
}

// reaches reports whether a datagram sent from c (on the WAN side) to ext
// comes back echoed by the host's socket: tries times, 300 ms each.
func reaches(c *net.UDPConn, ext netip.AddrPort, tries int) bool {
	buf := make([]byte, 100)
	for i := 0; i < tries; i++ {
		msg := "ping-" + strconv.Itoa(i)
		c.WriteToUDPAddrPort([]byte(msg), ext)
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if from == ext && string(buf[:n]) == "echo:"+msg {
				return true
			}
		}
	}
	return false
}

// portmapLab is a host behind a hard-NAT router running miniupnpd, and a
// peer on the internet.
type portmapLab struct {
	router *lab.Router
	host   *lab.Host
	peer   *net.UDPConn
	obs    netip.AddrPort // observer: answers with the source address
	mu     *lab.MiniUPnPd
}

func newPortmapLab(t *testing.T, cfg lab.MiniUPnPdConfig) *portmapLab {
	t.Helper()
	l := lab.New(t)
	r, err := l.AddRouter("gw", lab.RouterConfig{NAT: lab.Hard})
	if err != nil {
		t.Fatal(err)
	}
	h, err := l.AddHost("node", r)
	if err != nil {
		t.Fatal(err)
	}
	p, err := l.AddHost("peer", nil)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := p.ListenUDP(":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	oc, err := p.ListenUDP(":3478")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { oc.Close() })
	go observer(oc)
	logf, err := os.CreateTemp(t.TempDir(), "miniupnpd-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Log = logf
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("miniupnpd log:\n%s", b)
		}
	})
	mu, err := r.StartMiniUPnPd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &portmapLab{router: r, host: h, peer: pc, obs: netip.AddrPortFrom(p.Addr, 3478), mu: mu}
}

// assertMapped checks a mapping's address, that the WAN reaches the host
// through it, and that miniupnpd installed its DNAT rule.
func (pl *portmapLab) assertMapped(t *testing.T, ext netip.AddrPort, kind, want Kind) {
	t.Helper()
	if kind != want {
		t.Fatalf("mapping kind %q, want %q", kind, want)
	}
	if ext.Addr() != pl.router.WAN {
		t.Fatalf("mapped address %v, want the router's WAN address %v", ext, pl.router.WAN)
	}
	if !reaches(pl.peer, ext, 10) {
		t.Fatalf("a packet from the internet to %v does not reach the host", ext)
	}
	rules, err := pl.mu.Rules()
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 1 || !strings.Contains(rules[0], fmt.Sprintf("%s:%d", pl.host.Addr, nodePort)) {
		t.Fatalf("miniupnpd rules %q, want one DNAT to %v:%d", rules, pl.host.Addr, nodePort)
	}
}

// assertUnmapped checks that nothing is mapped any more.
func (pl *portmapLab) assertUnmapped(t *testing.T, ext netip.AddrPort) {
	t.Helper()
	rules, err := pl.mu.Rules()
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != 0 {
		t.Fatalf("miniupnpd still has rules after close: %q", rules)
	}
	if reaches(pl.peer, ext, 3) {
		t.Fatalf("%v still reaches the host after close", ext)
	}
}

// TestLabPortmap runs, per protocol, with miniupnpd serving only that
// protocol (see lab.MiniUPnPdConfig for how NAT-PMP and PCP are split): the
// client maps the node's port, a packet from the internet reaches the
// host's socket through it, a router restart (kill, state lost, start) is
// detected and the port mapped again, and the mapping is gone once the
// client closes.
func TestLabPortmap(t *testing.T) {
	for _, tc := range []struct {
		kind Kind
		cfg  lab.MiniUPnPdConfig
	}{
		{KindNATPMP, lab.MiniUPnPdConfig{NATPMP: true}},
		{KindPCP, lab.MiniUPnPdConfig{PCP: true}},
		{KindUPnP, lab.MiniUPnPdConfig{UPnP: true}},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			pl := newPortmapLab(t, tc.cfg)
			// The client tries all three; only one answers.
			hp := startHelper(t, pl, "")
			ext, kind := hp.nextMapping(t)
			pl.assertMapped(t, ext, kind, tc.kind)

			// Restart: with the epoch checked every second, the
			// client must see it and map again.
			time.Sleep(time.Until(pl.mu.Started().Add(minUptime)))
			if err := pl.mu.Restart(); err != nil {
				t.Fatal(err)
			}
			ext2, kind2 := hp.nextMapping(t)
			pl.assertMapped(t, ext2, kind2, tc.kind)

			hp.close(t)
			pl.assertUnmapped(t, ext2)
		})
	}
}

// TestLabPortmapHardHard: two hosts, each behind its own hard-NAT router
// running miniupnpd, map their ports; a datagram from each node's socket to
// the other's mapped address gets through and the answer comes back from
// that mapped address: a direct path between two hard NATs. Without port
// mapping, sending to the peer's STUN-observed address does not get
// through (the hard NAT maps the flow to the peer elsewhere).
func TestLabPortmapHardHard(t *testing.T) {
	l := lab.New(t)
	var pls [2]*portmapLab
	p, err := l.AddHost("peer", nil)
	if err != nil {
		t.Fatal(err)
	}
	oc, err := p.ListenUDP(":3478")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { oc.Close() })
	go observer(oc)
	for i := range pls {
		r, err := l.AddRouter(fmt.Sprintf("gw%d", i), lab.RouterConfig{NAT: lab.Hard})
		if err != nil {
			t.Fatal(err)
		}
		h, err := l.AddHost(fmt.Sprintf("node%d", i), r)
		if err != nil {
			t.Fatal(err)
		}
		mu, err := r.StartMiniUPnPd(lab.MiniUPnPdConfig{NATPMP: true})
		if err != nil {
			t.Fatal(err)
		}
		pls[i] = &portmapLab{router: r, host: h, obs: netip.AddrPortFrom(p.Addr, 3478), mu: mu}
	}
	a, b := startHelper(t, pls[0], ""), startHelper(t, pls[1], "")
	ma, _ := a.nextMapping(t)
	mb, _ := b.nextMapping(t)
	if !a.exchange(t, mb, mb, "ping-a", "echo:ping-a", 10) {
		t.Fatalf("node 0 → %v (node 1's mapping): no answer", mb)
	}
	if !b.exchange(t, ma, ma, "ping-b", "echo:ping-b", 10) {
		t.Fatalf("node 1 → %v (node 0's mapping): no answer", ma)
	}
	// Baseline: node 1's socket as the observer sees it, without using
	// its mapping: a hard NAT gives the flow to node 0 another port.
	bStun := netip.AddrPortFrom(pls[1].router.WAN, 0)
	b.stdin.Write([]byte(fmt.Sprintf("send %v ?\n", netip.AddrPortFrom(p.Addr, 3478))))
	timeout := time.After(5 * time.Second)
	for !bStun.IsValid() || bStun.Port() == 0 {
		select {
		case l := <-b.lines:
			f := strings.Fields(l)
			if len(f) == 3 && f[0] == "rx" && f[1] == netip.AddrPortFrom(p.Addr, 3478).String() {
				bStun, _ = netip.ParseAddrPort(f[2])
			}
		case <-timeout:
			t.Fatal("no answer from the observer")
		}
	}
	if bStun == mb {
		t.Fatalf("node 1's flow to the observer used its mapped address %v: the NAT is not hard", mb)
	}
	if a.exchange(t, bStun, bStun, "ping-stun", "echo:ping-stun", 3) {
		t.Fatalf("node 0 reached node 1 at its STUN address %v without port mapping", bStun)
	}
	a.close(t)
	b.close(t)
}

// TestLabPortmapAnnouncement: with the periodic check an hour away, a
// router restart is still noticed at once, through the announcement
// miniupnpd multicasts to 224.0.0.1:5350 when it starts, for NAT-PMP and for
// PCP.
func TestLabPortmapAnnouncement(t *testing.T) {
	for _, tc := range []struct {
		kind Kind
		cfg  lab.MiniUPnPdConfig
	}{
		{KindNATPMP, lab.MiniUPnPdConfig{NATPMP: true}},
		{KindPCP, lab.MiniUPnPdConfig{PCP: true}},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			pl := newPortmapLab(t, tc.cfg)
			hp := startHelper(t, pl, string(tc.kind), helperCheckEnv+"=1h")
			ext, kind := hp.nextMapping(t)
			pl.assertMapped(t, ext, kind, tc.kind)
			time.Sleep(time.Until(pl.mu.Started().Add(minUptime)))
			if err := pl.mu.Restart(); err != nil {
				t.Fatal(err)
			}
			ext2, kind2 := hp.nextMapping(t)
			pl.assertMapped(t, ext2, kind2, tc.kind)
			hp.close(t)
			pl.assertUnmapped(t, ext2)
		})
	}
}

// TestLabPortmapPreference: with everything on, NAT-PMP wins; limited to
// PCP and UPnP, PCP wins.
func TestLabPortmapPreference(t *testing.T) {
	pl := newPortmapLab(t, lab.MiniUPnPdConfig{NATPMP: true, PCP: true, UPnP: true})
	hp := startHelper(t, pl, "")
	ext, kind := hp.nextMapping(t)
	pl.assertMapped(t, ext, kind, KindNATPMP)
	hp.close(t)
	pl.assertUnmapped(t, ext)

	hp = startHelper(t, pl, "pcp,upnp")
	ext, kind = hp.nextMapping(t)
	pl.assertMapped(t, ext, kind, KindPCP)
	hp.close(t)
	pl.assertUnmapped(t, ext)
}
