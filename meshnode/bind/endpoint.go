package bind

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/wiremesh/wiremesh/key"
	"golang.zx2c4.com/wireguard/conn"
)

// Endpoint is a peer, as wireguard-go sees it.
type Endpoint struct {
	key              key.NodePublic
	bind             *Bind
	route            atomic.Pointer[route] // never nil
	routeMu          sync.Mutex            // serializes publishers
	txBytes, rxBytes atomic.Uint64
	relayBatches     atomic.Uint64               // batches sent through the relay, for OnRelaySend
	addrs            map[netip.AddrPort]struct{} // accepted source addresses; guarded by Bind.mu
}

// route is a peer's path, published whole (copy on write) so that Send
// reads it with one atomic load.
type route struct {
	direct   netip.AddrPort       // valid: send over UDP
	directEP *conn.StdNetEndpoint // the same, prebuilt for StdNetBind.Send
	both     bool                 // direct path unconfirmed: the relay carries a copy
	relay    RelayLink            // the peer's relay connection; nil: ask the RelaySender
	fast     FastLink             // relay, when it may have a fast path on our socket
	side     *sideConn            // the peer's side socket (AddSide): direct sends to its remote leave from it
}

// publish applies change to a copy of the route and publishes the copy.
func (e *Endpoint) publish(change func(*route)) {
	e.routeMu.Lock()
	defer e.routeMu.Unlock()
	r := *e.route.Load()
	change(&r)
	e.route.Store(&r)
}

// Key returns the peer's node key.
func (e *Endpoint) Key() key.NodePublic { return e.key }

// Path returns the peer's current path. A tentative direct path reports
// as relay until it is confirmed.
func (e *Endpoint) Path() Path {
	if r := e.route.Load(); r.directEP != nil && !r.both {
		return PathDirect
	}
	if e.bind.cfg.Relay != nil {
		return PathRelay
	}
	return PathNone
}

// Direct returns the peer's direct address, if any.
func (e *Endpoint) Direct() (netip.AddrPort, bool) {
	d := e.route.Load().direct
	return d, d.IsValid()
}

// Bytes returns bytes sent to and received from the peer over any path.
func (e *Endpoint) Bytes() (tx, rx uint64) { return e.txBytes.Load(), e.rxBytes.Load() }

// ClearSrc implements conn.Endpoint.
func (e *Endpoint) ClearSrc() {}

// SrcToString implements conn.Endpoint.
func (e *Endpoint) SrcToString() string { return "" }

// DstToString implements conn.Endpoint: the node key, which ParseEndpoint
// accepts back.
func (e *Endpoint) DstToString() string { return e.key.String() }

// DstToBytes implements conn.Endpoint. wireguard-go mixes it into cookie
// MACs; the node key identifies the peer on every path.
func (e *Endpoint) DstToBytes() []byte {
	r := e.key.Raw()
	return r[:]
}

// DstIP implements conn.Endpoint: the direct address's IP, if any.
func (e *Endpoint) DstIP() netip.Addr {
	return e.route.Load().direct.Addr()
}

// SrcIP implements conn.Endpoint.
func (e *Endpoint) SrcIP() netip.Addr { return netip.Addr{} }
