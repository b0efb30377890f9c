// Package netstack is a userspace TCP/IP stack (gVisor) presented to
// wireguard-go as a tun.Device, for `meshnode --userspace`: no root, no
// kernel TUN. It is shaped like wireguard-go's tun/netstack, with one thing
// added: inbound TCP connections to the node's mesh address are offered to
// a callback, which wireguard-go's version cannot do. Forwarder (forward.go)
// is meshnode's use of it: connections to the ports the operator listed are
// spliced to the same port on localhost; every other port is refused with a
// reset.
package netstack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"syscall"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

const nicID = 1

// Queue and window sizes. outboundQueue bounds packets the stack has
// produced and wireguard-go has not yet read; maxInFlight bounds half-open
// inbound TCP connections (SYN flood protection); rcvWnd 0 takes gVisor's
// default receive window.
const (
	outboundQueue = 1024
	maxInFlight   = 256
	rcvWnd        = 0
)

// Stack is a gVisor network stack with one address. It implements tun.Device.
type Stack struct {
	ep     *channel.Endpoint
	s      *stack.Stack
	addr   netip.Addr
	mtu    int
	events chan tun.Event
	out    chan *buffer.View
	notify *channel.NotificationHandle

	closeOnce sync.Once
	closed    chan struct{}
}

var _ tun.Device = (*Stack)(nil)

// New returns a stack owning addr with the given MTU.
func New(addr netip.Addr, mtu int) (*Stack, error) {
	st := &Stack{
		ep: channel.New(outboundQueue, uint32(mtu), ""),
		s: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4, icmp.NewProtocol6},
			HandleLocal:        true,
		}),
		addr:   addr,
		mtu:    mtu,
		events: make(chan tun.Event, 1),
		out:    make(chan *buffer.View, outboundQueue),
		closed: make(chan struct{}),
	}
	sack := tcpip.TCPSACKEnabled(true)
	if err := st.s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		return nil, fmt.Errorf("netstack: enable SACK: %v", err)
	}
	st.notify = st.ep.AddNotify(st)
	if err := st.s.CreateNIC(nicID, st.ep); err != nil {
		return nil, fmt.Errorf("netstack: create NIC: %v", err)
	}
	proto := ipv4.ProtocolNumber
	if addr.Is6() {
		proto = ipv6.ProtocolNumber
	}
	pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(addr.AsSlice()).WithPrefix()}
	if err := st.s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("netstack: add address %v: %v", addr, err)
	}
	st.s.AddRoute(tcpip.Route{Destination: header.IPv4EmptySubnet, NIC: nicID})
	st.s.AddRoute(tcpip.Route{Destination: header.IPv6EmptySubnet, NIC: nicID})
	st.events <- tun.EventUp
	return st, nil
}

// Addr returns the stack's address.
func (st *Stack) Addr() netip.Addr { return st.addr }

// ForwardTCP offers every inbound TCP connection to the stack's address, on
// any port without a listener, first to allow, which sees only the
// destination port: false refuses the SYN with a reset, before any
// connection state exists. An allowed connection is completed and handed to
// handle, which owns the conn; a handler that returns false closes it.
func (st *Stack) ForwardTCP(allow func(dstPort uint16) bool, handle func(c net.Conn, dstPort uint16) bool) {
	fwd := tcp.NewForwarder(st.s, rcvWnd, maxInFlight, func(r *tcp.ForwarderRequest) {
		id := r.ID()
		if !allow(id.LocalPort) {
			r.Complete(true)
			return
		}
		var wq waiter.Queue
		ep, err := r.CreateEndpoint(&wq)
		if err != nil {
			r.Complete(true)
			return
		}
		r.Complete(false)
		c := gonet.NewTCPConn(&wq, ep)
		if !handle(c, id.LocalPort) {
			c.Close()
		}
	})
	st.s.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
}

// DialContext dials "tcp"/"tcp4"/"udp"/"udp4" addresses (IP literals) from
// the stack's address.
func (st *Stack) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, fmt.Errorf("netstack: %q is not an IP address", host)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("netstack: bad port %q", port)
	}
	fa, proto := fullAddr(netip.AddrPortFrom(ip, uint16(p)))
	switch network {
	case "tcp", "tcp4", "tcp6":
		return gonet.DialContextTCP(ctx, st.s, fa, proto)
	case "udp", "udp4", "udp6":
		return gonet.DialUDP(st.s, nil, &fa, proto)
	}
	return nil, fmt.Errorf("netstack: unsupported network %q", network)
}

