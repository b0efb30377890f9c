package meshnode

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/wiremesh/wiremesh/meshnode/filter"
	"github.com/wiremesh/wiremesh/meshnode/netstack"
	"github.com/wiremesh/wiremesh/meshnode/socks5"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// engine is the data plane: a wireguard-go device over the bind, with a
// kernel TUN device or a userspace netstack behind the packet filter.
type engine struct {
	dev   *device.Device
	tun   tun.Device
	stack *netstack.Stack // userspace mode only
}

func (n *Node) newEngine(self netip.Addr) (*engine, error) {
	e := &engine{}
	if n.cfg.Userspace {
		st, err := netstack.New(self, MTU)
		if err != nil {
			return nil, err
		}
		e.stack, e.tun = st, st
	} else {
		t, err := createTUN(n.cfg.TUN, self, MTU)
		if err != nil {
			return nil, err
		}
		e.tun = t
	}
	wrapped := filter.Wrap(e.tun, n.filter, func(v filter.Verdict) {
		n.metrics.filterDrops.WithLabelValues(v.String()).Inc()
	})
	e.dev = device.NewDevice(wrapped, n.bind, wgLogger(n.log))
	cfg := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", n.priv.UAPI(), n.cfg.Port)
	if err := e.dev.IpcSet(cfg); err != nil {
		e.dev.Close()
		return nil, fmt.Errorf("configure wireguard: %w", err)
	}
	if err := e.dev.Up(); err != nil {
		e.dev.Close()
		return nil, fmt.Errorf("wireguard up: %w", err)
	}
	if e.stack != nil {
		n.startUserspace(e.stack)
	}
	return e, nil
}

func (e *engine) close() { e.dev.Close() }

// wgLogger routes wireguard-go's logs to slog at debug level: they are per
// handshake and far too chatty for info.
func wgLogger(log *slog.Logger) *device.Logger {
	l := log.With("component", "wireguard")
	return &device.Logger{
		Verbosef: func(format string, args ...any) { l.Debug(fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { l.Debug(fmt.Sprintf(format, args...)) },
	}
}

// startUserspace runs the SOCKS5 proxy for outbound traffic and forwards
// inbound mesh TCP connections to the same port on ForwardHost.
func (n *Node) startUserspace(st *netstack.Stack) {
	st.ForwardTCP(func(c net.Conn, port uint16) bool {
		n.goAsync(func(ctx context.Context) {
			defer c.Close()
			var d net.Dialer
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			local, err := d.DialContext(dctx, "tcp", net.JoinHostPort(n.cfg.ForwardHost, strconv.Itoa(int(port))))
			cancel()
			if err != nil {
				n.log.Debug("inbound forward: nothing listening", "port", port, "err", err)
				return
			}
			defer local.Close()
			stop := context.AfterFunc(ctx, func() { c.Close(); local.Close() })
			defer stop()
			done := make(chan struct{})
			go func() { io.Copy(local, c); local.(*net.TCPConn).CloseWrite(); close(done) }()
			io.Copy(c, local)
			c.Close()
			<-done
		})
		return true
	})
	if n.cfg.Socks5 == "" {
		return
	}
	ln, err := net.Listen("tcp", n.cfg.Socks5)
	if err != nil {
		n.log.Error("socks5 listen failed", "addr", n.cfg.Socks5, "err", err)
		return
	}
	n.log.Info("socks5 proxy", "addr", ln.Addr().String())
	srv := &socks5.Server{Dial: st.DialContext, Resolve: n.resolveName, Log: n.log}
	n.goAsync(func(ctx context.Context) { srv.Serve(ctx, ln) })
}

// resolveName maps a peer name (or name.domain) to its mesh address.
func (n *Node) resolveName(name string) (netip.Addr, bool) {
	n.mu.Lock()
	domain := ""
	if n.mu.nm != nil {
		domain = n.mu.nm.DNS.Domain
	}
	n.mu.Unlock()
	if domain != "" && len(name) > len(domain)+1 && name[len(name)-len(domain)-1:] == "."+domain {
		name = name[:len(name)-len(domain)-1]
	}
	p, ok := n.peerByNameOrIP(name)
	if !ok {
		return netip.Addr{}, false
	}
	a, ok := selfAddr(p)
	return a, ok
}
