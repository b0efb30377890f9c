package netstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Inbound forwarding for `meshnode run --userspace`.
//
// A userspace node has no kernel interface for peers to reach, so the only
// services they can reach are the ones the node forwards to. A port is
// forwarded only when the operator listed it (--forward-ports); the node's
// own listeners (SOCKS5, metrics, pprof, ...) are never forwarded, even when
// listed, because they trust localhost: forwarding them would let any peer
// the policy admits use them, and the SOCKS5 proxy would let it reach
// whatever this node may reach (issue: a->c and c->b allowed, a reaches b
// through c's proxy). Everything else is refused with a reset at the SYN.

// forwardDialTimeout bounds connecting to the local service; a service that
// does not answer on loopback within it is not there.
const forwardDialTimeout = 5 * time.Second

// maxForwarded bounds concurrent forwarded connections, so peers cannot
// exhaust the node's file descriptors through it.
const maxForwarded = 1024

// PortRange is an inclusive range of TCP ports.
type PortRange struct{ First, Last uint16 }

// PortSet is a set of TCP ports. The zero value is empty.
type PortSet struct{ ranges []PortRange }

// ErrBadPorts is wrapped by ParsePorts errors.
var ErrBadPorts = errors.New("bad port list")

// ParsePorts parses port specs such as "22", "80" and "8000-8100" (each
// element may itself be a comma-separated list). Port 0 is not a port.
func ParsePorts(specs []string) (PortSet, error) {
	var s PortSet
	for _, spec := range specs {
		for _, f := range strings.Split(spec, ",") {
			f = strings.TrimSpace(f)
			if f == "" {
				continue
			}
			lo, hi, isRange := strings.Cut(f, "-")
			first, err1 := strconv.ParseUint(lo, 10, 16)
			last, err2 := first, error(nil)
			if isRange {
				last, err2 = strconv.ParseUint(hi, 10, 16)
			}
			if err1 != nil || err2 != nil || first == 0 || last < first {
				return PortSet{}, fmt.Errorf("%w: %q is not a port (1-65535) or a range FIRST-LAST", ErrBadPorts, f)
			}
			s.ranges = append(s.ranges, PortRange{uint16(first), uint16(last)})
		}
	}
	return s, nil
}

// Contains reports whether p is in the set.
func (s PortSet) Contains(p uint16) bool {
	for _, r := range s.ranges {
		if r.First <= p && p <= r.Last {
			return true
		}
	}
	return false
}

// Empty reports whether the set has no port.
func (s PortSet) Empty() bool { return len(s.ranges) == 0 }

// String returns the set in ParsePorts' syntax.
func (s PortSet) String() string {
	parts := make([]string, len(s.ranges))
	for i, r := range s.ranges {
		parts[i] = strconv.Itoa(int(r.First))
		if r.Last != r.First {
			parts[i] += "-" + strconv.Itoa(int(r.Last))
		}
	}
	return strings.Join(parts, ",")
}

// Forwarder splices inbound mesh TCP connections to local services.
type Forwarder struct {
	// Host is where connections go, on the port they were made to
	// (127.0.0.1 in meshnode).
	Host string
	// Ports are the ports the operator asked to forward.
	Ports PortSet
	// Never are ports that are never forwarded, whatever Ports says: the
	// node's own listeners.
	Never []uint16
	Log   *slog.Logger

	mu     sync.Mutex
	active int
}

// Allowed reports whether connections to port are forwarded.
func (f *Forwarder) Allowed(port uint16) bool {
	return f.Ports.Contains(port) && !slices.Contains(f.Never, port)
}

// Handle splices c (a connection made to port) to Host:port until either
// side ends or ctx is done, then closes c. It refuses (closes c at once) a
// port that is not Allowed, and connections past maxForwarded.
func (f *Forwarder) Handle(ctx context.Context, c net.Conn, port uint16) {
	defer c.Close()
	log := f.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !f.Allowed(port) {
		log.Debug("inbound forward refused: port not forwarded", "port", port)
		return
	}
	f.mu.Lock()
	if f.active >= maxForwarded {
		f.mu.Unlock()
		log.Debug("inbound forward refused: too many connections", "port", port)
		return
	}
	f.active++
	f.mu.Unlock()
	defer func() { f.mu.Lock(); f.active--; f.mu.Unlock() }()

	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, forwardDialTimeout)
	local, err := d.DialContext(dctx, "tcp", net.JoinHostPort(f.Host, strconv.Itoa(int(port))))
	cancel()
	if err != nil {
		log.Debug("inbound forward: nothing listening", "port", port, "err", err)
		return
	}
	defer local.Close()
	stop := context.AfterFunc(ctx, func() { c.Close(); local.Close() })
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(local, c)
		if tc, ok := local.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	io.Copy(c, local)
	c.Close()
	<-done
}
