// Package freeport finds loopback ports for tests that start daemons on
// fixed addresses.
//
// A port the kernel handed out for UDP may still be taken on TCP (an
// outgoing connection's ephemeral port, say), and relayd listens on both
// with the same number. Both reserves the number on both protocols before
// releasing it, so the daemon's two binds do not race other sockets for it.
package freeport

import (
	"net"
	"testing"
)

// Both returns a 127.0.0.1 port free on both UDP and TCP at the time of
// the call.
func Both(t testing.TB) int {
	t.Helper()
	for range 50 {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", u.LocalAddr().String())
		if err != nil {
			u.Close()
			continue
		}
		l.Close()
		u.Close()
		return port
	}
	t.Fatal("freeport: no port free on both UDP and TCP in 50 tries")
	return 0
}
