package coordinator

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/policy"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// Replicas: several coordinators on one PostgreSQL database.
//
// Each replica keeps the whole working set in memory, as a lone
// coordinator does, and writes every change through the store. The store
// announces each committed change (NOTIFY, in the change's transaction)
// with the IDs it touched; every other replica's listener reads those rows
// back and applies the difference to its own memory through the same
// edge-based fan-out a local change takes (state.go), so one change costs
// each replica the peers it affects, never a rebuild.
//
// What is not stored travels as events: a node opening or closing its
// stream on a replica (so peers streaming from other replicas see it
// online), and a replica's periodic "alive". A replica silent for
// replicaDeadAfter is dead: the nodes it streamed are shown offline until
// they reconnect elsewhere. When a replica's listener (re)connects it may
// have missed changes, so it reloads the store, applies the difference,
// and says "hello"; the others answer by publishing their streaming nodes.
//
// Jobs that write (ephemeral clean-up, relay liveness) run on the one
// replica holding the store's jobs lock; node-key expiry needs no write,
// so every replica enforces it on its own streams from the shared record.

// Timing of the replica protocol.
const (
	// aliveInterval is how often a replica says it is alive.
	aliveInterval = 3 * time.Second
	// replicaDeadAfter: a replica unheard this long is taken for dead and
	// its nodes for offline. Several alive intervals, so that one slow
	// notification does not flap every node it streams.
	replicaDeadAfter = 4 * aliveInterval
	// onlineQueueLen bounds stream open/close events waiting to be
	// published: a reconnect storm of every node on a big replica fits. An
	// event dropped past it is repaired by the next hello.
	onlineQueueLen = 1 << 15
	// listenReadyTimeout bounds how long Run waits for the change listener
	// before serving: a replica that serves before it listens could miss
	// changes made meanwhile until its next resync.
	listenReadyTimeout = 10 * time.Second
	// maxOnlineBatch bounds the node IDs in one online event (the payload
	// limit of a notification; see store.maxNotifyIDs).
	maxOnlineBatch = 300
)

type onlineEvent struct {
	id     netmap.NodeID
	online bool
}

// replicas is this replica's view of the others.
type replicas struct {
	srv    *Server
	events chan onlineEvent
	// ready is closed after the first resync: from then on no change is
	// missed.
	ready     chan struct{}
	readyOnce sync.Once

	mu       sync.Mutex // guards the fields below
	alive    map[string]time.Time
	resynced time.Time // last resync; remote online marks older than it are stale
	leader   bool
	// lost is set while the listener is disconnected: other replicas'
	// silence then says nothing about them.
	lost bool
}

func newReplicas(srv *Server) *replicas {
	return &replicas{srv: srv, events: make(chan onlineEvent, onlineQueueLen), alive: map[string]time.Time{}, ready: make(chan struct{})}
}

// run listens for other replicas' changes and publishes this one's events
// until ctx ends. Without a shared store it returns at once.
func (r *replicas) run(ctx context.Context) {
	sh := r.srv.shared
	if sh == nil {
		r.readyOnce.Do(func() { close(r.ready) })
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		sh.Listen(ctx, func(c store.Change) { r.apply(ctx, c) })
	}()
	go func() {
		defer wg.Done()
		r.publishLoop(ctx)
	}()
	wg.Wait()
}

// streamChanged queues a stream open or close for the other replicas.
func (r *replicas) streamChanged(id netmap.NodeID, online bool) {
	if r.srv.shared == nil {
		return
	}
	select {
	case r.events <- onlineEvent{id, online}:
	default:
		r.srv.m.replicaEvents.WithLabelValues("dropped").Inc()
	}
}

// publishLoop sends queued online events in batches and says alive.
func (r *replicas) publishLoop(ctx context.Context) {
	t := time.NewTicker(aliveInterval)
	defer t.Stop()
	sh := r.srv.shared
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := sh.Publish(ctx, store.Change{Kind: store.ChangeAlive}); err != nil && ctx.Err() == nil {
				r.srv.log.Debug("publish alive", "err", err)
			}
			r.expireDead()
		case ev := <-r.events:
			batch := map[bool][]int64{ev.online: {int64(ev.id)}}
		drain:
			for len(batch[true])+len(batch[false]) < 4*maxOnlineBatch {
				select {
				case ev := <-r.events:
					batch[ev.online] = append(batch[ev.online], int64(ev.id))
				default:
					break drain
				}
			}
			for _, on := range []bool{true, false} {
				r.publishOnline(ctx, batch[on], on)
			}
		}
	}
}

