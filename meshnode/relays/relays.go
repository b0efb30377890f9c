// Package relays decides which relay carries each peer's packets and
// keeps the send links to them: the peer's home relay when the netmap
// names one (unless that relay said the peer left it), else this node's
// home relay.
//
// The Router publishes each peer's relay link to the bind (SetRelay), so
// that the bind's send path takes no lock; the first packet to a peer, or
// the first after a change, takes the slow path (SendTo), which picks the
// relay, connects on demand, publishes the link, and queues the packet if
// the relay is still connecting. Queued packets are flushed when it
// connects, so a node's first packet to a peer (a WireGuard handshake) is
// not lost to dial time, which would cost WireGuard's 5 s handshake retry.
package relays

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/bind"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/relayclient"
)

// Queue bounds: beyond pendingLen packets per relay the oldest go, and a
// relay that has not connected within pendingWait drops its queue.
// maxGone bounds the peer-gone table (entries go when the netmap changes
// the peer's home, or the peer shows up again).
const (
	pendingLen  = 32
	pendingWait = 10 * time.Second
	maxGone     = 4096
)

// Pool hands out relay clients by relay (relayclient.Pool).
type Pool interface {
	Get(r relayclient.Relay) (*relayclient.Client, error)
}

// Publisher receives each peer's relay link (the bind).
type Publisher interface {
	SetRelay(peer key.NodePublic, link bind.RelayLink)
}

// Config configures a Router.
type Config struct {
	Pool Pool
	Bind Publisher
	// PendingDrops counts packets dropped from a pending queue. May be nil.
	PendingDrops prometheus.Counter
	Log          *slog.Logger
}

// Router picks relays for peers. Create it with New and run Run.
type Router struct {
	cfg Config

	mu      sync.Mutex
	ctx     context.Context // set while Run runs
	rm      netmap.RelayMap
	home    relayclient.Relay
	peers   map[key.NodePublic]string // peer → its home region ("" unknown)
	gone    map[key.NodePublic]string // peer → region of the relay it left
	linked  map[key.NodePublic]bool   // peers with a published link
	pending map[string]*pendingQueue  // by relay address
	wg      sync.WaitGroup            // flush goroutines
}

type pendingPacket struct {
	dst   key.NodePublic
	pkt   []byte
	disco bool
}

type pendingQueue struct {
	pkts []pendingPacket
}

// ErrNoRelay is returned when neither the peer's home nor ours is known.
var ErrNoRelay = errors.New("relays: no relay known for peer")

// New returns a Router.
func New(cfg Config) *Router {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Router{cfg: cfg, peers: map[key.NodePublic]string{}, gone: map[key.NodePublic]string{},
		linked: map[key.NodePublic]bool{}, pending: map[string]*pendingQueue{}}
}

// Run serves flushes until ctx ends, then waits for them to finish.
func (r *Router) Run(ctx context.Context) {
	r.mu.Lock()
	r.ctx = ctx
	r.mu.Unlock()
	<-ctx.Done()
	r.mu.Lock()
	r.ctx = nil
	r.mu.Unlock()
	r.wg.Wait()
}

// Pick returns the relay to use in a region: the first healthy one, else
// the first listed.
func Pick(rm netmap.RelayMap, region string) (relayclient.Relay, bool) {
	for _, reg := range rm.Regions {
		if reg.Code != region || len(reg.Relays) == 0 {
			continue
		}
		pick := reg.Relays[0]
		for _, rl := range reg.Relays {
			if rl.Healthy {
				pick = rl
				break
			}
		}
		return relayclient.Relay{Addr: pick.Addr, Pin: pick.Pin, Key: pick.Key, Region: reg.Code}, true
	}
	return relayclient.Relay{}, false
}

// SetRelayMap replaces the relay map; every peer's link is chosen afresh.
func (r *Router) SetRelayMap(rm netmap.RelayMap) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rm = rm
	r.unlinkAllLocked()
}

// SetHome makes rel this node's home relay; every peer's link is chosen
// afresh (those that fell back to the old home move).
func (r *Router) SetHome(rel relayclient.Relay) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.home = rel
	r.unlinkAllLocked()
}

// Home returns this node's home relay (zero Addr: none yet).
func (r *Router) Home() relayclient.Relay {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.home
}

// UpsertPeer records a peer's home region.
func (r *Router) UpsertPeer(peer key.NodePublic, homeRegion string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if g, ok := r.gone[peer]; ok && g != homeRegion {
		delete(r.gone, peer) // the map now says where it went
	}
	if old, ok := r.peers[peer]; ok && old == homeRegion {
		return
	}
	r.peers[peer] = homeRegion
	r.unlinkLocked(peer)
}

// RemovePeer forgets a peer.
func (r *Router) RemovePeer(peer key.NodePublic) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.peers, peer)
	delete(r.gone, peer)
	r.unlinkLocked(peer)
}

// PeerGone records that the relay of region said peer left it: until the
// netmap names the peer's new home, its packets go through our home.
func (r *Router) PeerGone(peer key.NodePublic, region string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.peers[peer]; !ok {
		return
	}
	if _, ok := r.gone[peer]; !ok && len(r.gone) >= maxGone {
		return
	}
	r.gone[peer] = region
	r.unlinkLocked(peer)
}

// PeerPresent records that a relay says peer is connected to it again.
func (r *Router) PeerPresent(peer key.NodePublic) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.gone[peer]; ok {
		delete(r.gone, peer)
		r.unlinkLocked(peer)
	}
}

// Present reports whether peer is believed connected to its home relay:
// known, and no relay has said it left since.
func (r *Router) Present(peer key.NodePublic) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, known := r.peers[peer]
	_, gone := r.gone[peer]
	return known && !gone
}

// RelayFor returns the relay to reach peer through.
func (r *Router) RelayFor(peer key.NodePublic) (relayclient.Relay, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.relayForLocked(peer)
}

func (r *Router) relayForLocked(peer key.NodePublic) (relayclient.Relay, bool) {
	if region := r.peers[peer]; region != "" && r.gone[peer] != region {
		if rel, ok := Pick(r.rm, region); ok {
			return rel, true
		}
	}
	if r.home.Addr != "" {
		return r.home, true
	}
	return relayclient.Relay{}, false
}

func (r *Router) unlinkLocked(peer key.NodePublic) {
	if r.linked[peer] {
		delete(r.linked, peer)
		r.cfg.Bind.SetRelay(peer, nil)
	}
}

func (r *Router) unlinkAllLocked() {
	for p := range r.linked {
		r.cfg.Bind.SetRelay(p, nil)
	}
	clear(r.linked)
}
