package meshnode

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/netmap"
)

// Coordinator reconnect backoff: quick at first (a coordinator restart is
// routine), capped so a long outage costs one request every 30 s per node.
const (
	coordBackoffMin = 250 * time.Millisecond
	coordBackoffMax = 30 * time.Second
)

// ErrNeedAuthKey is returned when the node has never registered and no
// --authkey was given.
var ErrNeedAuthKey = errors.New("this node is not registered yet: pass --authkey")

// controlLoop keeps the node registered and its netmap stream open until
// ctx ends. The mesh keeps working from the last map while the coordinator
// is unreachable.
func (n *Node) controlLoop(ctx context.Context) {
	backoff := coordBackoffMin
	for ctx.Err() == nil {
		start := time.Now()
		err := n.controlOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		n.mu.Lock()
		n.mu.coordUp = false
		if err != nil {
			n.mu.coordErr = err.Error()
		}
		n.mu.Unlock()
		n.metrics.coordConnected.Set(0)
		if errors.Is(err, ErrNeedAuthKey) || coordclient.IsUnauthorized(err) {
			n.log.Error("coordinator refused this node", "err", err)
		} else {
			n.log.Warn("coordinator stream ended", "err", err)
		}
		if time.Since(start) > time.Minute {
			backoff = coordBackoffMin // it had been working
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, coordBackoffMax)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (n *Node) controlOnce(ctx context.Context) error {
	ctl, err := n.state.loadControl()
	if err != nil {
		return err
	}
	url := n.cfg.Coordinator
	if url == "" {
		url = ctl.URL
	}
	if url == "" {
		return errors.New("no --coordinator URL given and none remembered")
	}
	pin := ctl.Pin
	if n.cfg.AuthKey != "" {
		_, p, err := netmap.ParseAuthKey(n.cfg.AuthKey)
		if err != nil {
			return err
		}
		if pin == "" || !ctl.Registered {
			pin = p
		}
	}
	if pin == "" {
		return ErrNeedAuthKey
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	c, err := coordclient.Dial(dctx, url, pin, n.priv)
	cancel()
	if err != nil {
		return fmt.Errorf("reach coordinator: %w", err)
	}
	if !ctl.Registered {
		if n.cfg.AuthKey == "" {
			return ErrNeedAuthKey
		}
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		resp, err := c.Register(rctx, n.cfg.AuthKey, n.paths.DiscoKey(), n.cfg.Hostname, runtime.GOOS)
		cancel()
		if err != nil {
			return fmt.Errorf("register: %w", err)
		}
		n.log.Info("registered", "name", resp.Node.Name, "addresses", resp.Node.Addresses)
		ctl = control{URL: url, Pin: pin, Registered: true}
		if err := n.state.saveControl(ctl); err != nil {
			return err
		}
	} else if ctl.URL != url {
		ctl.URL = url
		n.state.saveControl(ctl)
	}
	home := n.relays.Home().Region
	mr := netmap.MapRequest{DiscoKey: n.paths.DiscoKey(), HomeRelay: home}
	first := true
	return c.Watch(ctx, mr, func(nm *netmap.NetworkMap, m *netmap.MapResponse) error {
		if m.KeepAlive {
			return nil
		}
		if first {
			first = false
			n.mu.Lock()
			n.mu.coordUp, n.mu.coordErr = true, ""
			n.mu.Unlock()
			n.metrics.coordConnected.Set(1)
			n.log.Info("coordinator connected", "peers", len(nm.Peers))
		}
		// Apply a copy: the map keeps changing under Watch.
		return n.applyNetmap(cloneNetmap(nm), true)
	})
}

// reportHome tells the coordinator our home region, retrying while the
// control connection is down.
func (n *Node) reportHome(ctx context.Context, region string) {
	for try := 0; try < 10 && ctx.Err() == nil; try++ {
		err := n.update(ctx, netmap.UpdateRequest{HomeRelay: &region})
		if err == nil {
			return
		}
		n.log.Debug("reporting home relay failed", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(try+1) * time.Second):
		}
	}
}

// update sends an UpdateRequest on a fresh client.
func (n *Node) update(ctx context.Context, u netmap.UpdateRequest) error {
	ctl, err := n.state.loadControl()
	if err != nil || !ctl.Registered {
		return errors.New("not registered")
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := coordclient.Dial(cctx, ctl.URL, ctl.Pin, n.priv)
	if err != nil {
		return err
	}
	return c.Update(cctx, u)
}

func cloneNetmap(nm *netmap.NetworkMap) *netmap.NetworkMap {
	c := *nm
	c.Peers = make(map[netmap.NodeID]netmap.Node, len(nm.Peers))
	for id, p := range nm.Peers {
		c.Peers[id] = p
	}
	return &c
}
