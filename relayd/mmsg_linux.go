package relayd

import (
	"encoding/binary"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// mmsgConn reads batches with recvmmsg(2) into the caller's messages
// without allocating: x/net's ReadBatch allocates a *net.UDPAddr for every
// datagram, which under a flood was most of the relay's garbage. Each message's
// Addr is a *net.UDPAddr that mmsgConn owns and overwrites on the next
// read, so callers copy what they keep. Writes go through x/net. One
// goroutine reads at a time (a fast-path socket has one loop).
type mmsgConn struct {
	batchConn // WriteBatch
	rc        syscall.RawConn
	readFn    func(fd uintptr) bool // c.recv, bound once: a closure per read would allocate
	// The current read's arguments and results, for readFn.
	n, flags, got int
	errno         syscall.Errno
	hdrs          []unix.Mmsghdr
	iovs          []unix.Iovec
	names         []unix.RawSockaddrInet6 // large enough for either family
	addrs         []net.UDPAddr
	ips           [][16]byte
}

// newMmsgConn wraps u; with no raw access to its descriptor it returns bc.
func newMmsgConn(u *net.UDPConn, bc batchConn) batchConn {
	rc, err := u.SyscallConn()
	if err != nil {
		return bc
	}
	c := &mmsgConn{batchConn: bc, rc: rc}
	c.readFn = c.recv
	return c
}

// recv is one recvmmsg attempt, for RawConn.Read: false (wait for the
// socket to be readable, then again) on EAGAIN or EINTR.
func (c *mmsgConn) recv(fd uintptr) bool {
	r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.hdrs[0])), uintptr(c.n), uintptr(c.flags), 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	c.got, c.errno = int(r), e
	return true
}

// grow makes room for n messages.
func (c *mmsgConn) grow(n int) {
	if len(c.hdrs) >= n {
		return
	}
	c.hdrs = make([]unix.Mmsghdr, n)
	c.iovs = make([]unix.Iovec, n)
	c.names = make([]unix.RawSockaddrInet6, n)
	c.addrs = make([]net.UDPAddr, n)
	c.ips = make([][16]byte, n)
}

// ReadBatch reads up to len(ms) datagrams, each into ms[i].Buffers[0]
// (one buffer per message), blocking until at least one is there. It sets
// N, Flags and Addr; NN is 0 (no control messages are read).
func (c *mmsgConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	c.grow(len(ms))
	for i := range ms {
		b := ms[i].Buffers[0]
		h := &c.hdrs[i]
		*h = unix.Mmsghdr{}
		if len(b) > 0 {
			c.iovs[i].Base = &b[0]
		} else {
			c.iovs[i].Base = nil
		}
		c.iovs[i].SetLen(len(b))
		h.Hdr.Iov = &c.iovs[i]
		h.Hdr.SetIovlen(1)
		h.Hdr.Name = (*byte)(unsafe.Pointer(&c.names[i]))
		h.Hdr.Namelen = unix.SizeofSockaddrInet6
	}
	c.n, c.flags, c.got, c.errno = len(ms), flags, 0, 0
	if err := c.rc.Read(c.readFn); err != nil {
		return 0, err
	}
	if c.errno != 0 {
		return 0, os.NewSyscallError("recvmmsg", c.errno)
	}
	for i := range c.got {
		m := &ms[i]
		m.N, m.NN, m.Flags = int(c.hdrs[i].Len), 0, int(c.hdrs[i].Hdr.Flags)
		m.Addr = c.addr(i)
	}
	return c.got, nil
}

// addr decodes message i's source address into its reused *net.UDPAddr,
// or returns nil for a family other than IPv4 and IPv6.
func (c *mmsgConn) addr(i int) net.Addr {
	a, ip := &c.addrs[i], &c.ips[i]
	n := &c.names[i]
	switch n.Family {
	case unix.AF_INET:
		v4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(n))
		copy(ip[:4], v4.Addr[:])
		a.IP, a.Zone = ip[:4], ""
	case unix.AF_INET6:
		*ip = n.Addr
		a.IP, a.Zone = ip[:], ""
	default:
		return nil
	}
	// The port is in network byte order in both families, at the same place.
	a.Port = int(binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&n.Port))[:]))
	return a
}
