package coordclient

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// Replicas. Every URL argument of this package may be one coordinator URL
// or a comma-separated list of replicas that share one database (and so
// one certificate pin, one key, one state). A client sticks to one replica
// and moves to the next when it stops answering: a request that fails to
// connect or gets 502, 503 or 504 is sent to the next replica, and a map
// stream that breaks is reopened on the next one. Moves wait a jittered,
// growing pause, so that the nodes of a dead replica do not all arrive at
// the next one in the same instant.

// Failover pacing.
const (
	// moveBackoffMin is the first pause before trying the next replica:
	// long enough to spread a replica's thousands of nodes over a moment,
	// short enough that they move well within 5 s.
	moveBackoffMin = 200 * time.Millisecond
	// moveBackoffMax caps the pause while every replica fails.
	moveBackoffMax = 5 * time.Second
	// maxReplicas bounds a URL list.
	maxReplicas = 32
)

// ParseURLs splits a comma-separated list of coordinator URLs, trimming
// spaces and trailing slashes. Every URL must use the same scheme, https
// (or http for a loopback test server).
func ParseURLs(list string) ([]string, error) {
	var out []string
	for _, u := range strings.Split(list, ",") {
		u = strings.TrimRight(strings.TrimSpace(u), "/")
		if u == "" {
			continue
		}
		if !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
			return nil, fmt.Errorf("coordclient: coordinator URL %q must start with https:// (or http:// for a loopback test server)", u)
		}
		if len(out) > 0 && scheme(u) != scheme(out[0]) {
			return nil, fmt.Errorf("coordclient: coordinator URLs %q and %q mix http and https", out[0], u)
		}
		out = append(out, u)
	}
	if len(out) == 0 {
		return nil, errors.New("coordclient: no coordinator URL given")
	}
	if len(out) > maxReplicas {
		return nil, fmt.Errorf("coordclient: %d coordinator URLs; at most %d", len(out), maxReplicas)
	}
	return out, nil
}

func scheme(u string) string { s, _, _ := strings.Cut(u, "://"); return s }

// replicaSet is a URL list and the replica in use.
type replicaSet struct {
	urls []string
	cur  atomic.Int64
}

func newReplicaSet(urls []string, start int) *replicaSet {
	r := &replicaSet{urls: urls}
	r.cur.Store(int64(start))
	return r
}

// current returns the index and URL of the replica in use.
func (r *replicaSet) current() (int, string) {
	i := int(r.cur.Load()) % len(r.urls)
	return i, r.urls[i]
}

// failed moves off replica i, unless another caller already has.
func (r *replicaSet) failed(i int) {
	r.cur.CompareAndSwap(int64(i), int64((i+1)%len(r.urls)))
}

// URLs returns the replicas' URLs.
func (r *replicaSet) URLs() []string { return append([]string(nil), r.urls...) }

// replicaDown reports whether err or status means the replica stopped
// answering, so the next one should be tried.
func replicaDown(err error, status int) bool {
	if err != nil {
		var ae *APIError
		if errors.As(err, &ae) {
			status = ae.Status
		} else {
			return !errors.Is(err, context.Canceled)
		}
	}
	return status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
}

// pause waits a jittered backoff (half to all of d) or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d/2 + rand.N(d/2+1))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// eachReplica calls try with the replica in use and, while it reports the
// replica down, with the next ones, once each, pausing between them.
func (r *replicaSet) eachReplica(ctx context.Context, try func(url string) error) error {
	backoff := moveBackoffMin
	var err error
	for n := 0; n < len(r.urls); n++ {
		i, u := r.current()
		err = try(u)
		if err == nil || !replicaDown(err, 0) || ctx.Err() != nil {
			return err
		}
		r.failed(i)
		if n == len(r.urls)-1 {
			break
		}
		if perr := pause(ctx, backoff); perr != nil {
			return err
		}
		backoff = min(2*backoff, moveBackoffMax)
	}
	return err
}
