//go:build lab && linux

package router

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/filter"
	"github.com/wiremesh/wiremesh/meshnode/routes"
	"golang.zx2c4.com/wireguard/tun"
)

// The lab tests build, in namespaces of their own:
//
//	core ── inet     198.18.1.2   an "internet" host (counts every connection)
//	     ── coord    198.18.2.2   the coordinator / relay stand-in
//	     ── exit     198.18.x.2   exit node (public, no NAT of its own)
//	     ── sub      (lab router) subnet router node ── printer 198.19.a.2 (no default route)
//	     ── home     (lab router, NAT) ── client 198.19.b.2
//
// and a mesh stand-in: a TUN device "wm0" in client, sub and exit, with a
// goroutine that carries packets between client's TUN and the others by
// destination, as wireguard-go's cryptokey routing would (sub for its LAN
// and 100.64.0.1, exit for everything else). The router-side TUNs are
// wrapped in a Forwarder, as the daemon wraps its device.

const (
	tunName  = "wm0"
	tunMTU   = 1280
	tunOff   = 16 // room for the virtio header wireguard-go's TUN may use
	dialWait = 1500 * time.Millisecond
	// quietWait is how long a test watches for traffic that must not
	// arrive. Packets in these namespaces take microseconds; a second is
	// plenty under load.
	quietWait = time.Second
)

var (
	meshSub    = netip.MustParseAddr("100.64.0.1")
	meshClient = netip.MustParseAddr("100.64.0.2")
	meshExit   = netip.MustParseAddr("100.64.0.3")
	meshAddrs  = []netip.Addr{meshSub, meshClient, meshExit}
)

type world struct {
	l                          *lab.Lab
	inet, coord, exit, printer *lab.Host
	client                     *lab.Host
	sub, home                  *lab.Router
	inetConns                  *atomic.Int64
	clientTUN, subTUN, exitTUN tun.Device
	subFwd, exitFwd            *Forwarder
	subPolicy, exitPolicy      *filter.Filter
	clientR, subR, exitR       *Router
	exitDead                   atomic.Bool
	lan                        netip.Prefix // printer's LAN
}

// must returns v, failing tb if err is set.
func must[T any](tb testing.TB, v T, err error) T {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

func addHost(t testing.TB, l *lab.Lab, name string, r *lab.Router) *lab.Host {
	t.Helper()
	h, err := l.AddHost(name, r)
	return must(t, h, err)
}

func addRouter(t testing.TB, l *lab.Lab, name string) *lab.Router {
	t.Helper()
	r, err := l.AddRouter(name, lab.RouterConfig{NAT: lab.Easy})
	return must(t, r, err)
}

func listen(t testing.TB, ns *lab.Namespace, addr string) net.Listener {
	t.Helper()
	ln, err := ns.Listen(addr)
	return must(t, ln, err)
}

func mkTUN(t testing.TB, ns *lab.Namespace, self netip.Addr) tun.Device {
	t.Helper()
	d, err := makeTUN(ns, self)
	return must(t, d, err)
}

// do runs fn inside ns and fails the test on error.
func do(t testing.TB, ns *lab.Namespace, fn func() error) {
	t.Helper()
	if err := ns.Do(fn); err != nil {
		t.Fatalf("in %s: %v", ns.Short, err)
	}
}

// makeTUN creates the mesh TUN device in ns as the daemon does: address
// self/32, up, 100.64.0.0/10 routed into it.
func makeTUN(ns *lab.Namespace, self netip.Addr) (tun.Device, error) {
	var dev tun.Device
	err := ns.Do(func() error {
		var err error
		if dev, err = tun.CreateTUN(tunName, tunMTU); err != nil {
			return err
		}
		link, err := netlink.LinkByName(tunName)
		if err != nil {
			return err
		}
		if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(self, 32))}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		return netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixToIPNet(routes.MeshRange),
			Src: self.AsSlice(), Scope: netlink.SCOPE_LINK})
	})
	return dev, err
}

