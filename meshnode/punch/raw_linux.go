package punch

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Primer sends priming packets as if from the node's own UDP socket, whose
// file descriptor it does not have (wireguard-go owns it): a raw IPv4 UDP
// socket writes the UDP header itself, with the node's port as the source
// port, and the kernel adds the IP header with the TTL set on the raw
// socket. The routers on the way see the same 5-tuple the node's socket
// uses, so the NAT mappings a primer opens are the ones the socket's later
// packets find. It needs CAP_NET_RAW (meshnode runs as root for its TUN).
// The UDP checksum is left zero, which IPv4 allows: the primer is never
// meant to be read.
type Primer struct {
	fd int
}

// NewPrimer opens the raw socket with the given TTL (1..MaxPrimingTTL).
func NewPrimer(ttl int) (*Primer, error) {
	if ttl < 1 || ttl > MaxPrimingTTL {
		return nil, fmt.Errorf("punch: priming TTL %d, want 1..%d", ttl, MaxPrimingTTL)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("punch: raw socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("punch: raw socket TTL: %w", err)
	}
	// Nothing is read from it: a zero receive buffer keeps the copies of
	// incoming UDP a raw socket gets from piling up.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 0)
	unix.Shutdown(fd, unix.SHUT_RD)
	return &Primer{fd: fd}, nil
}

// Send sends payload from srcPort to dst (IPv4 only).
func (p *Primer) Send(srcPort uint16, dst netip.AddrPort, payload []byte) error {
	a := dst.Addr().Unmap()
	if !a.Is4() {
		return fmt.Errorf("punch: priming %v: IPv4 only", dst)
	}
	pkt := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(pkt[0:], srcPort)
	binary.BigEndian.PutUint16(pkt[2:], dst.Port())
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(pkt)))
	copy(pkt[8:], payload)
	if err := unix.Sendto(p.fd, pkt, 0, &unix.SockaddrInet4{Addr: a.As4()}); err != nil {
		return fmt.Errorf("punch: prime %v: %w", dst, err)
	}
	return nil
}

// Close closes the raw socket.
func (p *Primer) Close() error { return unix.Close(p.fd) }