// ListenTCP listens on the stack's address.
func (st *Stack) ListenTCP(port uint16) (net.Listener, error) {
	return st.ListenTCPAddr(netip.AddrPortFrom(st.addr, port))
}

// AddAddress gives the stack one more local address, such as the MagicDNS
// resolver's 100.100.100.100, for programs on this node to reach through
// the stack. The packet filter, not the stack, keeps peers away from it.
func (st *Stack) AddAddress(a netip.Addr) error {
	proto := ipv4.ProtocolNumber
	if a.Is6() && !a.Is4In6() {
		proto = ipv6.ProtocolNumber
	}
	pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(a.Unmap().AsSlice()).WithPrefix()}
	// Never primary: connections the stack starts (to peers) keep the
	// node's own address as their source, which peers' WireGuard accepts.
	if err := st.s.AddProtocolAddress(nicID, pa, stack.AddressProperties{PEB: stack.NeverPrimaryEndpoint}); err != nil {
		return fmt.Errorf("netstack: add address %v: %v", a, err)
	}
	return nil
}

// ListenTCPAddr listens on ap, one of the stack's addresses.
func (st *Stack) ListenTCPAddr(ap netip.AddrPort) (net.Listener, error) {
	fa, proto := fullAddr(ap)
	return gonet.ListenTCP(st.s, fa, proto)
}

// ListenUDP opens a UDP socket on ap, one of the stack's addresses.
func (st *Stack) ListenUDP(ap netip.AddrPort) (net.PacketConn, error) {
	fa, proto := fullAddr(ap)
	c, err := gonet.DialUDP(st.s, &fa, nil, proto)
	if err != nil {
		return nil, fmt.Errorf("netstack: listen udp %v: %w", ap, err)
	}
	return c, nil
}

func fullAddr(ap netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber) {
	proto := ipv4.ProtocolNumber
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		proto = ipv6.ProtocolNumber
	}
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFromSlice(ap.Addr().Unmap().AsSlice()), Port: ap.Port()}, proto
}

// WriteNotify is called by the channel endpoint when the stack has a packet
// for the network; it moves it to the queue wireguard-go reads.
func (st *Stack) WriteNotify() {
	pkt := st.ep.Read()
	if pkt == nil {
		return
	}
	v := pkt.ToView()
	pkt.DecRef()
	select {
	case st.out <- v:
	case <-st.closed:
		v.Release()
	}
}

// Read implements tun.Device: packets from the stack towards the mesh.
func (st *Stack) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	var v *buffer.View
	select {
	case v = <-st.out:
	case <-st.closed:
		return 0, os.ErrClosed
	}
	n := 0
	for {
		sz, _ := v.Read(bufs[n][offset:])
		v.Release()
		sizes[n] = sz
		n++
		if n == len(bufs) {
			return n, nil
		}
		select {
		case v = <-st.out:
			continue
		default:
			return n, nil
		}
	}
}

// Write implements tun.Device: packets from peers into the stack.
func (st *Stack) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		p := b[offset:]
		if len(p) == 0 {
			continue
		}
		pkb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		switch p[0] >> 4 {
		case 4:
			st.ep.InjectInbound(header.IPv4ProtocolNumber, pkb)
		case 6:
			st.ep.InjectInbound(header.IPv6ProtocolNumber, pkb)
		default:
			pkb.DecRef()
			return 0, syscall.EAFNOSUPPORT
		}
		pkb.DecRef()
	}
	return len(bufs), nil
}

// BatchSize implements tun.Device.
func (st *Stack) BatchSize() int { return 32 }

// File implements tun.Device; there is none.
func (st *Stack) File() *os.File { return nil }

// MTU implements tun.Device.
func (st *Stack) MTU() (int, error) { return st.mtu, nil }

// Name implements tun.Device.
func (st *Stack) Name() (string, error) { return "netstack", nil }

// Events implements tun.Device.
func (st *Stack) Events() <-chan tun.Event { return st.events }

// Close implements tun.Device.
func (st *Stack) Close() error {
	st.closeOnce.Do(func() {
		close(st.closed)
		st.ep.RemoveNotify(st.notify)
		st.s.RemoveNIC(nicID)
		st.s.Close()
		st.ep.Close()
		close(st.events)
	})
	return nil
}
