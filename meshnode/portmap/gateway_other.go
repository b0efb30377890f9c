//go:build !linux

package portmap

import (
	"errors"
	"net/netip"
)

// DefaultGateway is only implemented on Linux, the one platform the node
// runs on.
func DefaultGateway() (gw, self netip.Addr, err error) {
	return gw, self, errors.New("portmap: gateway discovery needs Linux")
}
