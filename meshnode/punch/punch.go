// Package punch finds a direct UDP path between an "easy" NAT (one mapping
// per inside socket, whatever the destination) and a "hard" one (a new
// random port per destination), where plain hole punching fails because the
// hard side's port towards the peer cannot be learned in advance. It runs a
// bounded birthday search:
//
//	hard side  opens N sockets and sends one packet from each to the easy
//	           side's public ip:port; its NAT gives each a random public
//	           port and now accepts the easy side's packets on those N ports
//	easy side  sends probes from its one socket to M distinct random ports of
//	           the hard side's public address, paced at Rate per second
//
// A probe that lands on one of the N ports reaches the hard side; its answer
// goes back through the easy side's mapping, which the probe just opened.
// With ports drawn from the 64512 above 1023 the chance that M probes miss
// all N ports is (1 - N/64512)^M: 256 × 256 finds a pair 64% of the time
// (Tailscale's NAT traversal write-up), 256 × 1024 98%, the defaults
// 256 × 2048 99.97%.
//
// The package does not know disco: a Verifier callback decides whether a
// datagram proves the path (a valid ping or pong from the peer) and what to
// answer, so sealing stays with the path state machine. Both searches stop
// at the first verified datagram, are bounded in packets and in time, and
// the hard side closes every socket but the one that won. Who plays which
// side, and when, is the caller's to coordinate (through the relay).
package punch

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Budgets. They bound a search whether it succeeds or not.
const (
	// DefaultSockets is N, the hard side's sockets (and packets).
	DefaultSockets = 256
	// MaxSockets caps N: each socket is a file descriptor and a NAT
	// mapping on the hard side's router.
	MaxSockets = 1024
	// DefaultProbes is M, the easy side's probes: with N = 256 the search
	// finds a pair 99.97% of the time (with 1024, 98%: one easy–hard pair
	// in 60 stayed relayed until the next attempt, 30 s later). A search
	// stops at its first answer, so a hit costs the same either way (174
	// probes at the median); only a miss sends all of them.
	DefaultProbes = 2048
	// MaxProbes caps M.
	MaxProbes = 4096
	// DefaultRate is the easy side's probes per second: 2048 probes take
	// 4.1 s, and at this pace (about 30 kB/s) the hard side's NAT and ours
	// see a small, steady flow rather than a burst.
	DefaultRate = 500
	// MaxRate caps the pace.
	MaxRate = 1000
	// DefaultHardInterval spaces the hard side's sends: 256 sockets take
	// 256 ms.
	DefaultHardInterval = time.Millisecond
	// DefaultTimeout bounds either side's search: DefaultProbes at
	// DefaultRate take 4.1 s, plus room for a slowed pace on a loaded
	// host and the last answer's round trip.
	DefaultTimeout = 8 * time.Second
	// minPort is the lowest port a Linux NAT gives a mapping of a port
	// >= 1024 (nf_nat picks in 1024-65535), so probes start there.
	minPort = 1024
	// maxDatagram bounds what is read from a socket during the search.
	maxDatagram = 1500
)

// ErrNotFound is returned when a search used its budget without a verified
// answer.
var ErrNotFound = errors.New("punch: no path found within the budget")

// Verifier checks a datagram that arrived during a search. ok means it
// proves the path (a valid disco ping or pong from the peer); reply, if not
// nil, is sent back at once from the same socket to from (a pong for a
// ping). It is called from the search's goroutines, possibly concurrently.
type Verifier func(pkt []byte, from netip.AddrPort) (reply []byte, ok bool)

// Result is a found path.
type Result struct {
	// Conn is the socket the path was found on: on the hard side the one
	// socket kept open (the caller owns it now), on the easy side nil (it
	// is the caller's own socket).
	Conn *net.UDPConn
	// Local is Conn's local address (hard side).
	Local netip.AddrPort
	// Remote is the peer's ip:port for this path.
	Remote netip.AddrPort
	// Sent is how many probe packets this side sent.
	Sent int
	// Elapsed is the time from the start to the verified datagram.
	Elapsed time.Duration
}

