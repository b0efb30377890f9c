package meshnode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/wiremesh/wiremesh/backoff"
	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/meshnode/reporter"
	"github.com/wiremesh/wiremesh/meshnode/router"
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
	bo := backoff.Backoff{Min: coordBackoffMin, Max: coordBackoffMax}
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
		if time.Since(start) > time.Minute {
			bo.Reset() // it had been working
		}
		wait, why := controlRetry(err, &bo)
		if why != "" {
			n.log.Error(why, "err", err, "retry_in", wait)
		} else {
			n.log.Warn("coordinator stream ended", "err", err, "retry_in", wait)
		}
		if !backoff.Sleep(ctx, wait) {
			return
		}
	}
}

// controlRetry says how long to wait after the control connection ended
// with err, and why in words when the coordinator refused this node: a
// deleted or expired node is asked about again only every few minutes (it
// cannot come back on its own), a refused one at the usual backoff.
func controlRetry(err error, bo *backoff.Backoff) (time.Duration, string) {
	switch {
	case errors.Is(err, coordclient.ErrNodeUnknown):
		return reporter.GoneBackoff, "the coordinator does not know this node (deleted?); register it again with a new --authkey"
	case errors.Is(err, coordclient.ErrNodeExpired):
		return reporter.GoneBackoff, "this node's key has expired; re-authenticate it on the coordinator"
	case errors.Is(err, ErrNeedAuthKey), coordclient.IsUnauthorized(err):
		return bo.Next(), "coordinator refused this node"
	}
	return bo.Next(), ""
}

// controlOnce connects (registering on the first run) and follows one
// netmap stream until it ends.
func (n *Node) controlOnce(ctx context.Context) error {
	c, err := n.connect(ctx)
	if err != nil {
		return err
	}
	return n.follow(ctx, c)
}

// connect dials the coordinator and registers this node if it never has;
// the client it returns is also the one reports ride.
func (n *Node) connect(ctx context.Context) (*coordclient.Client, error) {
	ctl, err := n.state.loadControl()
	if err != nil {
		return nil, err
	}
	url := n.cfg.Coordinator
	if url == "" {
		url = ctl.URL
	}
	if url == "" {
		return nil, errors.New("no --coordinator URL given and none remembered")
	}
	pin := ctl.Pin
	if n.cfg.AuthKey != "" {
		_, p, err := netmap.ParseAuthKey(n.cfg.AuthKey)
		if err != nil {
			return nil, err
		}
		if pin == "" || !ctl.Registered {
			pin = p
		}
	}
	if pin == "" && !ctl.Registered {
		// Interactive login: the operator's pin, or none (system CA roots).
		pin = n.cfg.CoordinatorPin
	} else if pin == "" {
		return nil, ErrNeedAuthKey
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	c, err := coordclient.DialWith(dctx, url, pin, n.priv, n.coordOptions())
	cancel()
	if err != nil {
		return nil, fmt.Errorf("reach coordinator: %w", err)
	}
	n.mu.Lock()
	n.mu.coord = c // reports ride this client too
	n.mu.Unlock()
	if !ctl.Registered {
		authKey := n.cfg.AuthKey
		if authKey == "" {
			if authKey, err = n.interactiveLogin(ctx, c); err != nil {
				return nil, err
			}
			if _, p, err := netmap.ParseAuthKey(authKey); err == nil {
				pin = p // the coordinator's own pin, from now on
			}
		}
		rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		resp, err := c.Register(rctx, authKey, n.paths.DiscoKey(), n.cfg.Hostname, runtime.GOOS)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("register: %w", err)
		}
		n.log.Info("registered", "name", resp.Node.Name, "addresses", resp.Node.Addresses)
		ctl = control{URL: url, Pin: pin, Registered: true}
		if err := n.state.saveControl(ctl); err != nil {
			return nil, err
		}
	} else if ctl.URL != url {
		ctl.URL = url
		n.state.saveControl(ctl)
	}
	return c, nil
}

// follow reads one netmap stream and applies its frames until it ends.
func (n *Node) follow(ctx context.Context, c *coordclient.Client) error {
	home := n.relays.Home().Region
	mr := netmap.MapRequest{DiscoKey: n.paths.DiscoKey(), HomeRelay: home}
	stream, err := c.OpenStream(ctx, mr)
	if err != nil {
		return err
	}
	defer stream.Close()
	for first := true; ; {
		m, err := stream.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if m.KeepAlive {
			continue
		}
		if first {
			// Every stream starts with a full map; the node's map (maybe
			// the cache) is replaced by it, then follows its deltas.
			if !m.Full {
				return fmt.Errorf("map stream: %w", netmap.ErrNoFullMap)
			}
			first = false
			n.mu.Lock()
			n.mu.coordUp, n.mu.coordErr = true, ""
			n.mu.Unlock()
			n.metrics.coordConnected.Set(1)
			n.log.Info("coordinator connected", "peers", len(m.Peers))
		}
		if err := n.applyFrame(m); err != nil {
			return err
		}
	}
}

// coordClient returns the node's long-lived coordinator client, dialing
// one if the control loop has none yet. Reports ride it.
func (n *Node) coordClient(ctx context.Context) (reporter.Updater, error) {
	n.mu.Lock()
	c := n.mu.coord
	n.mu.Unlock()
	if c != nil {
		return c, nil
	}
	ctl, err := n.state.loadControl()
	if err != nil || !ctl.Registered {
		return nil, errors.New("not registered")
	}
	c, err = coordclient.DialWith(ctx, ctl.URL, ctl.Pin, n.priv, n.coordOptions())
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	if n.mu.coord == nil {
		n.mu.coord = c
	}
	c = n.mu.coord
	n.mu.Unlock()
	return c, nil
}

// coordOptions marks the coordinator's sockets when the node's routing
// table could otherwise pull them into the tunnel.
func (n *Node) coordOptions() coordclient.Options {
	if n.cfg.markSockets() {
		return coordclient.Options{Control: router.Control}
	}
	return coordclient.Options{}
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
