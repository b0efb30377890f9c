//go:build !linux

package localapi

import (
	"errors"
	"net"
)

// peerUID is only implemented on Linux; elsewhere every client is refused.
func peerUID(net.Conn) (uint32, error) {
	return 0, errors.New("localapi: peer credentials are not supported on this OS")
}