func (r *replicas) publishOnline(ctx context.Context, ids []int64, on bool) {
	for len(ids) > 0 {
		n := min(len(ids), maxOnlineBatch)
		if err := r.srv.shared.Publish(ctx, store.Change{Kind: store.ChangeOnline, IDs: ids[:n], Online: on}); err != nil {
			if ctx.Err() == nil {
				r.srv.log.Debug("publish online", "err", err)
			}
			return // the next hello repairs it
		}
		ids = ids[n:]
	}
}

// publishStreaming announces every node streaming from this replica.
func (r *replicas) publishStreaming(ctx context.Context) {
	st := r.srv.st
	var ids []int64
	st.mu.RLock()
	for _, n := range st.nodes {
		if n.sess != nil {
			ids = append(ids, int64(n.id))
		}
	}
	st.mu.RUnlock()
	r.publishOnline(ctx, ids, true)
}

// expireDead shows the nodes of replicas unheard for replicaDeadAfter as
// offline, and drops online marks a resync left unconfirmed.
func (r *replicas) expireDead() {
	now := time.Now()
	r.mu.Lock()
	if r.lost {
		r.mu.Unlock()
		return
	}
	dead := map[string]bool{}
	for origin, at := range r.alive {
		if now.Sub(at) > replicaDeadAfter {
			dead[origin] = true
			delete(r.alive, origin)
			r.srv.log.Warn("replica silent; its nodes are offline until they reconnect", "replica", origin)
		}
	}
	resynced := r.resynced
	stale := !resynced.IsZero() && now.Sub(resynced) > replicaDeadAfter
	if stale {
		r.resynced = time.Time{}
	}
	r.mu.Unlock()
	if len(dead) == 0 && !stale {
		return
	}
	st := r.srv.st
	snow := r.srv.now()
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, n := range st.nodes {
		if n.remote == "" {
			continue
		}
		if dead[n.remote] || (stale && n.remoteSeen.Before(resynced)) {
			wasOnline := n.online()
			n.remote = ""
			if wasOnline != n.online() && !n.expired(snow) {
				st.onlineChangedLocked(n, snow)
			}
		}
	}
}

// apply applies one change from another replica. It runs on the listener's
// goroutine, one change at a time.
func (r *replicas) apply(ctx context.Context, c store.Change) {
	srv := r.srv
	srv.m.replicaEvents.WithLabelValues(string(c.Kind)).Inc()
	if c.Origin != "" {
		r.mu.Lock()
		if _, known := r.alive[c.Origin]; !known {
			srv.log.Info("replica heard", "replica", c.Origin)
		}
		r.alive[c.Origin] = time.Now()
		r.mu.Unlock()
	}
	switch c.Kind {
	case store.ChangeLost:
		r.mu.Lock()
		r.lost = true
		r.mu.Unlock()
	case store.ChangeResync:
		r.resync(ctx)
	case store.ChangeNodes:
		for _, id := range c.IDs {
			srv.syncNode(ctx, netmap.NodeID(id))
		}
	case store.ChangeNodeDeleted:
		for _, id := range c.IDs {
			srv.st.mu.RLock()
			n := srv.st.nodes[netmap.NodeID(id)]
			srv.st.mu.RUnlock()
			if n != nil {
				n.writeMu.Lock()
				srv.dropNodeLocal(n)
				n.writeMu.Unlock()
			}
		}
	case store.ChangePolicy:
		text, err := srv.store.Policy(ctx)
		if err != nil {
			srv.log.Warn("read policy changed by another replica", "err", err)
			return
		}
		srv.syncPolicy(text)
	case store.ChangeDNS:
		srv.syncDNS(ctx)
	case store.ChangeRelay:
		rl, err := srv.store.Relay(ctx, c.Key)
		if err != nil {
			srv.log.Warn("read relay changed by another replica", "relay", c.Key, "err", err)
			return
		}
		srv.relays.syncRelay(rl)
	case store.ChangeRegion:
		rg, err := srv.store.Region(ctx, c.Key)
		if err != nil {
			srv.log.Warn("read region changed by another replica", "region", c.Key, "err", err)
			return
		}
		srv.relays.syncRegion(rg)
	case store.ChangeOnline:
		srv.remoteOnline(c.Origin, c.IDs, c.Online)
	case store.ChangeRevocation:
		// Stored by the replica that made it: only this replica's list and
		// the relays polling it need to hear.
		if nk, err := key.ParseNodePublic(c.Key); err == nil {
			var until time.Time
			if c.Until != 0 {
				until = time.UnixMilli(c.Until)
			}
			if _, changed, _ := srv.revs.set(nk, until); changed {
				srv.revs.publish()
			}
		}
	case store.ChangeAlive:
		if c.Key == "hello" {
			r.publishStreaming(ctx)
		}
	}
}