// serve answers every connection on ln with the remote address it saw and
// counts connections in n.
func serve(t testing.TB, ln net.Listener, n *atomic.Int64) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if n != nil {
				n.Add(1)
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
}

// ask dials addr from ns (marked with the bypass mark when mark is set) and
// returns the source address the server saw.
func ask(ns *lab.Namespace, addr string, mark bool) (string, error) {
	return askWithin(ns, addr, mark, dialWait)
}

// askWithin is ask with its own timeout for the dial and the answer.
func askWithin(ns *lab.Namespace, addr string, mark bool, wait time.Duration) (string, error) {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: wait}
		if mark {
			d.Control = Control
		}
		var err error
		c, err = d.Dial("tcp4", addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// pump carries packets from src to whichever device route picks (nil:
// drop) until src is closed.
func pump(wg *sync.WaitGroup, src tun.Device, route func(dst netip.Addr) tun.Device) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		n := src.BatchSize()
		bufs, sizes := make([][]byte, n), make([]int, n)
		for i := range bufs {
			bufs[i] = make([]byte, tunOff+65535)
		}
		for {
			k, err := src.Read(bufs, sizes, tunOff)
			for i := 0; i < k; i++ {
				pkt := bufs[i][tunOff : tunOff+sizes[i]]
				p, ok := filter.Parse(pkt)
				if !ok {
					continue
				}
				dst := route(p.Dst)
				if dst == nil {
					continue
				}
				out := make([]byte, tunOff+len(pkt), tunOff+65535)
				copy(out[tunOff:], pkt)
				dst.Write([][]byte{out}, tunOff)
			}
			if err != nil && !errors.Is(err, tun.ErrTooManySegments) {
				return
			}
		}
	}()
}

func newWorld(t testing.TB) *world { return newWorldWith(t, false) }

// newWorldWith builds the world with the stand-in mesh, or with real
// wireguard-go between the client and the two routers (realWG; then the
// exit node offers only its own address and exitDead has no effect).
func newWorldWith(t testing.TB, realWG bool) *world {
	t.Helper()
	w := &world{l: lab.New(t), inetConns: &atomic.Int64{}}
	l := w.l
	w.inet = addHost(t, l, "inet", nil)
	w.coord = addHost(t, l, "coord", nil)
	w.exit = addHost(t, l, "exit", nil)
	w.sub = addRouter(t, l, "sub")
	w.printer = addHost(t, l, "printer", w.sub)
	w.home = addRouter(t, l, "home")
	w.client = addHost(t, l, "client", w.home)
	w.lan = netip.PrefixFrom(w.printer.Addr, 24).Masked()
	// With SNAT the printer needs no route back to the mesh: it gets none.
	if err := w.printer.IP("route del default"); err != nil {
		t.Fatal(err)
	}

	serve(t, listen(t, w.inet.Namespace, ":80"), w.inetConns)
	serve(t, listen(t, w.coord.Namespace, ":443"), nil)
	serve(t, listen(t, w.printer.Namespace, ":80"), nil)
	serve(t, listen(t, w.printer.Namespace, ":22"), nil)

	w.clientTUN = mkTUN(t, w.client.Namespace, meshClient)
	w.subTUN = mkTUN(t, w.sub.Namespace, meshSub)
	w.exitTUN = mkTUN(t, w.exit.Namespace, meshExit)

	src := []netip.Prefix{netip.PrefixFrom(meshClient, 32)}
	w.subPolicy = filter.New(nil)
	w.subPolicy.SetRules([]filter.Rule{{Srcs: src, Dsts: []filter.PortRange{{Dst: w.lan, First: 80, Last: 80}}}})
	w.exitPolicy = filter.New(nil)
	w.exitPolicy.SetRules([]filter.Rule{{Srcs: src, Dsts: []filter.PortRange{{Dst: routes.ExitPrefix, First: 0, Last: 65535}}}})
	w.subFwd = NewForwarder(w.subTUN, meshSub, w.subPolicy, nil)
	w.subFwd.SetRoutes([]netip.Prefix{w.lan})
	w.exitFwd = NewForwarder(w.exitTUN, meshExit, w.exitPolicy, nil)
	w.exitFwd.SetRoutes([]netip.Prefix{routes.ExitPrefix})

	var wg sync.WaitGroup
	if realWG {
		w.startWG(t)
	} else {
		w.startStandIn(&wg)
	}

	do(t, w.client.Namespace, func() (err error) {
		w.clientR, err = New(Config{TUN: tunName, Self: meshClient})
		return err
	})
	do(t, w.sub.Namespace, func() (err error) {
		w.subR, err = New(Config{TUN: tunName, Self: meshSub})
		return err
	})
	do(t, w.exit.Namespace, func() (err error) {
		w.exitR, err = New(Config{TUN: tunName, Self: meshExit})
		return err
	})
	t.Cleanup(func() {
		for _, d := range []tun.Device{w.clientTUN, w.subTUN, w.exitTUN} {
			d.Close()
		}
		wg.Wait()
	})
	return w
}

