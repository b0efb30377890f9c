package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// Server limits for clients of the resolver (local programs, the OS stub).
const (
	// tcpIdleTimeout closes a client's TCP connection after it is idle
	// this long; stubs send one or two queries per connection.
	tcpIdleTimeout = 8 * time.Second
	// tcpReadTimeout bounds reading one query on a TCP connection.
	tcpReadTimeout = 2 * time.Second
)

// Serve answers DNS on pc (UDP) and ln (TCP) until ctx ends; either may be
// nil. It returns after both servers have stopped. The caller makes the
// sockets: net.ListenPacket/net.Listen on 100.100.100.100:53 in kernel TUN
// mode, the netstack's in userspace mode.
func (r *Resolver) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	var servers []*mdns.Server
	if pc != nil {
		servers = append(servers, &mdns.Server{PacketConn: pc, Handler: r, UDPSize: maxUDPSize})
	}
	if ln != nil {
		servers = append(servers, &mdns.Server{Listener: ln, Handler: r,
			ReadTimeout: tcpReadTimeout, IdleTimeout: func() time.Duration { return tcpIdleTimeout }})
	}
	if len(servers) == 0 {
		return errors.New("dns: nothing to serve on")
	}
	errc := make(chan error, len(servers))
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() {
			defer wg.Done()
			errc <- s.ActivateAndServe()
		}()
		select {
		case <-started:
		case err := <-errc:
			for _, o := range servers {
				o.Shutdown()
			}
			wg.Wait()
			return fmt.Errorf("dns: serve: %w", err)
		}
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("dns: serve: %w", err)
	}
	for _, s := range servers {
		s.ShutdownContext(context.Background())
	}
	wg.Wait()
	return err
}

// ListenAndServe listens on addr (UDP and TCP) and serves until ctx ends.
func (r *Resolver) ListenAndServe(ctx context.Context, addr string) error {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return fmt.Errorf("dns: listen udp %s: %w", addr, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		return fmt.Errorf("dns: listen tcp %s: %w", addr, err)
	}
	return r.Serve(ctx, pc, ln)
}