// HardConfig configures the hard side.
type HardConfig struct {
	// Peer is the easy side's public ip:port (its STUN address).
	Peer netip.AddrPort
	// Sockets is N; zero means DefaultSockets, at most MaxSockets.
	Sockets int
	// Interval between two sockets' sends; zero means DefaultHardInterval.
	Interval time.Duration
	// Timeout bounds the search; zero means DefaultTimeout.
	Timeout time.Duration
	// Payload returns the packet socket i sends (a disco ping). Required.
	Payload func(i int) []byte
	// Verify checks arriving datagrams. Required.
	Verify Verifier
	// Listen opens one UDP socket (nil: an IPv4 socket on a random port).
	Listen func() (*net.UDPConn, error)
	// Sent, if set, is called once every socket has sent its packet: the
	// moment the easy side may start probing.
	Sent func()
}

// Hard runs the hard side's search: open N sockets, send one packet from
// each to the peer, and wait for a verified datagram on any of them. It
// returns the winning socket and closes all the others; on failure it
// closes them all and returns ErrNotFound (or ctx's error).
func Hard(ctx context.Context, cfg HardConfig) (Result, error) {
	n := cfg.Sockets
	if n == 0 {
		n = DefaultSockets
	}
	if n < 1 || n > MaxSockets {
		return Result{}, fmt.Errorf("punch: %d sockets, want 1..%d", n, MaxSockets)
	}
	if !cfg.Peer.IsValid() || cfg.Payload == nil || cfg.Verify == nil {
		return Result{}, errors.New("punch: hard side needs Peer, Payload and Verify")
	}
	interval := cfg.Interval
	if interval <= 0 {
		interval = DefaultHardInterval
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	listen := cfg.Listen
	if listen == nil {
		listen = func() (*net.UDPConn, error) { return net.ListenUDP("udp4", nil) }
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	conns := make([]*net.UDPConn, 0, n)
	found := make(chan int, 1) // the first winner; later ones are dropped
	var winner struct {
		sync.Mutex
		i      int
		remote netip.AddrPort
		done   bool
	}
	// Every reader returns before Hard does: the winner's after its
	// verified datagram, the others when closeAll closes their sockets.
	var readers sync.WaitGroup
	defer readers.Wait()
	closeAll := func(keep int) {
		for i, c := range conns {
			if i != keep {
				c.Close()
			}
		}
	}
	read := func(i int, c *net.UDPConn) {
		defer readers.Done()
		buf := make([]byte, maxDatagram)
		for {
			m, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return // closed, or the search ended
			}
			from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			reply, ok := cfg.Verify(buf[:m], from)
			if reply != nil {
				c.WriteToUDPAddrPort(reply, from)
			}
			if !ok {
				continue
			}
			winner.Lock()
			if !winner.done {
				winner.done, winner.i, winner.remote = true, i, from
				found <- i
			}
			winner.Unlock()
			return
		}
	}
	sent := 0
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := 0; i < n; i++ {
		c, err := listen()
		if err != nil {
			closeAll(-1)
			return Result{}, fmt.Errorf("punch: socket %d: %w", i, err)
		}
		conns = append(conns, c)
		readers.Add(1)
		go read(i, c)
		if _, err := c.WriteToUDPAddrPort(cfg.Payload(i), cfg.Peer); err == nil {
			sent++
		}
		select {
		case w := <-found:
			return hardResult(conns, w, winner.remote, sent, start, closeAll)
		case <-ctx.Done():
			closeAll(-1)
			return Result{Sent: sent}, searchErr(ctx)
		case <-tick.C:
		}
	}
	if cfg.Sent != nil {
		cfg.Sent()
	}
	select {
	case w := <-found:
		return hardResult(conns, w, winner.remote, sent, start, closeAll)
	case <-ctx.Done():
		closeAll(-1)
		return Result{Sent: sent}, searchErr(ctx)
	}
}

// hardResult keeps the winner open and closes the rest. The winner's reader
// has returned, so the caller owns the socket alone.
func hardResult(conns []*net.UDPConn, w int, remote netip.AddrPort, sent int, start time.Time, closeAll func(int)) (Result, error) {
	closeAll(w)
	c := conns[w]
	return Result{
		Conn:    c,
		Local:   c.LocalAddr().(*net.UDPAddr).AddrPort(),
		Remote:  remote,
		Sent:    sent,
		Elapsed: time.Since(start),
	}, nil
}

// searchErr is ErrNotFound when the budget ran out, else ctx's error.
func searchErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ErrNotFound
	}
	return ctx.Err()
}