// startWG connects the client to sub and exit with wireguard-go. The sub
// router's home firewall would drop the client's first handshake on its
// WAN; its input chain is emptied so the client can initiate, as it could
// to a subnet router with a public port.
func (w *world) startWG(t testing.TB) {
	if err := w.sub.Nft("flush chain inet wmfilter input\n"); err != nil {
		t.Fatal(err)
	}
	clientKey, subKey, exitKey := key.NewNode(), key.NewNode(), key.NewNode()
	toClient := []string{"public_key=" + clientKey.Public().UAPI(), "allowed_ip=" + netip.PrefixFrom(meshClient, 32).String()}
	subWG := startWG(t, w.sub.Namespace, w.subFwd, subKey, toClient...)
	exitWG := startWG(t, w.exit.Namespace, w.exitFwd, exitKey, toClient...)
	clientWG := startWG(t, w.client.Namespace, w.clientTUN, clientKey,
		fmt.Sprintf("fwmark=%d", BypassMark),
		"public_key="+subKey.Public().UAPI(),
		"endpoint="+netip.AddrPortFrom(w.sub.WAN, wgPort).String(),
		"allowed_ip="+netip.PrefixFrom(meshSub, 32).String(), "allowed_ip="+w.lan.String(),
		"public_key="+exitKey.Public().UAPI(),
		"endpoint="+netip.AddrPortFrom(w.exit.Addr, wgPort).String(),
		"allowed_ip="+netip.PrefixFrom(meshExit, 32).String())
	t.Cleanup(func() {
		clientWG.Close()
		subWG.Close()
		exitWG.Close()
	})
}

// startStandIn connects the client to sub and exit with the stand-in.
func (w *world) startStandIn(wg *sync.WaitGroup) {
	pump(wg, w.clientTUN, func(dst netip.Addr) tun.Device {
		switch {
		case dst == meshSub || w.lan.Contains(dst):
			return w.subFwd
		case w.exitDead.Load():
			return nil
		default:
			return w.exitFwd
		}
	})
	toClient := func(dst netip.Addr) tun.Device {
		if dst == meshClient {
			return w.clientTUN
		}
		return nil
	}
	pump(wg, w.subFwd, toClient)
	pump(wg, w.exitFwd, func(dst netip.Addr) tun.Device {
		if w.exitDead.Load() {
			return nil
		}
		return toClient(dst)
	})
}

func (w *world) set(t testing.TB, ns *lab.Namespace, r *Router, s State) {
	t.Helper()
	do(t, ns, func() error { return r.Set(s) })
}

