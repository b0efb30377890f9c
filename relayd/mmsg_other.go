//go:build !linux

package relayd

import "net"

// newMmsgConn returns bc: only Linux has recvmmsg.
func newMmsgConn(_ *net.UDPConn, bc batchConn) batchConn { return bc }