// EasyConfig configures the easy side.
type EasyConfig struct {
	// Peer is the hard side's public address (the port varies; that is
	// the point).
	Peer netip.Addr
	// Probes is M; zero means DefaultProbes, at most MaxProbes. Each
	// probe goes to a different port.
	Probes int
	// Rate is probes per second; zero means DefaultRate, at most MaxRate.
	Rate int
	// Timeout bounds the search; zero means DefaultTimeout. The search
	// ends at the first of: a verified datagram, M probes sent and a
	// last wait for answers, the timeout.
	Timeout time.Duration
	// Payload returns the probe for port (a disco ping). Required.
	Payload func(port uint16) []byte
	// Send sends one datagram from the node's socket. Required.
	Send func(b []byte, to netip.AddrPort) error
	// Verify checks datagrams from Peer handed to Deliver. Required.
	Verify Verifier
	// Rand picks the ports; nil means a random source of its own.
	Rand *rand.Rand
}

// Easy is the easy side's search. The node's socket is not the package's:
// the socket's owner passes every datagram from the peer's address to
// Deliver while Run runs.
type Easy struct {
	cfg   EasyConfig
	found chan netip.AddrPort // capacity 1: the first verified sender
}

// NewEasy checks cfg and returns a search ready to Run.
func NewEasy(cfg EasyConfig) (*Easy, error) {
	if cfg.Probes == 0 {
		cfg.Probes = DefaultProbes
	}
	if cfg.Probes < 1 || cfg.Probes > MaxProbes {
		return nil, fmt.Errorf("punch: %d probes, want 1..%d", cfg.Probes, MaxProbes)
	}
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Rate < 1 || cfg.Rate > MaxRate {
		return nil, fmt.Errorf("punch: rate %d/s, want 1..%d", cfg.Rate, MaxRate)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if !cfg.Peer.IsValid() || cfg.Payload == nil || cfg.Send == nil || cfg.Verify == nil {
		return nil, errors.New("punch: easy side needs Peer, Payload, Send and Verify")
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return &Easy{cfg: cfg, found: make(chan netip.AddrPort, 1)}, nil
}

// Deliver hands the search a datagram that arrived on the node's socket.
// It returns whether the datagram was from the peer's address (and so
// belongs to the search). Safe to call from any goroutine, before, during
// or after Run.
func (e *Easy) Deliver(pkt []byte, from netip.AddrPort) bool {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if from.Addr() != e.cfg.Peer {
		return false
	}
	reply, ok := e.cfg.Verify(pkt, from)
	if reply != nil {
		e.cfg.Send(reply, from)
	}
	if ok {
		select {
		case e.found <- from:
		default:
		}
	}
	return true
}

// ports returns m distinct random ports in [minPort, 65535].
func ports(r *rand.Rand, m int) []uint16 {
	const span = 65536 - minPort
	if m > span {
		m = span
	}
	seen := make(map[uint16]bool, m)
	out := make([]uint16, 0, m)
	for len(out) < m {
		p := uint16(minPort + r.IntN(span))
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// Run sends the probes, paced, until Deliver sees a verified datagram or
// the budget is used up. After the last probe it waits out the rest of the
// timeout (at most one second) for a late answer.
func (e *Easy) Run(ctx context.Context) (Result, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	defer cancel()
	interval := time.Second / time.Duration(e.cfg.Rate)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	sent := 0
	done := func(remote netip.AddrPort) (Result, error) {
		return Result{Remote: remote, Sent: sent, Elapsed: time.Since(start)}, nil
	}
	for _, port := range ports(e.cfg.Rand, e.cfg.Probes) {
		to := netip.AddrPortFrom(e.cfg.Peer, port)
		if err := e.cfg.Send(e.cfg.Payload(port), to); err == nil {
			sent++
		}
		select {
		case r := <-e.found:
			return done(r)
		case <-ctx.Done():
			return Result{Sent: sent}, searchErr(ctx)
		case <-tick.C:
		}
	}
	// lastWait: an answer to the last probes needs a round trip.
	last := time.NewTimer(time.Second)
	defer last.Stop()
	select {
	case r := <-e.found:
		return done(r)
	case <-ctx.Done():
		return Result{Sent: sent}, searchErr(ctx)
	case <-last.C:
		return Result{Sent: sent}, ErrNotFound
	}
}