// TestLabSubnetRouterPrinter: a printer on a LAN behind a subnet router is
// reached from a client behind another NAT once the client accepts the
// route, and not before; with SNAT it sees the router's LAN address and
// needs no route back; without SNAT it cannot answer. The policy allows
// port 80, not 22: 22 is dropped at the router and counted.
func TestLabSubnetRouterPrinter(t *testing.T) {
	w := newWorld(t)
	printer80 := netip.AddrPortFrom(w.printer.Addr, 80).String()
	printer22 := netip.AddrPortFrom(w.printer.Addr, 22).String()
	w.set(t, w.sub.Namespace, w.subR, State{Advertise: []netip.Prefix{w.lan}, SNAT: true, MeshAddrs: meshAddrs})

	if src, err := ask(w.client.Namespace, printer80, false); err == nil {
		t.Fatalf("printer reached before the route was accepted (source %s)", src)
	}

	w.set(t, w.client.Namespace, w.clientR, State{Routes: []Route{{Prefix: w.lan, Up: true}}})
	src, err := ask(w.client.Namespace, printer80, false)
	if err != nil {
		t.Fatalf("printer:80 through the subnet router: %v", err)
	}
	if src != w.printer.Gateway.String() {
		t.Fatalf("printer saw source %s, want the router's LAN address %s (SNAT)", src, w.printer.Gateway)
	}

	before := w.subFwd.Drops(ReasonNoRule)
	if src, err := ask(w.client.Namespace, printer22, false); err == nil {
		t.Fatalf("printer:22 reached (source %s) though the policy allows only 80", src)
	}
	if got := w.subFwd.Drops(ReasonNoRule); got <= before {
		t.Fatalf("no_rule drops %d -> %d: port 22 not dropped at the router", before, got)
	}
	if w.subFwd.Forwarded() == 0 {
		t.Fatal("forwarded counter did not move")
	}

	// Without SNAT the printer (no route back) cannot answer.
	w.set(t, w.sub.Namespace, w.subR, State{Advertise: []netip.Prefix{w.lan}, SNAT: false, MeshAddrs: meshAddrs})
	if src, err := ask(w.client.Namespace, printer80, false); err == nil {
		t.Fatalf("printer answered without SNAT and without a route back (source %s)", src)
	}
	t.Logf("forward drops: no_rule=%d not_routed=%d; forwarded=%d",
		w.subFwd.Drops(ReasonNoRule), w.subFwd.Drops(ReasonNotRouted), w.subFwd.Forwarded())
}

// TestLabAntiSpoofing: a LAN host that claims a mesh-assigned address is
// dropped at the router and counted; one using another 100.64.0.0/10
// address (someone's CGNAT) is not touched.
func TestLabAntiSpoofing(t *testing.T) {
	w := newWorld(t)
	w.set(t, w.sub.Namespace, w.subR, State{Advertise: []netip.Prefix{w.lan}, SNAT: true, MeshAddrs: meshAddrs})
	cgnat := netip.MustParseAddr("100.100.7.7")
	for _, a := range []netip.Addr{meshClient, cgnat} {
		if err := w.printer.IP(fmt.Sprintf("addr add %s/32 dev eth0", a)); err != nil {
			t.Fatal(err)
		}
	}
	rx, err := w.sub.ListenUDP(netip.AddrPortFrom(w.printer.Gateway, 9999).String())
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	send := func(from netip.Addr) {
		t.Helper()
		do(t, w.printer.Namespace, func() error {
			c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 0)),
				net.UDPAddrFromAddrPort(netip.AddrPortFrom(w.printer.Gateway, 9999)))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte(from.String()))
			return err
		})
	}
	send(meshClient)
	send(cgnat)
	rx.SetReadDeadline(time.Now().Add(quietWait))
	buf := make([]byte, 64)
	var got []string
	for {
		n, err := rx.Read(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:n]))
	}
	if len(got) != 1 || got[0] != cgnat.String() {
		t.Fatalf("router received %v, want only the CGNAT sender %s", got, cgnat)
	}
	var drops uint64
	do(t, w.sub.Namespace, func() error { drops = w.subR.SpoofedDrops(); return nil })
	if drops != 1 {
		t.Fatalf("spoofed drops = %d, want 1", drops)
	}
}

