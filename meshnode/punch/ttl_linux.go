package punch

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Priming for double NAT through bare Linux routers. A hole-punch packet
// that reaches the far router before the far host has sent anything makes
// that router (with no input firewall) record a connection to itself, and
// its masquerade then gives the far host's own flow another port: the punch
// fails. A priming packet sent with a TTL just large enough to pass the
// sender's own NATs opens their mappings towards the peer and dies in the
// network before it reaches the far router. With k NAT routers between the
// host and the Internet, TTL k+1 does it: each router decrements it once and
// the first router past them drops it.

// MaxPrimingTTL bounds SendTTL's TTL: priming is for the few hops of the
// sender's own NATs, never a path to the peer.
const MaxPrimingTTL = 16

// SendTTL sends b from c to `to` with the IP TTL set to ttl for this one
// datagram (an IP_TTL control message); the socket's own TTL, and every
// other packet it sends, stay as they are.
func SendTTL(c *net.UDPConn, b []byte, to netip.AddrPort, ttl int) error {
	if ttl < 1 || ttl > MaxPrimingTTL {
		return fmt.Errorf("punch: priming TTL %d, want 1..%d", ttl, MaxPrimingTTL)
	}
	if !to.Addr().Unmap().Is4() {
		return errors.New("punch: priming is IPv4 only")
	}
	oob := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_TTL
	h.SetLen(unix.CmsgLen(4))
	*(*int32)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = int32(ttl)
	if _, _, err := c.WriteMsgUDPAddrPort(b, oob, to); err != nil {
		return fmt.Errorf("punch: send with TTL %d: %w", ttl, err)
	}
	return nil
}
