package meshnode

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
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

// ErrNeedAuthKey is returned when a registered node has no pin for its
// coordinator (a damaged state directory).
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
		if errors.Is(err, coordclient.ErrLoginExpired) {
			n.log.Error("interactive login expired without approval; start again for a new link", "err", err)
			n.fatal <- fmt.Errorf("interactive login: %w", err)
			return
		}
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
	if pin == "" && !ctl.Registered {
		// Interactive login: the operator's pin, or none (system CA roots).
		pin = n.cfg.CoordinatorPin
	} else if pin == "" {
		return ErrNeedAuthKey
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	c, err := coordclient.Dial(dctx, url, pin, n.priv)
	cancel()
	if err != nil {
		return fmt.Errorf("reach coordinator: %w", err)
	}
	if !ctl.Registered {
		authKey := n.cfg.AuthKey
		if authKey == "" {
			if authKey, err = n.interactiveLogin(ctx, c); err != nil {
				return err
			}
			if _, p, err := netmap.ParseAuthKey(authKey); err == nil {
				pin = p // the coordinator's own pin, from now on
			}
		}
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		resp, err := c.Register(rctx, authKey, n.disco.pub, n.cfg.Hostname, runtime.GOOS)
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
	n.mu.Lock()
	home := n.mu.home.Region
	n.mu.Unlock()
	mr := netmap.MapRequest{DiscoKey: n.disco.pub, HomeRelay: home}
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

// interactiveLogin gets a login URL (reusing the one in progress while it
// is valid), prints it, and waits for a console user to approve it. It
// returns the single-use auth key the approval carries, or an error
// matching coordclient.ErrLoginExpired.
func (n *Node) interactiveLogin(ctx context.Context, c *coordclient.Client) (string, error) {
	if n.login == nil || !time.Now().Before(n.login.Expires) {
		lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		l, err := c.Login(lctx, n.cfg.Hostname, runtime.GOOS)
		cancel()
		if err != nil {
			return "", fmt.Errorf("start interactive login: %w", err)
		}
		n.login = l
		out := n.cfg.LoginOut
		if out == nil {
			out = os.Stderr
		}
		fmt.Fprintf(out, "\nTo authenticate, visit: %s\n\n", l.URL)
		n.log.Info("waiting for the login to be approved", "url", l.URL, "expires", l.Expires.UTC().Format(time.RFC3339))
	}
	authKey, user, err := c.LoginWait(ctx, n.login.Code, n.priv)
	if err != nil {
		return "", fmt.Errorf("wait for login approval: %w", err)
	}
	n.log.Info("login approved", "user", user)
	n.login = nil
	return authKey, nil
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