// TestLabExitNode: all the client's traffic leaves through the exit node
// with its address as source; the coordinator stays reachable directly
// through the bypass mark; the LAN stays direct with LAN access allowed;
// and with the exit node gone nothing reaches the internet host.
func TestLabExitNode(t *testing.T) {
	w := newWorld(t)
	inet := netip.AddrPortFrom(w.inet.Addr, 80).String()
	coord := netip.AddrPortFrom(w.coord.Addr, 443).String()
	w.set(t, w.exit.Namespace, w.exitR, State{ExitNode: true, MeshAddrs: meshAddrs})
	var lanPrefixes []netip.Prefix
	do(t, w.client.Namespace, func() (err error) { lanPrefixes, err = LANPrefixes(tunName); return err })
	if len(lanPrefixes) != 1 || !lanPrefixes[0].Contains(w.client.Addr) {
		t.Fatalf("LANPrefixes = %v, want the client's /24", lanPrefixes)
	}
	// Strict reverse-path filtering, as some distributions ship: replies
	// to the node's own marked sockets must still pass (see NftTable).
	do(t, w.client.Namespace, func() error {
		for _, k := range []string{"all", "eth0"} {
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+k+"/rp_filter", []byte("1"), 0); err != nil {
				return err
			}
		}
		return nil
	})
	// An IPv6 default route on the underlay (no address, nothing is
	// sent: a UDP connect only asks the kernel for a route).
	if err := w.client.IP("route add ::/0 dev eth0"); err != nil {
		t.Fatal(err)
	}
	v6 := func() error {
		var err error
		w.client.Do(func() error {
			var c net.Conn
			if c, err = net.Dial("udp6", "[2001:db8::1]:53"); err == nil {
				c.Close()
			}
			return nil
		})
		return err
	}
	if err := v6(); err != nil {
		t.Fatalf("IPv6 route lookup before the exit node: %v", err)
	}
	exitOn := State{Routes: []Route{{Prefix: routes.ExitPrefix, Up: true}}, AllowLANAccess: true, LAN: lanPrefixes}
	w.set(t, w.client.Namespace, w.clientR, exitOn)

	if src, err := ask(w.client.Namespace, inet, false); err != nil || src != w.exit.Addr.String() {
		t.Fatalf("internet host saw %q (%v), want the exit node's address %s", src, err, w.exit.Addr)
	}
	// The mesh carries no IPv6: it is blackholed, not sent to the underlay.
	if err := v6(); !unreachable(err) {
		t.Fatalf("IPv6 with an exit node in use: %v, want unreachable", err)
	}
	// The node's own (marked) socket to the coordinator goes direct: the
	// coordinator sees the client's NAT, not the exit node.
	if src, err := ask(w.client.Namespace, coord, true); err != nil || src != w.home.WAN.String() {
		t.Fatalf("marked dial to the coordinator: saw %q (%v), want direct from %s", src, err, w.home.WAN)
	}
	// An unmarked socket to the same address goes through the exit node.
	if src, err := ask(w.client.Namespace, coord, false); err != nil || src != w.exit.Addr.String() {
		t.Fatalf("unmarked dial to the coordinator: saw %q (%v), want via the exit %s", src, err, w.exit.Addr)
	}

	// LAN access: the home gateway answers directly.
	gw := netip.AddrPortFrom(w.client.Gateway, 8080).String()
	serve(t, listen(t, w.home.Namespace, gw), nil)
	if src, err := ask(w.client.Namespace, gw, false); err != nil || src != w.client.Addr.String() {
		t.Fatalf("LAN with access allowed: saw %q (%v), want direct from %s", src, err, w.client.Addr)
	}
	noLAN := exitOn
	noLAN.AllowLANAccess = false
	w.set(t, w.client.Namespace, w.clientR, noLAN)
	if src, err := ask(w.client.Namespace, gw, false); err == nil {
		t.Fatalf("LAN reached directly (source %s) without --exit-node-allow-lan-access", src)
	}
	w.set(t, w.client.Namespace, w.clientR, exitOn)

	// The exit node dies: packets to it vanish, and none reach the
	// internet host through the underlay.
	w.exitDead.Store(true)
	seen := w.inetConns.Load()
	if src, err := ask(w.client.Namespace, inet, false); err == nil {
		t.Fatalf("internet reached with the exit node dead (source %s)", src)
	}
	// The selector declares it down: the route becomes unreachable and
	// sockets fail at once instead of waiting.
	w.set(t, w.client.Namespace, w.clientR, State{Routes: []Route{{Prefix: routes.ExitPrefix, Up: false}}, AllowLANAccess: true, LAN: lanPrefixes})
	_, err := ask(w.client.Namespace, inet, false)
	if !unreachable(err) {
		t.Fatalf("exit node down: dial error %v, want network unreachable", err)
	}
	// The client's daemon crashes: its TUN device vanishes, and with it
	// every route into it. The backstop remains: still nothing leaks.
	w.set(t, w.client.Namespace, w.clientR, exitOn)
	w.clientTUN.Close()
	_, err = ask(w.client.Namespace, inet, false)
	if !unreachable(err) {
		t.Fatalf("TUN gone: dial error %v, want network unreachable", err)
	}
	// UDP too.
	do(t, w.client.Namespace, func() error {
		c, err := net.Dial("udp4", netip.AddrPortFrom(w.inet.Addr, 53).String())
		if err == nil {
			_, err = c.Write([]byte("leak?"))
			c.Close()
		}
		if !unreachable(err) {
			return fmt.Errorf("udp with TUN gone: %v, want network unreachable", err)
		}
		return nil
	})
	// The coordinator is still reachable for the node itself.
	if _, err := ask(w.client.Namespace, coord, true); err != nil {
		t.Fatalf("marked dial to the coordinator with the exit node gone: %v", err)
	}
	if got := w.inetConns.Load(); got != seen {
		t.Fatalf("internet host got %d connections after the exit node died", got-seen)
	}
}

