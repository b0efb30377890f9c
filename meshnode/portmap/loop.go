package portmap

import (
	"context"
	"net/netip"
	"time"
)

// proto is one port-mapping protocol spoken to one gateway. Its methods are
// called from the client's goroutine only, except probe, which runs
// concurrently with the other protocols' probes.
type proto interface {
	kind() Kind
	// probe asks whether the gateway speaks the protocol.
	probe(ctx context.Context) (status, error)
	// mapPort creates or renews the mapping of the node's port, asking
	// for prev's external port when it is valid.
	mapPort(ctx context.Context, prev netip.AddrPort) (mapping, error)
	// check asks whether the gateway still holds m (or its epoch).
	check(ctx context.Context, m mapping) (status, error)
	// unmap deletes m.
	unmap(ctx context.Context, m mapping) error
}

// status is what a probe or check learns.
type status struct {
	// epoch is the gateway's seconds since it started (NAT-PMP, PCP);
	// hasEpoch is false for UPnP.
	epoch    uint32
	hasEpoch bool
}

// mapping is a mapping the gateway granted.
type mapping struct {
	external netip.AddrPort
	lifetime time.Duration
	st       status
}

// active is the mapping the client holds and what it knows of the gateway.
type active struct {
	p         proto
	gw        netip.Addr
	m         mapping
	mappedAt  time.Time // when m was granted or last renewed
	epoch     uint32    // last epoch seen, at epochAt
	epochAt   time.Time
	haveEpoch bool
}

// renewAt is when a mapping of lifetime granted at t is renewed: at half its
// life (RFC 6886 §3.3 suggests the same), but never in a tight loop.
func renewAt(t time.Time, lifetime time.Duration) time.Time {
	d := lifetime / 2
	if d < minRenew {
		d = minRenew
	}
	return t.Add(d)
}

// run is the client's goroutine: establish a mapping, hold it, and delete it
// when ctx is done.
func (c *Client) run(ctx context.Context) {
	defer close(c.done)
	var cur *active
	defer func() {
		if cur != nil {
			c.release(cur)
		}
	}()
	for {
		if cur == nil {
			cur = c.establish(ctx)
			if cur == nil {
				if ok, _ := c.sleep(ctx, c.cfg.RetryInterval); !ok {
					return
				}
				continue
			}
		}
		now := c.cfg.Now()
		renew := renewAt(cur.mappedAt, cur.m.lifetime)
		wait := c.cfg.CheckInterval
		if d := renew.Sub(now); d < wait {
			wait = d
		}
		ok, announced := c.sleep(ctx, wait)
		if !ok {
			return
		}
		if !announced && !c.cfg.Now().Before(renew) {
			cur = c.renew(ctx, cur)
		} else {
			cur = c.check(ctx, cur)
		}
	}
}

// sleep waits d, or less when the gateway announces itself (announced),
// and returns ok false when ctx is done first.
func (c *Client) sleep(ctx context.Context, d time.Duration) (ok, announced bool) {
	if d <= 0 {
		return ctx.Err() == nil, false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false, false
	case <-c.announced:
		return true, true
	case <-t.C:
		return true, false
	}
}

// establish discovers the gateway, probes every protocol at once and maps
// the port with the most preferred one that answered. It returns nil when
// none did.
func (c *Client) establish(ctx context.Context) *active {
	gw, self, err := c.cfg.Gateway()
	if err != nil {
		c.log.Debug("no gateway", "err", err)
		return nil
	}
	c.gateway.Store(&gw)
	protos := c.cfg.newProtos(gw, self, &c.cfg)
	if len(protos) == 0 {
		return nil
	}
	pr := c.probe(ctx, protos)
	defer pr.cancel()
	tried := make([]bool, len(protos))
	for {
		i := pr.best(tried)
		if i < 0 {
			return nil
		}
		tried[i] = true
		p := protos[i]
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		m, err := p.mapPort(rctx, netip.AddrPort{})
		cancel()
		if err != nil {
			c.log.Info("port mapping refused", "kind", p.kind(), "gateway", gw, "err", err)
			continue
		}
		now := c.cfg.Now()
		a := &active{p: p, gw: gw, m: m, mappedAt: now}
		a.noteEpoch(m.st, now)
		if !a.haveEpoch && pr.found[i].st.hasEpoch {
			a.noteEpoch(pr.found[i].st, now)
		}
		c.cfg.Metrics.mapped(p.kind())
		c.log.Info("port mapped", "kind", p.kind(), "gateway", gw, "external", m.external, "lifetime", m.lifetime)
		c.set(m.external, p.kind())
		return a
	}
}

// probeResult is one protocol's answer to a probe.
type probeResult struct {
	i  int
	ok bool
	st status
}

// prober collects the answers of one probe round.
type prober struct {
	results chan probeResult
	found   []probeResult
	done    []bool
	pending int
	cancel  context.CancelFunc
}

