// Package dns is MagicDNS on the node: the resolver that answers at
// 100.100.100.100:53, and the OS configurators that point Linux at it
// (systemd-resolved over D-Bus, else /etc/resolv.conf).
//
// A query is answered by the first rule that applies:
//
//  1. PTR names of 100.64.0.0/10: the peer (or this node) with that
//     address, else NXDOMAIN with an SOA (the resolver owns that range).
//  2. Extra records, by exact name, inside the mesh domain or not.
//  3. NAME.<domain>, and NAME alone: the peer's or this node's mesh
//     addresses. Any other name under the mesh domain is NXDOMAIN with an
//     SOA. Positive answers live 5 s and negative ones 10 s, so a rename
//     shows within seconds.
//  4. Everything else is forwarded: to the nameservers of the longest
//     split suffix that matches, else to the global nameservers, else to
//     the resolvers the OS had before the node took over.
//
// Forwarding sends UDP first and races TCP in after 2 s, retries over TCP
// at once when a UDP answer is truncated, gives a query 10 s in all, and
// keeps at most 256 queries in flight (more get SERVFAIL at once: a flood
// is bounded and local names still answer). A nameserver on a mesh address
// (a Pi-hole on a peer) is reached through Config.MeshDialer: in userspace
// mode that is the netstack, in kernel mode the TUN route.
//
// The resolver is fed by its owner one change at a time (PeerUpsert,
// PeerRemove, SetSelf, SetSettings, SetOSResolvers).
package dns

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Address is where the node's resolver listens in production.
var Address = netip.MustParseAddrPort("100.100.100.100:53")

// TTLs (Tailscale's): short enough that a rename or a removed peer shows
// within seconds, long enough to absorb a burst of lookups.
const (
	ttlPositive = 5
	ttlNegative = 10
)

// Forwarding limits.
const (
	// tcpRaceDelay is when TCP joins a UDP query that has not answered:
	// UDP loss on a path is then covered without waiting for the whole
	// timeout, and a healthy UDP path (answers in milliseconds) never
	// pays for TCP.
	tcpRaceDelay = 2 * time.Second
	// queryTimeout bounds one forwarded query, every attempt included;
	// stub resolvers retry after 5 s, so the client may already have a
	// second query in flight.
	queryTimeout = 10 * time.Second
	// maxInFlight bounds forwarded queries at once (goroutines, sockets):
	// one more is answered SERVFAIL at once.
	maxInFlight = 256
	// maxUDPSize is the EDNS0 size offered upstream and the largest UDP
	// answer given to a client that offers as much.
	maxUDPSize = 1232
)

// Sources label where an answer came from (metric label, LookupHost).
const (
	SourceMesh   = "mesh"   // a peer or this node, or NXDOMAIN in the mesh domain
	SourcePTR    = "ptr"    // reverse name of a mesh address
	SourceExtra  = "extra"  // an extra record
	SourceSplit  = "split"  // forwarded to a split route's nameservers
	SourceGlobal = "global" // forwarded to the global nameservers
	SourceOS     = "os"     // forwarded to the OS's previous resolvers
	SourceNone   = "none"   // nowhere to send it, or refused
)

// Dialer reaches a nameserver; network is "udp" or "tcp".
type Dialer interface {
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
}

// Config configures a Resolver.
type Config struct {
	// MeshDialer reaches nameservers on mesh addresses (100.64.0.0/10)
	// through the tunnel; nil uses Dialer for them too (kernel TUN mode,
	// where the OS routes them into the tunnel).
	MeshDialer Dialer
	// Dialer reaches other nameservers; nil: a net.Dialer.
	Dialer Dialer
	// Registerer, if set, gets the resolver's metrics.
	Registerer prometheus.Registerer
	Log        *slog.Logger
}

// Resolver answers DNS queries. It is safe for concurrent use.
type Resolver struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	sem     chan struct{} // forwarding slots

	mu sync.RWMutex
	t  table
}

// New returns a resolver with no names and no upstreams.
func New(cfg Config) *Resolver {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	if cfg.MeshDialer == nil {
		cfg.MeshDialer = cfg.Dialer
	}
	return &Resolver{cfg: cfg, log: cfg.Log, metrics: newMetrics(cfg.Registerer),
		sem: make(chan struct{}, maxInFlight), t: newTable()}
}

// PeerUpsert adds a peer, or changes its name or addresses (a rename is an
// upsert with the same id). id is any stable key (the node key).
func (r *Resolver) PeerUpsert(id, name string, addrs []netip.Addr) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.t.upsert(id, name, addrs)
}

// PeerRemove forgets a peer.
func (r *Resolver) PeerRemove(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.t.remove(id)
}

// SetSelf sets this node's own name and addresses.
func (r *Resolver) SetSelf(name string, addrs []netip.Addr) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.t.setSelf(name, addrs)
}

// SetSettings replaces the mesh-wide settings; on error nothing changes.
func (r *Resolver) SetSettings(s Settings) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.t.setSettings(s)
}

// SetOSResolvers sets the resolvers the OS had before the node took over:
// the last resort for names nothing else answers. Port 0 means 53.
func (r *Resolver) SetOSResolvers(ns []netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.t.osAddrs = withPort53(ns)
}

// SearchDomains returns the search list: the mesh domain, then the
// settings' search domains (FQDNs without the final dot), for the OS
// configurators.
func (r *Resolver) SearchDomains() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, len(r.t.search))
	for i, s := range r.t.search {
		out[i] = s[:len(s)-1]
	}
	return out
}

// Routes describes what the node should take from the OS: All when global
// nameservers are set (every name goes through the resolver), else the
// mesh domain and split suffixes only (without the final dot).
func (r *Resolver) Routes() (all bool, suffixes []string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.t.domain != "" {
		suffixes = append(suffixes, r.t.domain[:len(r.t.domain)-1])
	}
	for _, s := range r.t.split {
		suffixes = append(suffixes, s.suffix[:len(s.suffix)-1])
	}
	return len(r.t.global) > 0, suffixes
}

// ServeDNS implements miekg/dns's Handler.
func (r *Resolver) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	resp, _ := r.Query(context.Background(), req)
	if resp == nil {
		return
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := mdns.MinMsgSize
		if o := req.IsEdns0(); o != nil {
			size = min(int(o.UDPSize()), maxUDPSize)
			size = max(size, mdns.MinMsgSize)
		}
		resp.Truncate(size)
	}
	w.WriteMsg(resp)
}

// Query answers one query and says which source answered. It returns nil
// for a message that deserves no answer (a response, not a query).
func (r *Resolver) Query(ctx context.Context, req *mdns.Msg) (*mdns.Msg, string) {
	resp, source := r.query(ctx, req)
	if resp != nil {
		r.metrics.query(source, resp.Rcode)
	}
	return resp, source
}