// unreachable reports whether err is the kernel refusing to route: an
// unreachable route gives EHOSTUNREACH, an unreachable rule ENETUNREACH.
func unreachable(err error) bool {
	return errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH)
}

// installed reports what of ours is in the calling thread's namespace.
func installed() (rules, tableRoutes int, nft bool, err error) {
	var rs []netlink.Rule
	for _, fam := range families {
		var got []netlink.Rule
		if got, err = listOurRules(fam); err != nil {
			return
		}
		rs = append(rs, got...)
	}
	ts, err := listTable()
	if err != nil {
		return
	}
	nft, err = nftInstalled()
	return len(rs), len(ts), nft, err
}

// externalView lists what iproute2 and nft see in ns, independently of
// the package's own notion of "ours".
func externalView(t *testing.T, ns *lab.Namespace) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{{"ip", "rule", "show"}, {"ip", "route", "show", "table", "all"}, {"nft", "list", "tables"}} {
		out, err := ns.Command(t.Context(), args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		b.Write(out)
	}
	return b.String()
}

func assertClean(t *testing.T, ns *lab.Namespace) {
	t.Helper()
	do(t, ns, func() error {
		r, tr, nft, err := installed()
		if err != nil {
			return err
		}
		if r != 0 || tr != 0 || nft {
			return fmt.Errorf("left behind: %d rules, %d routes in table %d, nft table %v", r, tr, Table, nft)
		}
		return nil
	})
	view := externalView(t, ns)
	for _, s := range []string{fmt.Sprint(Table), NftTable, "proto 119", "fwmark"} {
		if strings.Contains(view, s) {
			t.Fatalf("%q still installed:\n%s", s, view)
		}
	}
}

// fullState is a State that installs every kind of thing the Router has.
func fullState(lan netip.Prefix) State {
	return State{
		Advertise: []netip.Prefix{netip.MustParsePrefix("198.19.200.0/24")}, ExitNode: true, SNAT: true,
		MeshAddrs: meshAddrs,
		Routes: []Route{{Prefix: lan, Up: true}, {Prefix: netip.MustParsePrefix("198.19.201.0/24"), Up: false},
			{Prefix: routes.ExitPrefix, Up: true}},
		AllowLANAccess: true, LAN: []netip.Prefix{netip.MustParsePrefix("198.19.250.0/24")},
	}
}