// probe starts every protocol's probe at once, each on its own goroutine,
// bounded by probeTimeout. Stragglers finish on their own and Close waits
// for them.
func (c *Client) probe(ctx context.Context, protos []proto) *prober {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	pr := &prober{
		results: make(chan probeResult, len(protos)), // never blocks a prober
		found:   make([]probeResult, len(protos)),
		done:    make([]bool, len(protos)),
		pending: len(protos),
		cancel:  cancel,
	}
	for i, p := range protos {
		c.probes.Add(1)
		go func() {
			defer c.probes.Done()
			st, err := p.probe(pctx)
			if err != nil {
				c.log.Debug("probe failed", "kind", p.kind(), "err", err)
			}
			pr.results <- probeResult{i: i, ok: err == nil, st: st}
		}()
	}
	return pr
}

// best returns the most preferred protocol not yet tried that answered its
// probe, waiting only as long as a more preferred one is still out; -1 when
// none is left. Protocols are in order of preference.
func (pr *prober) best(tried []bool) int {
	for {
		wait := false
		for i := range pr.found {
			if tried[i] {
				continue
			}
			if !pr.done[i] {
				wait = true
				break
			}
			if pr.found[i].ok {
				return i
			}
		}
		if !wait || pr.pending == 0 {
			return -1
		}
		r := <-pr.results
		pr.found[r.i], pr.done[r.i] = r, true
		pr.pending--
	}
}

// renew renews cur's mapping. On failure the mapping is dropped and the
// client starts over.
func (c *Client) renew(ctx context.Context, cur *active) *active {
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	m, err := cur.p.mapPort(rctx, cur.m.external)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return cur // closing: run releases it
		}
		c.cfg.Metrics.renewal(cur.p.kind(), false)
		c.log.Info("port mapping renewal failed", "kind", cur.p.kind(), "err", err)
		c.drop()
		return nil
	}
	c.cfg.Metrics.renewal(cur.p.kind(), true)
	now := c.cfg.Now()
	moved := m.external != cur.m.external
	restarted := !cur.epochOK(m.st, now)
	cur.m, cur.mappedAt = m, now
	cur.noteEpoch(m.st, now)
	if restarted {
		c.cfg.Metrics.restart(cur.p.kind())
		c.log.Info("gateway restarted; mapping renewed", "kind", cur.p.kind())
	}
	if moved || restarted {
		c.log.Info("port mapped", "kind", cur.p.kind(), "external", m.external, "lifetime", m.lifetime)
		c.set(m.external, cur.p.kind())
	}
	return cur
}

// check asks the gateway whether it restarted (or moved) and maps again
// when it did.
func (c *Client) check(ctx context.Context, cur *active) *active {
	if gw, _, err := c.cfg.Gateway(); err != nil || gw != cur.gw {
		c.log.Info("gateway changed", "old", cur.gw, "new", gw, "err", err)
		c.release(cur)
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, requestTimeout)
	st, err := cur.p.check(rctx, cur.m)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return cur
		}
		// UPnP has no epoch: a mapping the gateway no longer has, or a
		// control URL that no longer answers, is how a restart shows.
		c.log.Info("port mapping check failed", "kind", cur.p.kind(), "err", err)
		c.drop()
		return nil
	}
	now := c.cfg.Now()
	c.log.Debug("port mapping checked", "kind", cur.p.kind(), "epoch", st.epoch, "has_epoch", st.hasEpoch)
	if cur.epochOK(st, now) {
		cur.noteEpoch(st, now)
		return cur
	}
	c.cfg.Metrics.restart(cur.p.kind())
	c.log.Info("gateway restarted; mapping again", "kind", cur.p.kind(), "epoch", st.epoch, "last", cur.epoch)
	rctx, cancel = context.WithTimeout(ctx, requestTimeout)
	m, err := cur.p.mapPort(rctx, cur.m.external)
	cancel()
	if err != nil {
		c.log.Info("mapping again failed", "kind", cur.p.kind(), "err", err)
		c.drop()
		return nil
	}
	now = c.cfg.Now()
	cur.m, cur.mappedAt, cur.haveEpoch = m, now, false
	cur.noteEpoch(m.st, now)
	if !cur.haveEpoch {
		cur.noteEpoch(st, now)
	}
	c.cfg.Metrics.mapped(cur.p.kind())
	c.log.Info("port mapped", "kind", cur.p.kind(), "external", m.external, "lifetime", m.lifetime)
	c.set(m.external, cur.p.kind())
	return cur
}

// drop forgets a mapping the gateway no longer honours and tells the
// consumer.
func (c *Client) drop() { c.set(netip.AddrPort{}, KindNone) }

// release deletes cur's mapping at the gateway, with a fresh bounded context
// because it also runs after the client's context is done.
func (c *Client) release(cur *active) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if err := cur.p.unmap(ctx, cur.m); err != nil {
		c.log.Info("port mapping delete failed", "kind", cur.p.kind(), "err", err)
	} else {
		c.log.Info("port mapping deleted", "kind", cur.p.kind(), "external", cur.m.external)
	}
	c.set(netip.AddrPort{}, KindNone)
}

// noteEpoch records the gateway's epoch seen at now.
func (a *active) noteEpoch(st status, now time.Time) {
	if st.hasEpoch {
		a.epoch, a.epochAt, a.haveEpoch = st.epoch, now, true
	}
}

// epochOK reports whether st's epoch is consistent with the last one seen.
func (a *active) epochOK(st status, now time.Time) bool {
	if !st.hasEpoch || !a.haveEpoch {
		return true
	}
	return epochValid(a.epoch, a.epochAt, st.epoch, now)
}
