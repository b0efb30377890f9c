//go:build lab && linux

package router

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/lab"
	"github.com/wiremesh/wiremesh/meshnode/filter"
	"github.com/wiremesh/wiremesh/meshnode/routes"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// echoPort is where each router's stand-in answers the client's health
// probes (the disco pings of the real node), on its mesh address.
const echoPort = 7

// probeHealth is a routes.Health fed by real probes through the mesh
// stand-in: the client sends a UDP datagram to each router's mesh address
// every routes.PingInterval and records when each answers.
type probeHealth struct {
	mu   sync.Mutex
	last map[key.NodePublic]time.Time
}

func (h *probeHealth) LastPong(p key.NodePublic) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last[p]
}

func (h *probeHealth) RelayPresent(key.NodePublic) bool { return false }

// haRouter is one of the two subnet routers.
type haRouter struct {
	host *lab.Host
	mesh netip.Addr
	key  key.NodePublic
	priv key.NodePrivate
	wg   *device.Device // realWG only
	dev  tun.Device
	fwd  *Forwarder
	dead atomic.Bool
}

// haMesh is how the HA harness's client reaches the two routers: the
// TUN-to-TUN stand-in or real wireguard-go.
type haMesh interface {
	// setPrimary sends the routed prefix to r (WireGuard: moves the
	// prefix into r's AllowedIPs).
	setPrimary(r *haRouter)
	// kill makes r die as a SIGKILLed node does: its tunnel stops.
	kill(r *haRouter)
}

// standInMesh carries packets with the pump goroutines.
type standInMesh struct{ primary atomic.Pointer[haRouter] }

func (m *standInMesh) setPrimary(r *haRouter) { m.primary.Store(r) }
func (m *standInMesh) kill(r *haRouter)       { r.dead.Store(true) }

// wgMesh is real wireguard-go: one device on the client with both routers
// as peers, one on each router.
type wgMesh struct {
	t      *testing.T
	client *device.Device
	rs     []*haRouter
	prefix netip.Prefix
}

func (m *wgMesh) setPrimary(p *haRouter) {
	var b strings.Builder
	for _, r := range m.rs {
		fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\nreplace_allowed_ips=true\nallowed_ip=%s\n",
			r.key.UAPI(), netip.PrefixFrom(r.mesh, 32))
		if r == p {
			fmt.Fprintf(&b, "allowed_ip=%s\n", m.prefix)
		}
	}
	if err := m.client.IpcSet(b.String()); err != nil {
		m.t.Errorf("move %s to %s: %v", m.prefix, p.mesh, err)
	}
}

func (m *wgMesh) kill(r *haRouter) { r.wg.Close() }

// TestLabHAFailover: two routers offer one prefix; the client's Selector
// (fed by probes through the mesh) picks the first, which is then killed.
// A client making a TCP request every 50 ms (each given 200 ms, so that
// TCP's own SYN retransmission, 1 s, does not hide when the path came back)
// records how long its traffic is interrupted before it flows through the
// standby (goal: 3 s), logged as "failover gap". The mesh is the stand-in;
// TestLabHAFailoverWireGuard runs the same over real wireguard-go.
func TestLabHAFailover(t *testing.T) { runHA(t, false) }

// TestLabHAFailoverWireGuard is TestLabHAFailover over real wireguard-go:
// failover moves the prefix between the two peers' AllowedIPs, as the
// daemon will, and the standby's tunnel is already up (its probes keep it
// so).
func TestLabHAFailoverWireGuard(t *testing.T) { runHA(t, true) }