// TestLabCleanExit: everything Set installs is there, and Close removes
// all of it.
func TestLabCleanExit(t *testing.T) {
	w := newWorld(t)
	ns := w.client.Namespace
	w.set(t, ns, w.clientR, fullState(w.lan))
	do(t, ns, func() error {
		r, tr, nft, err := installed()
		if err != nil {
			return err
		}
		// IPv4 and, for the exit node, IPv6 rules; 3 accepted routes: 3
		// backstops + 2 up + 1 LAN throw, and the IPv6 blackhole and
		// link-local throw.
		if r != 8 || tr != 8 || !nft {
			return fmt.Errorf("installed %d rules, %d routes, nft %v; want 8, 8, true", r, tr, nft)
		}
		return nil
	})
	// The same State again changes no route: nothing is churned on
	// every netmap delta.
	builds := w.clientR.nftBuilds
	w.set(t, ns, w.clientR, fullState(w.lan))
	if w.clientR.routeChanges != 0 || w.clientR.rulesChanged || w.clientR.nftBuilds != builds {
		t.Fatalf("re-applying the same state changed %d routes (rules changed: %v, nft rebuilt: %v)",
			w.clientR.routeChanges, w.clientR.rulesChanged, w.clientR.nftBuilds != builds)
	}
	// A route going down touches the routes only.
	down := fullState(w.lan)
	down.Routes[0].Up = false
	w.set(t, ns, w.clientR, down)
	if w.clientR.routeChanges != 1 || w.clientR.rulesChanged || w.clientR.nftBuilds != builds {
		t.Fatalf("one route down: %d route changes (want 1), rules changed %v, nft rebuilt %v",
			w.clientR.routeChanges, w.clientR.rulesChanged, w.clientR.nftBuilds != builds)
	}
	// A peer joining (new mesh address) rebuilds the nft table only.
	joined := down
	joined.MeshAddrs = append(slices.Clone(meshAddrs), netip.MustParseAddr("100.64.0.9"))
	w.set(t, ns, w.clientR, joined)
	if w.clientR.routeChanges != 0 || w.clientR.nftBuilds != builds+1 {
		t.Fatalf("peer joined: %d route changes, nft builds %d -> %d", w.clientR.routeChanges, builds, w.clientR.nftBuilds)
	}
	w.set(t, ns, w.clientR, fullState(w.lan))
	t.Logf("installed:\n%s", externalView(t, ns))
	if out, err := ns.Command(t.Context(), "nft", "list", "table", "ip", NftTable).CombinedOutput(); err == nil {
		t.Logf("%s", out)
	}
	do(t, ns, func() error { return w.clientR.Close() })
	assertClean(t, ns)
	do(t, ns, func() error {
		if err := w.clientR.Set(State{}); !errors.Is(err, ErrClosed) {
			return fmt.Errorf("Set after Close: %v, want ErrClosed", err)
		}
		return Cleanup() // idempotent on a clean namespace
	})
}

const childEnv = "WM_ROUTER_LAB_CHILD"

// TestMain lets the crash test run this binary as a child daemon.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runChild is a stand-in daemon: it makes its TUN, installs everything,
// says "ready" and waits to be killed.
func runChild() error {
	dev, err := tun.CreateTUN(tunName, tunMTU)
	if err != nil {
		return err
	}
	defer dev.Close()
	r, err := New(Config{TUN: tunName, Self: meshClient})
	if err != nil {
		return err
	}
	link, err := netlink.LinkByName(tunName)
	if err != nil {
		return err
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(meshClient, 32))}); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	if err := r.Set(fullState(netip.MustParsePrefix("198.19.199.0/24"))); err != nil {
		return err
	}
	fmt.Println("ready")
	select {}
}

