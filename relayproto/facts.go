package relayproto

import "time"

// Transport names: how a node reached a relay. They are the values of the
// relayd_ and meshnode_ transport labels and of `meshnode status`.
const (
	TransportQUIC = "quic"
	TransportTCP  = "tcp"
)

// KeepAlive is how often a client keeps its relay connection alive (QUIC
// keep-alives, or a keep-alive frame on TCP): under the usual 30 s UDP NAT
// timeout. A connection silent for three keep-alives is dead.
const KeepAlive = 25 * time.Second