// resync reloads the store and applies every difference: changes may have
// been missed while the listener was away.
func (r *replicas) resync(ctx context.Context) {
	srv := r.srv
	snap, err := srv.store.Load(ctx)
	if err != nil {
		srv.log.Warn("resync with the database", "err", err)
		return
	}
	seen := make(map[netmap.NodeID]bool, len(snap.Nodes))
	for _, rec := range snap.Nodes {
		seen[netmap.NodeID(rec.ID)] = true
		srv.syncNodeRec(netmap.NodeID(rec.ID), &rec)
	}
	st := srv.st
	var gone []*nodeState
	st.mu.RLock()
	for id, n := range st.nodes {
		if !seen[id] {
			gone = append(gone, n)
		}
	}
	st.mu.RUnlock()
	for _, n := range gone {
		n.writeMu.Lock()
		srv.dropNodeLocal(n)
		n.writeMu.Unlock()
	}
	srv.syncPolicy(snap.Policy)
	srv.syncDNS(ctx)
	changed := false
	for _, rv := range snap.Revocations {
		if nk, err := key.ParseNodePublic(rv.NodeKey); err == nil {
			if _, c, _ := srv.revs.set(nk, rv.Until); c {
				changed = true
			}
		}
	}
	if changed {
		srv.revs.publish()
	}
	for _, rg := range snap.Regions {
		srv.relays.syncRegion(rg)
	}
	for _, rl := range snap.Relays {
		srv.relays.syncRelay(rl)
	}
	r.mu.Lock()
	r.resynced = time.Now()
	if r.lost {
		// Judge the others afresh from now: they could not be heard.
		r.lost = false
		for origin := range r.alive {
			r.alive[origin] = r.resynced
		}
	}
	r.mu.Unlock()
	r.readyOnce.Do(func() { close(r.ready) })
	if err := srv.shared.Publish(ctx, store.Change{Kind: store.ChangeAlive, Key: "hello"}); err != nil {
		srv.log.Debug("publish hello", "err", err)
	}
	srv.log.Info("in sync with the database", "nodes", len(snap.Nodes))
}

// syncNode reads node id back from the store and applies it.
func (srv *Server) syncNode(ctx context.Context, id netmap.NodeID) {
	srv.st.mu.RLock()
	n := srv.st.nodes[id]
	srv.st.mu.RUnlock()
	if n != nil {
		// Read under the node's write lock, so a local write in flight
		// either lands first (and is what we read) or after (and wins).
		n.writeMu.Lock()
		defer n.writeMu.Unlock()
	}
	rec, err := srv.store.Node(ctx, int64(id))
	if errors.Is(err, store.ErrNotFound) {
		if n != nil {
			srv.dropNodeLocal(n)
		}
		return
	}
	if err != nil {
		srv.log.Warn("read node changed by another replica", "id", id, "err", err)
		return
	}
	srv.applyNodeRec(n, rec)
}

// syncNodeRec applies a record read in bulk (resync).
func (srv *Server) syncNodeRec(id netmap.NodeID, rec *store.Node) {
	srv.st.mu.RLock()
	n := srv.st.nodes[id]
	srv.st.mu.RUnlock()
	if n != nil {
		n.writeMu.Lock()
		defer n.writeMu.Unlock()
	}
	srv.applyNodeRec(n, *rec)
}

