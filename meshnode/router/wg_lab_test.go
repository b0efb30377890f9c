//go:build lab && linux

package router

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/filter"
	"github.com/wiremesh/wiremesh/meshnode/routes"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

const wgPort = 51820

// startWG runs a wireguard-go device on dev inside ns, configured with the
// UAPI lines given (the private key and listen port are added). The
// device's sockets are opened inside ns.
//
// A socket belongs to the namespace of the thread that opens it, and this
// process runs many. wireguard-go brings a device up itself when its TUN
// reports the link up, from its own goroutine, on a thread in the host's
// namespace: had that won the race with the Up below, the device's sockets
// would have been bound in the host's namespace, and its peers' packets
// would have met a closed port. So the device is given dev's events
// without Up and Down (upOnlyHere), and only the Up below, inside ns,
// opens its sockets.
func startWG(t testing.TB, ns *lab.Namespace, dev tun.Device, priv key.NodePrivate, lines ...string) *device.Device {
	t.Helper()
	wg := device.NewDevice(upOnlyHere(dev), conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	cfg := fmt.Sprintf("private_key=%s\nlisten_port=%d\n%s\n", priv.UAPI(), wgPort, strings.Join(lines, "\n"))
	do(t, ns, func() error {
		if err := wg.IpcSet(cfg); err != nil {
			return err
		}
		return wg.Up()
	})
	return wg
}

// noLinkEvents is a TUN device whose Events leave out link up and down.
type noLinkEvents struct {
	tun.Device
	events chan tun.Event
}

// upOnlyHere wraps dev so that wireguard-go never changes the device's
// state on its own (see startWG). The goroutine forwarding the other
// events ends when dev's event channel closes, as it does when dev does.
func upOnlyHere(dev tun.Device) tun.Device {
	w := &noLinkEvents{Device: dev, events: make(chan tun.Event, 4)}
	go func() {
		defer close(w.events)
		for e := range dev.Events() {
			if e &^= tun.EventUp | tun.EventDown; e != 0 {
				w.events <- e
			}
		}
	}()
	return w
}

func (w *noLinkEvents) Events() <-chan tun.Event { return w.events }

// TestLabExitNodeWireGuard is the exit-node test over real wireguard-go
// instead of the stand-in. The client's only peer is the exit node and its
// AllowedIPs is 0.0.0.0/0, so the client's route to the exit node's own
// underlay address goes into the tunnel too: the tunnel works only because
// wireguard-go's socket carries the bypass mark (UAPI fwmark, as the
// daemon's sockets will). Through it the internet host sees the exit
// node's address; when the exit node dies nothing reaches the internet
// host.
func TestLabExitNodeWireGuard(t *testing.T) {
	l := lab.New(t)
	inet := addHost(t, l, "inet", nil)
	coord := addHost(t, l, "coord", nil)
	exit := addHost(t, l, "exit", nil)
	home := addRouter(t, l, "home")
	client := addHost(t, l, "client", home)
	conns := &atomic.Int64{}
	serve(t, listen(t, inet.Namespace, ":80"), conns)
	serve(t, listen(t, coord.Namespace, ":443"), nil)
	do(t, client.Namespace, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/all/rp_filter", []byte("1"), 0)
	})

	clientKey, exitKey := key.NewNode(), key.NewNode()
	clientTUN := mkTUN(t, client.Namespace, meshClient)
	exitTUN := mkTUN(t, exit.Namespace, meshExit)
	pol := filter.New(nil)
	pol.SetRules([]filter.Rule{{Srcs: []netip.Prefix{netip.PrefixFrom(meshClient, 32)},
		Dsts: []filter.PortRange{{Dst: routes.ExitPrefix, First: 0, Last: 65535}}}})
	exitFwd := NewForwarder(exitTUN, meshExit, pol, nil)
	exitFwd.SetRoutes([]netip.Prefix{routes.ExitPrefix})

	exitWG := startWG(t, exit.Namespace, exitFwd, exitKey,
		"public_key="+clientKey.Public().UAPI(), "allowed_ip="+netip.PrefixFrom(meshClient, 32).String())
	clientWG := startWG(t, client.Namespace, clientTUN, clientKey,
		fmt.Sprintf("fwmark=%d", BypassMark),
		"public_key="+exitKey.Public().UAPI(),
		"endpoint="+netip.AddrPortFrom(exit.Addr, wgPort).String(),
		"allowed_ip=0.0.0.0/0")
	exitDown := false
	t.Cleanup(func() {
		clientWG.Close()
		if !exitDown {
			exitWG.Close()
		}
	})

	var exitR, clientR *Router
	do(t, exit.Namespace, func() (err error) {
		if exitR, err = New(Config{TUN: tunName, Self: meshExit}); err != nil {
			return err
		}
		return exitR.Set(State{ExitNode: true, MeshAddrs: meshAddrs})
	})
	do(t, client.Namespace, func() (err error) {
		if clientR, err = New(Config{TUN: tunName, Self: meshClient}); err != nil {
			return err
		}
		lanP, err := LANPrefixes(tunName)
		if err != nil {
			return err
		}
		return clientR.Set(State{Routes: []Route{{Prefix: routes.ExitPrefix, Up: true}}, AllowLANAccess: true, LAN: lanP})
	})
	defer do(t, client.Namespace, clientR.Close)
	defer do(t, exit.Namespace, exitR.Close)

	// Where the kernel sends a packet to the exit node's underlay address:
	// into the tunnel unmarked, out of eth0 with the bypass mark (so the
	// tunnel's own packets do not loop).
	do(t, client.Namespace, func() error {
		for _, tc := range []struct {
			mark uint32
			dev  string
		}{{0, tunName}, {BypassMark, "eth0"}} {
			rs, err := netlink.RouteGetWithOptions(exit.Addr.AsSlice(), &netlink.RouteGetOptions{Mark: tc.mark})
			if err != nil {
				return err
			}
			link, err := netlink.LinkByIndex(rs[0].LinkIndex)
			if err != nil {
				return err
			}
			if link.Attrs().Name != tc.dev {
				return fmt.Errorf("mark %#x: route to %s via %s, want %s", tc.mark, exit.Addr, link.Attrs().Name, tc.dev)
			}
		}
		return nil
	})

	inetAddr := netip.AddrPortFrom(inet.Addr, 80).String()
	if src, err := ask(client.Namespace, inetAddr, false); err != nil || src != exit.Addr.String() {
		t.Fatalf("internet host through WireGuard saw %q (%v), want the exit node's address %s", src, err, exit.Addr)
	}
	if src, err := ask(client.Namespace, netip.AddrPortFrom(coord.Addr, 443).String(), true); err != nil || src != home.WAN.String() {
		t.Fatalf("marked dial to the coordinator: %q (%v), want direct from %s", src, err, home.WAN)
	}
	if exitFwd.Forwarded() == 0 {
		t.Fatal("exit node forwarded nothing")
	}

	// The exit node dies.
	exitWG.Close()
	exitDown = true
	seen := conns.Load()
	for i := 0; i < 3; i++ {
		if src, err := ask(client.Namespace, inetAddr, false); err == nil {
			t.Fatalf("internet reached with the exit node dead (source %s)", src)
		}
	}
	if got := conns.Load(); got != seen {
		t.Fatalf("internet host got %d connections after the exit node died", got-seen)
	}
	if _, err := ask(client.Namespace, netip.AddrPortFrom(coord.Addr, 443).String(), true); err != nil {
		t.Fatalf("coordinator unreachable for the node with the exit node dead: %v", err)
	}
}
