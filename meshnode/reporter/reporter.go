// Package reporter sends this node's reports to the coordinator: its
// endpoints, home relay and latest netcheck. One goroutine (Run) owns the
// sending; reports made while one is in flight or failing are coalesced
// (the latest of each kind wins) and retried with the shared backoff, over
// the long-lived coordinator client the Dialer hands out.
package reporter

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/backoff"
	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/netmap"
)

// Retry schedule: a coordinator restart is routine (retry within a
// second); a long outage costs one request every 30 s. A coordinator that
// says the node is deleted or expired is asked again only every
// GoneBackoff.
const (
	RetryMin    = time.Second
	RetryMax    = 30 * time.Second
	GoneBackoff = 5 * time.Minute
	// updateTimeout bounds one update request.
	updateTimeout = 10 * time.Second
)

// Updater sends one update (coordclient.Client).
type Updater interface {
	Update(ctx context.Context, u netmap.UpdateRequest) error
}

// Dialer returns the coordinator client to send on: the node's long-lived
// one, or a fresh one if there is none yet.
type Dialer func(ctx context.Context) (Updater, error)

// Reporter coalesces and sends reports. Create it with New; run Run.
type Reporter struct {
	dial Dialer
	log  *slog.Logger
	kick chan struct{}

	mu      sync.Mutex
	pending netmap.UpdateRequest
	has     bool
}

// New returns a Reporter that sends through dial.
func New(dial Dialer, log *slog.Logger) *Reporter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reporter{dial: dial, log: log, kick: make(chan struct{}, 1)}
}

// Endpoints reports this node's endpoint set.
func (r *Reporter) Endpoints(eps []netip.AddrPort) {
	eps = slices.Clone(eps)
	r.merge(func(u *netmap.UpdateRequest) { u.Endpoints = &eps })
}

// Home reports this node's home relay region.
func (r *Reporter) Home(region string) {
	r.merge(func(u *netmap.UpdateRequest) { u.HomeRelay = &region })
}

// Netcheck reports this node's latest netcheck.
func (r *Reporter) Netcheck(nc netmap.Netcheck) {
	r.merge(func(u *netmap.UpdateRequest) { u.Netcheck = &nc })
}

// Routes reports the subnet routes this node advertises (an empty list
// withdraws them) and whether it offers itself as an exit node.
func (r *Reporter) Routes(subnets []netip.Prefix, exit bool) {
	subnets = append([]netip.Prefix{}, subnets...) // never nil: "[]" withdraws
	r.merge(func(u *netmap.UpdateRequest) { u.AdvertisedRoutes, u.ExitNode = &subnets, &exit })
}

func (r *Reporter) merge(set func(*netmap.UpdateRequest)) {
	r.mu.Lock()
	set(&r.pending)
	r.has = true
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// take returns the pending update and clears it.
func (r *Reporter) take() (netmap.UpdateRequest, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u, ok := r.pending, r.has
	r.pending, r.has = netmap.UpdateRequest{}, false
	return u, ok
}

// putBack merges a failed update under anything newer.
func (r *Reporter) putBack(u netmap.UpdateRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending.Endpoints == nil {
		r.pending.Endpoints = u.Endpoints
	}
	if r.pending.HomeRelay == nil {
		r.pending.HomeRelay = u.HomeRelay
	}
	if r.pending.Netcheck == nil {
		r.pending.Netcheck = u.Netcheck
	}
	if r.pending.AdvertisedRoutes == nil && r.pending.ExitNode == nil {
		r.pending.AdvertisedRoutes, r.pending.ExitNode = u.AdvertisedRoutes, u.ExitNode
	}
	r.has = true
}

// Run sends reports until ctx ends.
func (r *Reporter) Run(ctx context.Context) {
	bo := backoff.Backoff{Min: RetryMin, Max: RetryMax}
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		}
		for {
			u, ok := r.take()
			if !ok {
				break
			}
			err := r.send(ctx, u)
			if err == nil {
				bo.Reset()
				continue
			}
			if ctx.Err() != nil {
				return
			}
			r.putBack(u)
			wait := bo.Next()
			if NodeGone(err) {
				wait = GoneBackoff
			}
			r.log.Debug("report to the coordinator failed; retrying", "err", err, "in", wait)
			if !backoff.Sleep(ctx, wait) {
				return
			}
		}
	}
}

// NodeGone reports whether err says the coordinator deleted this node or
// its key expired: retrying soon cannot help.
func NodeGone(err error) bool {
	return errors.Is(err, coordclient.ErrNodeUnknown) || errors.Is(err, coordclient.ErrNodeExpired)
}

func (r *Reporter) send(ctx context.Context, u netmap.UpdateRequest) error {
	ctx, cancel := context.WithTimeout(ctx, updateTimeout)
	defer cancel()
	c, err := r.dial(ctx)
	if err != nil {
		return err
	}
	return c.Update(ctx, u)
}
