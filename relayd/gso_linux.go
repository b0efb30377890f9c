package relayd

import (
	"encoding/binary"
	"errors"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// gsoSupported says whether this OS can segment UDP in the kernel
// (UDP_SEGMENT, Linux 4.18+); a kernel or device that refuses it at run time
// turns it off through gsoShouldDisable.
const gsoSupported = true

// gsoControl writes into b (reusing its array when it is large enough)
// the control message asking the kernel to split a send into datagrams of
// size bytes (the last may be shorter), and returns it.
func gsoControl(b []byte, size uint16) []byte {
	n := unix.CmsgSpace(2)
	if cap(b) < n {
		b = make([]byte, n)
	}
	b = b[:n]
	clear(b)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], size)
	return b
}

// gsoShouldDisable reports whether a send error means the path cannot do
// UDP GSO: EIO when the device has no tx checksum offload (udp(7)), EINVAL
// or ENOPROTOOPT from kernels without UDP_SEGMENT.
func gsoShouldDisable(err error) bool {
	var se *os.SyscallError
	if !errors.As(err, &se) {
		return false
	}
	return se.Err == unix.EIO || se.Err == unix.EINVAL || se.Err == unix.ENOPROTOOPT
}

// gsoTooBig reports whether a GSO send failed for its segment size alone.
func gsoTooBig(err error) bool {
	var se *os.SyscallError
	return errors.As(err, &se) && se.Err == unix.EMSGSIZE
}

// msgTruncated reports whether recvmmsg cut a datagram to its buffer.
func msgTruncated(flags int) bool { return flags&unix.MSG_TRUNC != 0 }