// TestLabCrashCleanup: a daemon killed with SIGKILL leaves its rules,
// backstops and nft table behind; the next New removes them all.
func TestLabCrashCleanup(t *testing.T) {
	l := lab.New(t)
	h := addHost(t, l, "crash", nil)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := h.Command(ctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child: %q %v", line, err)
	}
	// cmd is `ip netns exec NS exe`, which execs exe in place: the PID is
	// the child daemon itself.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ee *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child exit: %v, want killed by SIGKILL", err)
	}

	do(t, h.Namespace, func() error {
		r, tr, nft, err := installed()
		if err != nil {
			return err
		}
		// The TUN died with the process and took the two dev routes;
		// rules, backstops, throw routes and the nft table stay.
		if r != 8 || tr != 6 || !nft {
			return fmt.Errorf("after SIGKILL: %d rules, %d routes, nft %v; want 8, 6, true", r, tr, nft)
		}
		return nil
	})
	// The leftovers still stop traffic: no leak while the daemon is dead.
	do(t, h.Namespace, func() error {
		_, err := net.DialTimeout("tcp4", "198.18.100.1:80", dialWait)
		if !unreachable(err) {
			return fmt.Errorf("dial with a dead daemon: %v, want network unreachable", err)
		}
		return nil
	})
	// Restart: New cleans up.
	do(t, h.Namespace, func() error {
		_, err := New(Config{TUN: tunName, Self: meshClient})
		return err
	})
	assertClean(t, h.Namespace)
}

// iperf3 runs a TCP iperf3 test from client to addr (a server started in
// server) for d and returns the receiver's bits per second.
func iperf3(tb testing.TB, client, server *lab.Namespace, addr netip.Addr, d time.Duration) float64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), d+30*time.Second)
	defer cancel()
	srv, err := server.Start(ctx, "iperf3", "-s", "-1", "-B", addr.String(), "-p", "5201")
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	for try := 0; ; try++ {
		if out, _ := server.Command(ctx, "ss", "-Hltn", "sport", "= :5201").Output(); len(out) > 0 {
			break
		}
		if try == 100 {
			tb.Fatal("iperf3 server did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, err := client.Command(ctx, "iperf3", "-c", addr.String(), "-p", "5201", "-t", fmt.Sprint(int(d.Seconds())), "-J").Output()
	if err != nil {
		tb.Fatalf("iperf3: %v\n%s", err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.End.SumReceived.BitsPerSecond == 0 {
		tb.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	return r.End.SumReceived.BitsPerSecond
}

// BenchmarkLabSubnetRouterIperf3 measures TCP from the client to the
// printer through the subnet router (forward filter, kernel forwarding,
// masquerade), beside the same flow to the router's own mesh address (the
// baseline: same mesh stand-in, no forwarding), in the same run.
func BenchmarkLabSubnetRouterIperf3(b *testing.B) {
	b.Run("standin", func(b *testing.B) { benchIperf3(b, false) })
	b.Run("wireguard", func(b *testing.B) { benchIperf3(b, true) })
}

func benchIperf3(b *testing.B, realWG bool) {
	w := newWorldWith(b, realWG)
	w.subPolicy.SetRules([]filter.Rule{{Srcs: []netip.Prefix{netip.PrefixFrom(meshClient, 32)},
		Dsts: []filter.PortRange{{Dst: w.lan, First: 0, Last: 65535}}}})
	w.set(b, w.sub.Namespace, w.subR, State{Advertise: []netip.Prefix{w.lan}, SNAT: true, MeshAddrs: meshAddrs})
	w.set(b, w.client.Namespace, w.clientR, State{Routes: []Route{{Prefix: w.lan, Up: true}}})
	const d = 5 * time.Second
	var routed, direct float64
	for i := 0; i < b.N; i++ {
		direct += iperf3(b, w.client.Namespace, w.sub.Namespace, meshSub, d)
		routed += iperf3(b, w.client.Namespace, w.printer.Namespace, w.printer.Addr, d)
	}
	n := float64(b.N)
	b.ReportMetric(routed/n/1e6, "routed-Mbit/s")
	b.ReportMetric(direct/n/1e6, "router-own-Mbit/s")
	b.ReportMetric(routed/direct, "ratio")
}
