// Package portmap asks the local gateway to forward a UDP port to this node,
// with NAT-PMP (RFC 6886), PCP (RFC 6887) or UPnP IGD, so that peers behind
// their own NAT can reach the node directly even when its NAT is "hard"
// (a new port per destination). The mapped ip:port is one more direct-path
// candidate for the path state machine, next to the STUN-observed ones.
//
// The flow, owned by one goroutine (Client.run):
//
//	discover  the default IPv4 gateway (netlink, main table) and the node's
//	          own address towards it
//	probe     NAT-PMP, PCP and UPnP all at once (every first packet leaves
//	          within a few milliseconds, well inside Tailscale's 250 ms);
//	          the first to answer in order of preference wins early
//	map       with the most preferred protocol that answered: NAT-PMP, then
//	          PCP, then UPnP; ask for a 7200 s lifetime
//	hold      renew at half the granted lifetime; every CheckInterval ask
//	          the gateway for its epoch (NAT-PMP, PCP) or for the mapping
//	          itself (UPnP); an epoch that went backwards or jumped means the
//	          router restarted and lost its state: map again at once; a
//	          failed renewal or check drops the mapping and starts over
//	announce  a restart announcement from the gateway (multicast to
//	          224.0.0.1:5350, RFC 6886 §3.2.1 and RFC 6887 §14.1.3) makes
//	          the check happen at once
//	close     delete the mapping (lifetime 0, or DeletePortMapping)
//
// Every answer from the gateway is hostile input: replies are read into
// bounded buffers, parsed with length checks (the parsers are fuzzed), only
// accepted from the gateway's own address, and the UPnP description and SOAP
// bodies are size-limited; UPnP URLs that point anywhere but the gateway are
// refused, so a hostile SSDP answer cannot make the node talk to a third
// host.
package portmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Kind is the protocol that holds the current mapping. Its values are the
// ones `meshnode netcheck --json` reports as port_mapping.
type Kind string

// The kinds, in order of preference.
const (
	KindNone   Kind = ""
	KindNATPMP Kind = "nat-pmp"
	KindPCP    Kind = "pcp"
	KindUPnP   Kind = "upnp"
)

// kinds lists every protocol, most preferred first: NAT-PMP is the
// simplest and most widely correct, PCP is its successor, UPnP IGD is SOAP
// over HTTP and the least predictable.
var kinds = []Kind{KindNATPMP, KindPCP, KindUPnP}

// Mapper is what a consumer (the path state machine, netcheck) needs from
// port mapping.
type Mapper interface {
	// Mapping returns the mapped external ip:port and the protocol that
	// holds it, or the zero AddrPort and KindNone when there is none.
	Mapping() (netip.AddrPort, Kind)
	// Changed is signalled (coalesced, never blocking the sender) whenever
	// the mapping appears, disappears, moves, or is made again after the
	// gateway lost it. Read Mapping after it fires.
	Changed() <-chan struct{}
	// Close deletes the mapping at the gateway and stops the client.
	Close() error
}

// Spec and behaviour values. The lifetime and the half-life renewal come
// from Tailscale's net/portmapper; the rest are ours.
const (
	// DefaultLifetime is the lifetime asked for: long enough that a
	// renewal every hour is all the traffic the mapping costs.
	DefaultLifetime = 7200 * time.Second
	// DefaultCheckInterval is how often the gateway's epoch (or, for
	// UPnP, the mapping) is checked, so a router restart is noticed within
	// about this long instead of at the next renewal an hour away.
	DefaultCheckInterval = 30 * time.Second
	// DefaultRetryInterval is the wait before probing again when no
	// protocol answered or mapping failed.
	DefaultRetryInterval = 60 * time.Second

	// probeTimeout bounds one probe of all three protocols. Gateways on
	// the LAN answer in milliseconds; 1.5 s leaves room for one
	// retransmission of each UDP request and an SSDP answer plus the
	// UPnP description fetch.
	probeTimeout = 1500 * time.Millisecond
	// requestTimeout bounds one mapping, renewal, check or delete.
	requestTimeout = 2 * time.Second
	// minRenew stops a gateway that grants a tiny lifetime from making us
	// renew in a tight loop.
	minRenew = 5 * time.Second
)

// ErrClosed is returned by Close when the client was already closed.
var ErrClosed = errors.New("portmap: closed")