// applyNodeRec makes memory match a stored node record: n is the node in
// memory (nil: new to this replica), its writeMu held by the caller.
func (srv *Server) applyNodeRec(n *nodeState, rec store.Node) {
	now := srv.now()
	st := srv.st
	if n == nil {
		nn, err := srv.newNodeState(rec)
		if err != nil {
			srv.log.Warn("stored node", "node", rec.Name, "err", err)
			return
		}
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.nodes[nn.id] != nil {
			return // added meanwhile by a local registration's answer
		}
		// A stale entry under the same key or name (deleted and
		// registered again elsewhere) gives way to the stored one.
		for _, old := range []*nodeState{st.byKey[nn.nodeKey], st.byName[rec.Name]} {
			if old != nil && st.nodes[old.id] == old {
				if !old.expiredSent {
					st.removedLocked(old, now)
				}
				st.removeLocked(old)
				if old.sess != nil {
					old.sess.cancel()
				}
			}
		}
		nn.expiredSent = nn.expired(now)
		// The address cursor stays where it is: following another
		// replica's cursor would put both on the same next addresses.
		st.addLocked(nn)
		if !nn.expiredSent {
			st.changedLocked(nn, now, true)
		}
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.nodes[n.id] != n {
		return
	}
	old := n.rec
	visible := old.DiscoKey != rec.DiscoKey || !slices.Equal(old.Endpoints, rec.Endpoints) || old.HomeRelay != rec.HomeRelay ||
		old.Hostname != rec.Hostname || old.OS != rec.OS || !old.KeyExpiry.Equal(rec.KeyExpiry) ||
		!slices.Equal(old.Tags, rec.Tags) || old.User != rec.User || old.Ephemeral != rec.Ephemeral || old.Name != rec.Name
	reindex := !slices.Equal(old.Tags, rec.Tags) || old.User != rec.User || old.Name != rec.Name
	if old.Name != rec.Name { // renamed on another replica (RenameNode)
		if st.byName[old.Name] == n {
			delete(st.byName, old.Name)
		}
		st.byName[rec.Name] = n
		for _, o := range st.nodes { // names are policy selectors
			if o.sess != nil {
				o.sess.mark(func(pd *pending) { pd.recompute = true }, now)
			}
		}
	}
	routesMoved := !slices.Equal(old.AdvertisedRoutes, rec.AdvertisedRoutes) || !slices.Equal(old.ApprovedRoutes, rec.ApprovedRoutes)
	if old.LastSeen.After(rec.LastSeen) {
		rec.LastSeen = old.LastSeen
	}
	n.rec = rec
	if dk, err := key.ParseDiscoPublic(rec.DiscoKey); err == nil {
		n.discoKey = dk
	}
	if routesMoved && !n.expired(now) && !n.expiredSent {
		// Reindexes and tells old and new viewers, and n itself.
		st.routesChangedLocked(n, now)
		return
	}
	if !visible {
		return
	}
	if reindex || routesMoved {
		st.unindexLocked(n)
		st.indexLocked(n)
	}
	switch expired := n.expired(now); {
	case expired && !n.expiredSent:
		st.removedLocked(n, now)
		n.expiredSent = true
		n.wire.Store(nil)
		if n.sess != nil {
			n.sess.cancel()
		}
	case expired:
		n.wire.Store(nil)
	case n.expiredSent:
		n.expiredSent = false // renewed elsewhere
		st.changedLocked(n, now, true)
	default:
		st.changedLocked(n, now, reindex)
	}
}

// dropNodeLocal removes n from memory (deleted in the store) and tells its
// peers; the caller holds n.writeMu.
func (srv *Server) dropNodeLocal(n *nodeState) {
	now := srv.now()
	st := srv.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.nodes[n.id] != n {
		return
	}
	if !n.expiredSent {
		st.removedLocked(n, now)
	}
	st.removeLocked(n)
	if n.sess != nil {
		n.sess.cancel()
	}
}

// syncPolicy installs text if it differs from the policy in force. Its
// tests passed on the replica that stored it.
func (srv *Server) syncPolicy(text string) {
	srv.policyMu.Lock()
	defer srv.policyMu.Unlock()
	if text == srv.Policy() {
		return
	}
	p := policy.AllowAll()
	if text != "" {
		var err error
		if p, err = policy.Parse([]byte(text)); err != nil {
			srv.log.Error("policy stored by another replica does not parse here; keeping the old one", "err", err)
			return
		}
	}
	srv.installPolicy(p)
}

// remoteOnline records that nodes ids opened or closed their streams on
// replica origin.
func (srv *Server) remoteOnline(origin string, ids []int64, on bool) {
	now := srv.now()
	seen := time.Now()
	st := srv.st
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, id := range ids {
		n := st.nodes[netmap.NodeID(id)]
		if n == nil {
			continue
		}
		was := n.online()
		switch {
		case on:
			n.remote, n.remoteSeen = origin, seen
		case n.remote == origin:
			// Only the replica it streamed from takes it offline: a node
			// that moved on is online elsewhere.
			n.remote = ""
			n.rec.LastSeen = now
		}
		if was != n.online() && !n.expired(now) {
			st.onlineChangedLocked(n, now)
		}
	}
}
