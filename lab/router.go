package lab

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
)

// NAT is how a router maps inside flows to its WAN address.
type NAT int

const (
	// Easy is plain masquerade: endpoint-independent mapping. The kernel
	// keeps the inside source port when it is free, and one inside ip:port
	// maps to one outside ip:port whatever the destination.
	Easy NAT = iota
	// Hard is masquerade random,fully-random: every new flow (each
	// destination) gets a fresh random port. Endpoint-dependent mapping.
	Hard
)

func (n NAT) String() string {
	switch n {
	case Easy:
		return "easy"
	case Hard:
		return "hard"
	}
	return fmt.Sprintf("NAT(%d)", int(n))
}

// Firewall is a router's filter on packets addressed to itself.
type Firewall int

const (
	// Home drops unsolicited new packets from the WAN addressed to the
	// router itself, as home routers do. It is the default.
	Home Firewall = iota
	// Bare has no input rule: a Linux NAT box (cloud NAT instance, DIY
	// router). An unsolicited probe to the router then creates a conntrack
	// entry that makes masquerade remap the inside host's own flow.
	Bare
)

func (f Firewall) String() string {
	switch f {
	case Home:
		return "home"
	case Bare:
		return "bare"
	}
	return fmt.Sprintf("Firewall(%d)", int(f))
}

// RouterConfig describes a NAT router.
type RouterConfig struct {
	NAT      NAT
	Firewall Firewall
	// BlockUDP drops every UDP packet the router forwards, both ways;
	// TCP and ICMP still pass. It models networks that block UDP.
	BlockUDP bool
	// Upstream is the router this one sits behind; nil attaches it to the
	// internet core. A router behind another router makes double NAT.
	Upstream *Router
}

// Router is a NAT router namespace. Its WAN interface is named "wan".
type Router struct {
	*Namespace
	Config RouterConfig
	// WAN is the router's address on its upstream link: public when
	// Upstream is nil, else an address on the upstream router's inside.
	WAN netip.Addr

	lab *Lab

	mu    sync.Mutex
	nlans int // inside links made so far, for interface names
}

// AddRouter adds a NAT router attached to cfg.Upstream, or to the core.
func (l *Lab) AddRouter(name string, cfg RouterConfig) (*Router, error) {
	ns, err := l.newNamespace(name)
	if err != nil {
		return nil, err
	}
	r := &Router{Namespace: ns, Config: cfg, lab: l}
	upper, upName := l.Core, ""
	if cfg.Upstream != nil {
		upper = cfg.Upstream.Namespace
		upName = cfg.Upstream.nextLANName()
	} else {
		upName = l.nextCoreName()
	}
	_, r.WAN, err = l.link(upper, ns, upName, "wan", cfg.Upstream == nil)
	if err != nil {
		return nil, err
	}
	if err := ns.sysctls(map[string]string{"net/ipv4/ip_forward": "1"}); err != nil {
		return nil, err
	}
	if err := ns.Nft(r.ruleset()); err != nil {
		return nil, fmt.Errorf("lab: router %s rules: %w", name, err)
	}
	return r, nil
}

// ruleset returns the router's nftables rules.
func (r *Router) ruleset() string {
	var b strings.Builder
	masq := "masquerade"
	if r.Config.NAT == Hard {
		masq = "masquerade random,fully-random"
	}
	fmt.Fprintf(&b, `table ip wmnat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wan" %s
	}
}
table inet wmfilter {
	chain forward {
		type filter hook forward priority filter; policy accept;
`, masq)
	if r.Config.BlockUDP {
		b.WriteString("\t\tmeta l4proto udp counter drop\n")
	}
	// Nothing new may enter from outside; replies to inside flows pass.
	b.WriteString("\t\tiifname \"wan\" ct state new counter drop\n\t}\n")
	if r.Config.Firewall == Home {
		b.WriteString(`	chain input {
		type filter hook input priority filter; policy accept;
		iifname "wan" ct state new counter drop
	}
`)
	}
	b.WriteString("}\n")
	return b.String()
}

// nextLANName returns a fresh inside interface name on the router.
func (r *Router) nextLANName() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nlans++
	return fmt.Sprintf("lan%d", r.nlans)
}

// nextCoreName returns a fresh interface name on the core.
func (l *Lab) nextCoreName() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ncore++
	return fmt.Sprintf("c%d", l.ncore)
}

// Host is a namespace with one interface, "eth0", attached to the core (a
// public host) or to a router (behind NAT).
type Host struct {
	*Namespace
	// Addr is the host's own address on eth0.
	Addr netip.Addr
	// Gateway is the next hop: the core or the router's inside address.
	Gateway netip.Addr
	// Router is the router the host sits behind, or nil.
	Router *Router
}

// AddHost adds a host behind router r, or on the internet when r is nil.
func (l *Lab) AddHost(name string, r *Router) (*Host, error) {
	ns, err := l.newNamespace(name)
	if err != nil {
		return nil, err
	}
	h := &Host{Namespace: ns, Router: r}
	upper, upName := l.Core, ""
	if r != nil {
		upper, upName = r.Namespace, r.nextLANName()
	} else {
		upName = l.nextCoreName()
	}
	h.Gateway, h.Addr, err = l.link(upper, ns, upName, "eth0", r == nil)
	if err != nil {
		return nil, err
	}
	return h, nil
}

// PublicAddr returns the address the internet sees for traffic from h: its
// own address on the internet, else the WAN address of its outermost router.
func (h *Host) PublicAddr() netip.Addr {
	if h.Router == nil {
		return h.Addr
	}
	r := h.Router
	for r.Config.Upstream != nil {
		r = r.Config.Upstream
	}
	return r.WAN
}

// MoveTo moves the host to another router (or to the internet, when r is
// nil): its old link is deleted and a new one, with a new address, is made.
// It models a laptop changing networks; sockets bound to the wildcard
// address keep working with the new address.
func (h *Host) MoveTo(r *Router) error {
	l := h.lab
	if err := h.ip("link del eth0"); err != nil {
		return err
	}
	upper, upName := l.Core, ""
	if r != nil {
		upper, upName = r.Namespace, r.nextLANName()
	} else {
		upName = l.nextCoreName()
	}
	gw, addr, err := l.link(upper, h.Namespace, upName, "eth0", r == nil)
	if err != nil {
		return err
	}
	h.Router, h.Gateway, h.Addr = r, gw, addr
	return nil
}