// Config configures a Client.
type Config struct {
	// Port is the node's UDP port, the one to map. Required.
	Port uint16
	// Logger receives state changes (mapped, lost, restart); nil discards.
	Logger *slog.Logger
	// Metrics, if set, counts renewals and exports the current kind.
	Metrics *Metrics
	// Now is the clock for epoch checks (the gateway's clock against
	// ours) and renewal times; nil means time.Now. Waits use the
	// runtime's timers, so tests drive time with testing/synctest.
	Now func() time.Time
	// Lifetime asked of the gateway; zero means DefaultLifetime.
	Lifetime time.Duration
	// CheckInterval between restart checks; zero means
	// DefaultCheckInterval.
	CheckInterval time.Duration
	// RetryInterval before probing again after a failure; zero means
	// DefaultRetryInterval.
	RetryInterval time.Duration
	// Protocols limits the protocols tried; empty means all three.
	Protocols []Kind
	// PublicAddr, if set, returns the node's public IPv4 address as its
	// STUN probes saw it (invalid if unknown). It is used only when a UPnP
	// gateway does not report a usable external address itself, as
	// miniupnpd does not when its WAN address is private or reserved.
	PublicAddr func() netip.Addr
	// Gateway returns the default gateway and the node's own address
	// towards it; nil means DefaultGateway.
	Gateway func() (gw, self netip.Addr, err error)

	// newProtos builds the protocol clients for a gateway; tests replace
	// it with fakes. nil means the real NAT-PMP, PCP and UPnP clients.
	newProtos func(gw, self netip.Addr, cfg *Config) []proto
}

// Client holds one port mapping for the node's UDP port. Start it with
// Start; it is safe for concurrent use.
type Client struct {
	cfg     Config
	log     *slog.Logger
	changed chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}
	probes  sync.WaitGroup // probe goroutines, which may outlive one probe round
	// listener is the announcement listener's goroutine.
	listener sync.WaitGroup
	// gateway is the gateway of the last probe round, for the listener.
	gateway atomic.Pointer[netip.Addr]
	// announced is signalled (capacity 1, coalesced) when the gateway
	// announces a restart.
	announced chan struct{}

	mu struct {
		sync.Mutex
		ext    netip.AddrPort
		kind   Kind
		closed bool
	}
}

var _ Mapper = (*Client)(nil)

// Start validates cfg and starts the client's goroutine. It runs until Close
// or until ctx is done; either way the mapping is deleted on the way out.
func Start(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Port == 0 {
		return nil, errors.New("portmap: no port to map")
	}
	for _, k := range cfg.Protocols {
		if k != KindNATPMP && k != KindPCP && k != KindUPnP {
			return nil, fmt.Errorf("portmap: unknown protocol %q", k)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = DefaultLifetime
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = DefaultCheckInterval
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	if cfg.Gateway == nil {
		cfg.Gateway = DefaultGateway
	}
	listen := false
	if cfg.newProtos == nil {
		cfg.newProtos, listen = realProtos, true
	}
	ctx, cancel := context.WithCancel(ctx)
	c := &Client{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "portmap"),
		changed:   make(chan struct{}, 1),
		cancel:    cancel,
		done:      make(chan struct{}),
		announced: make(chan struct{}, 1),
	}
	if listen {
		c.listener.Add(1)
		go func() {
			defer c.listener.Done()
			c.listenAnnouncements(ctx)
		}()
	}
	go c.run(ctx)
	return c, nil
}

// Mapping implements Mapper.
func (c *Client) Mapping() (netip.AddrPort, Kind) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.ext, c.mu.kind
}

// Changed implements Mapper. There is one channel; give it one reader.
func (c *Client) Changed() <-chan struct{} { return c.changed }

// Close implements Mapper: it stops the goroutine, which deletes the mapping
// at the gateway (bounded by a 2 s request timeout), and returns when every
// goroutine of the client has exited. A second Close returns ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	closed := c.mu.closed
	c.mu.closed = true
	c.mu.Unlock()
	if closed {
		return ErrClosed
	}
	c.cancel()
	<-c.done
	c.probes.Wait()
	c.listener.Wait()
	return nil
}

// set publishes a new mapping state and signals Changed.
func (c *Client) set(ext netip.AddrPort, kind Kind) {
	c.mu.Lock()
	c.mu.ext, c.mu.kind = ext, kind
	c.mu.Unlock()
	c.cfg.Metrics.setKind(kind)
	select {
	case c.changed <- struct{}{}:
	default:
	}
}
