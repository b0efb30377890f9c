//go:build linux

package router

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Firewall marks. They live in bits 24-27 (MarkMask) so they stay clear of
// the marks other software on a Linux host commonly uses: Tailscale
// (0xff0000), kube-proxy (0x4000, 0x8000), Docker and firewalld (none).
// Only the masked bits are read or written; the rest of a packet's mark is
// left alone.
const (
	// MarkMask selects the bits Wiremesh owns.
	MarkMask uint32 = 0x0f000000
	// BypassMark is carried by the node's own sockets (coordinator,
	// relays, peers' direct UDP). Policy rules send marked packets to the
	// main table before the routed-prefix table is consulted, so a route
	// or exit node that covers the coordinator's or a relay's address can
	// never pull the node's own control and tunnel traffic into the tunnel.
	BypassMark uint32 = 0x01000000
	// MasqMark is set in the forward chain on packets from the mesh to an
	// advertised prefix; the postrouting chain masquerades exactly those.
	// (The interface a packet came in on is not visible in postrouting, so
	// the decision is carried as a mark from forward to postrouting.)
	MasqMark uint32 = 0x02000000
)

// SetMark sets SO_MARK (BypassMark) on the socket behind c. It needs
// CAP_NET_ADMIN, which a kernel-TUN node has.
func SetMark(c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(BypassMark))
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("set SO_MARK %#x: %w", BypassMark, err)
	}
	return nil
}

// Control is a net.ListenConfig / net.Dialer Control function that marks
// every socket it creates with BypassMark:
//
//	lc := net.ListenConfig{Control: router.Control}
//	d := net.Dialer{Control: router.Control}
func Control(network, address string, c syscall.RawConn) error { return SetMark(c) }