func runHA(t *testing.T, realWG bool) {
	l := lab.New(t)
	printer := addHost(t, l, "printer", nil)
	home := addRouter(t, l, "home")
	client := addHost(t, l, "client", home)
	prefix := netip.PrefixFrom(printer.Addr, 24).Masked()
	serve(t, listen(t, printer.Namespace, ":80"), nil)

	k1, k2 := key.NewNode(), key.NewNode()
	if r1, r2 := k1.Public().Raw(), k2.Public().Raw(); bytes.Compare(r1[:], r2[:]) > 0 {
		k1, k2 = k2, k1
	}
	rs := []*haRouter{
		{host: addHost(t, l, "ra", nil), mesh: netip.MustParseAddr("100.64.0.1"), priv: k1, key: k1.Public()},
		{host: addHost(t, l, "rb", nil), mesh: netip.MustParseAddr("100.64.0.4"), priv: k2, key: k2.Public()},
	}
	clientTUN := mkTUN(t, client.Namespace, meshClient)
	pol := filter.New(nil)
	pol.SetRules([]filter.Rule{{Srcs: []netip.Prefix{netip.PrefixFrom(meshClient, 32)},
		Dsts: []filter.PortRange{{Dst: prefix, First: 0, Last: 65535}}}})
	for _, r := range rs {
		r.dev = mkTUN(t, r.host.Namespace, r.mesh)
		r.fwd = NewForwarder(r.dev, r.mesh, pol, nil)
		r.fwd.SetRoutes([]netip.Prefix{prefix})
		var rt *Router
		do(t, r.host.Namespace, func() (err error) {
			if rt, err = New(Config{TUN: tunName, Self: r.mesh}); err != nil {
				return err
			}
			return rt.Set(State{Advertise: []netip.Prefix{prefix}, SNAT: true})
		})
		echo, err := r.host.ListenUDP(netip.AddrPortFrom(r.mesh, echoPort).String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { echo.Close() })
		go func() {
			buf := make([]byte, 64)
			for {
				n, from, err := echo.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				echo.WriteToUDPAddrPort(buf[:n], from)
			}
		}()
	}

	var mesh haMesh
	if realWG {
		clientKey := key.NewNode()
		lines := []string{fmt.Sprintf("fwmark=%d", BypassMark)}
		for _, r := range rs {
			r.wg = startWG(t, r.host.Namespace, r.fwd, r.priv,
				"public_key="+clientKey.Public().UAPI(), "allowed_ip="+netip.PrefixFrom(meshClient, 32).String())
			lines = append(lines, "public_key="+r.key.UAPI(),
				"endpoint="+netip.AddrPortFrom(r.host.Addr, wgPort).String(),
				"allowed_ip="+netip.PrefixFrom(r.mesh, 32).String())
		}
		cw := startWG(t, client.Namespace, clientTUN, clientKey, lines...)
		t.Cleanup(func() {
			cw.Close()
			for _, r := range rs {
				r.wg.Close()
			}
		})
		mesh = &wgMesh{t: t, client: cw, rs: rs, prefix: prefix}
	} else {
		m := &standInMesh{}
		mesh = m
		var wg sync.WaitGroup
		pump(&wg, clientTUN, func(dst netip.Addr) tun.Device {
			var r *haRouter
			for _, c := range rs {
				if dst == c.mesh {
					r = c
				}
			}
			if r == nil && prefix.Contains(dst) {
				r = m.primary.Load()
			}
			if r == nil || r.dead.Load() {
				return nil
			}
			return r.fwd
		})
		for _, r := range rs {
			pump(&wg, r.fwd, func(dst netip.Addr) tun.Device {
				if dst != meshClient || r.dead.Load() {
					return nil
				}
				return clientTUN
			})
		}
		t.Cleanup(func() {
			clientTUN.Close()
			for _, r := range rs {
				r.dev.Close()
			}
			wg.Wait()
		})
	}

	var clientR *Router
	do(t, client.Namespace, func() (err error) {
		clientR, err = New(Config{TUN: tunName, Self: meshClient})
		return err
	})

	// The client's health probes.
	health := &probeHealth{last: map[key.NodePublic]time.Time{}}
	probe, err := client.ListenUDP(netip.AddrPortFrom(meshClient, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var loops sync.WaitGroup
	loops.Add(3)
	go func() {
		defer loops.Done()
		buf := make([]byte, 64)
		for {
			_, from, err := probe.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			for _, r := range rs {
				if from.Addr() == r.mesh {
					health.mu.Lock()
					health.last[r.key] = time.Now()
					health.mu.Unlock()
				}
			}
		}
	}()
	go func() {
		defer loops.Done()
		defer probe.Close()
		tk := time.NewTicker(routes.PingInterval)
		defer tk.Stop()
		for {
			for _, r := range rs {
				probe.WriteToUDPAddrPort([]byte("ping"), netip.AddrPortFrom(r.mesh, echoPort))
			}
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()

	sel := routes.New(routes.Config{Health: health})
	sel.SetOffers(map[key.NodePublic][]netip.Prefix{rs[0].key: {prefix}, rs[1].key: {prefix}})
	applyErr := make(chan error, 1)
	go func() {
		defer loops.Done()
		sel.Run(ctx, func(decided []routes.Route) {
			var st State
			for _, d := range decided {
				st.Routes = append(st.Routes, Route{Prefix: d.Prefix, Up: d.Up})
				for _, r := range rs {
					if d.Up && d.Primary == r.key {
						mesh.setPrimary(r)
					}
				}
			}
			if err := client.Do(func() error { return clientR.Set(st) }); err != nil {
				select {
				case applyErr <- err:
				default:
				}
			}
		})
	}()
	defer loops.Wait()
	defer cancel()

	// request returns the source the printer saw, or "" on failure.
	request := func() string {
		src, err := askWithin(client.Namespace, netip.AddrPortFrom(printer.Addr, 80).String(), false, 200*time.Millisecond)
		if err != nil {
			return ""
		}
		return src
	}
	// Bounded waits: 200 attempts of at most 250 ms each.
	const attempts = 200
	// waitFor returns the router traffic flows through once it flows
	// through one of want, or nil.
	waitFor := func(want ...*haRouter) *haRouter {
		for i := 0; i < attempts; i++ {
			src := request()
			for _, r := range want {
				if src == r.host.Addr.String() {
					return r
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		return nil
	}
	// Usually the first router in key order is the primary, but whichever
	// answered first may hold the route (the selector is sticky).
	first := waitFor(rs...)
	if first == nil {
		t.Fatal("traffic never flowed through either router")
	}
	select {
	case err := <-applyErr:
		t.Fatalf("client router: %v", err)
	default:
	}
	standby := rs[0]
	if first == rs[0] {
		standby = rs[1]
	}

	// The goal is failover to a live standby: its tunnel must be up (it has
	// answered a probe lately) before the primary dies, or a standby that
	// never came up would read as a slow failover. A lost first handshake
	// is retried by wireguard-go only after 5 s, so this waits up to 15 s
	// (150 checks 100 ms apart).
	fresh := func(r *haRouter) bool {
		last := health.LastPong(r.key)
		return !last.IsZero() && time.Since(last) <= routes.DefaultDeadAfter
	}
	// state describes what the client saw, for a failure message: each
	// router's last pong, the selector's routes and, over WireGuard, each
	// peer's endpoint, last handshake and byte counts on both ends.
	state := func() string {
		var b strings.Builder
		if wm, ok := mesh.(*wgMesh); ok {
			fmt.Fprintf(&b, "client wg: %s; ", wgPeers(wm.client))
			for _, r := range rs {
				fmt.Fprintf(&b, "%s wg: %s; ", r.host.Addr, wgPeers(r.wg))
			}
		}
		for _, r := range rs {
			age := "never"
			if last := health.LastPong(r.key); !last.IsZero() {
				age = time.Since(last).Round(time.Millisecond).String() + " ago"
			}
			fmt.Fprintf(&b, "%s last pong %s; ", r.host.Addr, age)
		}
		fmt.Fprintf(&b, "routes %v", sel.Routes())
		return b.String()
	}
	for i := 0; !fresh(standby); i++ {
		if i == 150 {
			t.Fatalf("the standby %s never answered a probe (%s)", standby.host.Addr, state())
		}
		time.Sleep(100 * time.Millisecond)
	}

	mesh.kill(first)
	died := time.Now()
	if waitFor(standby) == nil {
		t.Fatalf("traffic never moved to the standby %s (%s)", standby.host.Addr, state())
	}
	gap := time.Since(died)
	t.Logf("failover gap %v (goal 3s)", gap.Round(time.Millisecond))
	// The Selector's own bound is 1.75 s; the rest is the request loop's
	// granularity (50 ms + a 200 ms attempt). Past 3 s the goal is missed.
	if gap > 3*time.Second {
		t.Fatalf("failover took %v, goal 3s", gap)
	}
}

// wgPeers summarizes d's peers from its UAPI state: endpoint, last
// handshake (Unix seconds), bytes received and sent.
func wgPeers(d *device.Device) string {
	st, err := d.IpcGet()
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, line := range strings.Split(st, "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "public_key":
			out = append(out, "peer "+v[:8])
		case "endpoint", "last_handshake_time_sec", "rx_bytes", "tx_bytes":
			out = append(out, k+"="+v)
		}
	}
	return strings.Join(out, " ")
}
