package relayd

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/wiremesh/wiremesh/internal/nice"
	"github.com/wiremesh/wiremesh/relayproto"
)

// Batched fast path. Each fast-path socket's loop (one per client, or the
// shared one) works a batch at a time:
//
//	recvmmsg (ReadBatch; mmsgConn on Linux) up to fastBatchLen datagrams
//	  → per datagram: parse, check the session and source, rate limit,
//	    rewrite FastSend into FastRecv in place (no copy)
//	  → group by destination (its socket and validated address), in order
//	  → per destination: coalesce runs of equal-size datagrams into UDP GSO
//	    sends (one buffer, the kernel splits it), then one sendmmsg
//	    (WriteBatch) on that destination's socket
//
// Fairness: every client has its own socket and loop, so a flooding client
// fills its own receive buffer and batches, never another client's. And a
// client over its --client-rate is shaped and does not cost the relay a
// core either: a batch from its own socket that finds the bucket empty
// waits for tokens mid-way (handleFastBatch), and after it the loop pauses
// until the bucket holds a batch again (at most fastPauseMax), so what it
// sends beyond its rate waits in its socket buffer, or is dropped there by
// the kernel, instead of being read, parsed and dropped by the relay. A
// destination whose send fails (its socket closed, its buffer refusing)
// loses only its own packets of the batch, counted as write_error; the
// other destinations of the batch are still written.

// Batch sizing. 32 datagrams of 2 KiB is 64 KiB per loop, what one 64 KiB
// read buffer cost before batching; at 1 Gbit/s of 1280-byte packets a
// batch is about 0.3 ms of traffic, so batching adds no latency worth
// counting.
const (
	fastBatchLen = 32
	fastBufLen   = relayproto.MaxFastDatagram
	// gsoMaxSegments is the kernel's limit per GSO send (UDP_MAX_SEGMENTS),
	// gsoMaxBytes the largest UDP payload.
	gsoMaxSegments = 64
	gsoMaxBytes    = 1<<16 - 1 - 8 - 40
	// fastPauseMax bounds one pause of a rate-limited client's loop, so
	// that a closed socket or a changed limit is seen soon.
	fastPauseMax = 10 * time.Millisecond
)

// batchConn is what the fast path needs from ipv4.PacketConn and
// ipv6.PacketConn (their Message types are one type).
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// newBatchConn returns c's batch reader and writer: recvmmsg without
// allocations where the platform has it (newMmsgConn), x/net otherwise.
func newBatchConn(c *net.UDPConn) batchConn {
	var bc batchConn = ipv4.NewPacketConn(c)
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() == nil && a.IP != nil && !a.IP.IsUnspecified() {
		bc = ipv6.NewPacketConn(c)
	}
	return newMmsgConn(c, bc)
}

// fastOut is one destination's share of a batch.
type fastOut struct {
	conn   *net.UDPConn
	bc     batchConn
	addr   netip.AddrPort
	frames [][]byte // FastRecv datagrams, in arrival order
}

// fastBatch is a loop's reusable batch state. Not safe for concurrent use.
type fastBatch struct {
	in     []ipv4.Message
	outs   []fastOut
	msgs   []ipv4.Message // scratch for one destination's sendmmsg
	counts []int          // frames in each of msgs
	gso    [][]byte       // scratch buffers for coalesced GSO sends
	oob    [][]byte       // their control messages
	bufs   [][]byte       // backing for msgs' Buffers, one each
	ua     net.UDPAddr    // the destination of msgs, reused
	ip     [16]byte       // ua.IP's array
	// limited is a client whose packets in this batch hit its rate limit.
	limited *client
	// blocked is set by forwardFast when a datagram from a client on its
	// own socket found the bucket empty: handleFastBatch then writes what
	// it has, waits for tokens and tries that datagram again once (retry),
	// so the relay shapes such a client instead of dropping its packets.
	blocked, retry bool
}

func newFastBatch() *fastBatch {
	b := &fastBatch{in: make([]ipv4.Message, fastBatchLen)}
	for i := range b.in {
		b.in[i].Buffers = [][]byte{make([]byte, fastBufLen)}
	}
	return b
}

// add queues frame for dst's socket at addr.
func (b *fastBatch) add(conn *net.UDPConn, bc batchConn, addr netip.AddrPort, frame []byte) {
	for i := range b.outs {
		if o := &b.outs[i]; o.conn == conn && o.addr == addr {
			o.frames = append(o.frames, frame)
			return
		}
	}
	if len(b.outs) < cap(b.outs) { // reuse a frames slice from an earlier batch
		b.outs = b.outs[:len(b.outs)+1]
		o := &b.outs[len(b.outs)-1]
		o.conn, o.bc, o.addr, o.frames = conn, bc, addr, append(o.frames[:0], frame)
		return
	}
	b.outs = append(b.outs, fastOut{conn: conn, bc: bc, addr: addr, frames: [][]byte{frame}})
}

// Bulk clients. A client that keeps its own socket full (bulkAfter full
// batches in a row) has its loop moved to an OS thread of its own whose
// nice value is Config.FastBulkNice higher. The relay's other threads, and
// with them the other clients' packets, then preempt it when the cores are
// contended. Its throughput does not suffer on a relay with spare CPU, as
// the kernel still gives a lower-priority thread every cycle nobody else
// wants. The loop moves back
// to an ordinary thread once it has read no full batch for bulkQuiet; the
// lowered thread ends with it (raising a priority again needs privileges).
const (
	bulkAfter = 64
	bulkQuiet = time.Second
)

// loopEnd says why fastRun returned.
type loopEnd int

const (
	loopClosed loopEnd = iota // the socket is closed
	loopBulk                  // the client keeps the socket full
	loopQuiet                 // a bulk client stopped keeping it full
)

// fastLoop reads fast-path datagrams from conn in batches until it is
// closed. own is set for a client's own socket, whose loop pauses while
// that client is over its rate (see fastPause) and moves to a thread of
// lower priority while the client keeps the socket full.
func (s *Server) fastLoop(conn *net.UDPConn, bc batchConn, own bool) {
	b := newFastBatch()
	bulk := own && s.cfg.FastBulkNice > 0
	for s.fastRun(conn, bc, own, b, bulk, false) == loopBulk {
		if s.fastRunBulk(conn, bc, b) == loopClosed {
			return
		}
	}
}

// fastRunBulk runs a bulk client's loop on an OS thread of lowered
// priority until the client goes quiet or the socket closes, and returns
// which. The thread is never unlocked, so it ends with the goroutine (or,
// if it is the process's main thread, which the Go runtime never ends,
// stays parked for good).
func (s *Server) fastRunBulk(conn *net.UDPConn, bc batchConn, b *fastBatch) loopEnd {
	end := make(chan loopEnd, 1)
	go func() {
		runtime.LockOSThread()
		if err := nice.LowerThread(s.cfg.FastBulkNice); err != nil && !s.bulkNiceFailed.Swap(true) {
			s.log.Warn("fast path: cannot lower a bulk client's thread priority; serving it at the normal one", "err", err)
		}
		s.m.fastBulkLoops.Inc()
		s.m.fastBulkMoves.Inc()
		defer s.m.fastBulkLoops.Dec()
		end <- s.fastRun(conn, bc, true, b, false, true)
	}()
	return <-end
}

// A loop that keeps finding data in its socket never parks, and while it
// runs the Go runtime may have no thread waiting in the network poller:
// the other Ps are idle, their threads asleep, and only sysmon polls,
// every 10 ms. Paced clients' datagrams then wait in their sockets for up
// to that long behind a flooding one. So a loop that read more than one
// datagram (a socket with a queue, which it will likely read again without
// parking; a flooder slower than the relay fills no batch but keeps such a
// queue) kicks pollKeeper, at most every pollKickEvery: readying it wakes
// an idle thread, which runs it and then, finding nothing else to do,
// polls the network and serves whatever is ready there.
const pollKickEvery = 100 * time.Microsecond

// fastKick kicks pollKeeper if the last kick from this loop was at least
// pollKickEvery ago, and returns the time of the latest kick.
func (s *Server) fastKick(last, now time.Time) time.Time {
	if now.Sub(last) < pollKickEvery {
		return last
	}
	select {
	case s.pollKick <- struct{}{}:
		s.m.fastPollKicks.Inc()
	default: // a kick is already pending
	}
	return now
}

// pollKeeper is the goroutine fastKick readies; it does nothing else.
func (s *Server) pollKeeper(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.pollKick:
		}
	}
}

// fastRun is the batch loop. With detect set it returns loopBulk once the
// socket has been full bulkAfter batches in a row; with quiet set it
// returns loopQuiet once no batch was full for bulkQuiet.
func (s *Server) fastRun(conn *net.UDPConn, bc batchConn, own bool, b *fastBatch, detect, quiet bool) loopEnd {
	full := 0
	lastFull := time.Now()
	var kicked time.Time
	for {
		n, err := bc.ReadBatch(b.in, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return loopClosed
			}
			continue
		}
		s.m.fastBatch.Observe(float64(n))
		s.handleFastBatch(conn, b, b.in[:n])
		if own {
			if d := fastPause(b, time.Now()); d > 0 {
				time.Sleep(d)
			}
		}
		b.limited = nil
		if n > 1 {
			kicked = s.fastKick(kicked, time.Now())
		}
		if n == len(b.in) {
			full++
			if detect && full >= bulkAfter {
				return loopBulk
			}
			if quiet {
				lastFull = time.Now()
			}
		} else {
			full = 0
			if quiet && time.Since(lastFull) >= bulkQuiet {
				return loopQuiet
			}
		}
	}
}

// fastPause is how long a client's own loop waits after batch b: until
// the client's bucket holds a full batch again if b hit its rate limit,
// else 0.
func fastPause(b *fastBatch, now time.Time) time.Duration {
	if b.limited == nil || b.limited.lim == nil {
		return 0
	}
	return b.limited.lim.wait(fastBatchLen*relayproto.MaxFastDatagram, now, fastPauseMax)
}

// handleFastBatch acts on one batch of datagrams that arrived on conn and
// writes what it forwards over the fast path, destination by destination.
func (s *Server) handleFastBatch(conn *net.UDPConn, b *fastBatch, in []ipv4.Message) {
	for i := range in {
		m := &in[i]
		if msgTruncated(m.Flags) {
			s.m.badFrames.WithLabelValues("oversized").Inc()
			continue
		}
		ua, ok := m.Addr.(*net.UDPAddr)
		if !ok {
			continue
		}
		from := ua.AddrPort()
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		s.handleFast(conn, m.Buffers[0][:m.N], from, b)
		if b.blocked {
			b.blocked = false
			s.flushFast(b)
			need := 0
			for _, r := range in[i:] {
				need += r.N
			}
			if d := b.limited.lim.wait(need, time.Now(), fastPauseMax); d > 0 {
				time.Sleep(d)
			}
			b.retry = true // a second miss drops it
			s.handleFast(conn, m.Buffers[0][:m.N], from, b)
			b.retry = false
		}
	}
	s.flushFast(b)
}

// flushFast writes every destination's share of the batch and empties it.
func (s *Server) flushFast(b *fastBatch) {
	for i := range b.outs {
		o := &b.outs[i]
		sent, bytes := s.writeFastOut(b, o, true)
		s.m.fwdFastPkts.Add(float64(sent))
		s.m.fwdFastBytes.Add(float64(bytes))
		if lost := len(o.frames) - sent; lost > 0 {
			s.m.drops.WithLabelValues(dropWriteError).Add(float64(lost))
		}
		clear(o.frames) // do not pin read buffers
		o.frames = o.frames[:0]
		o.conn, o.bc = nil, nil
	}
	b.outs = b.outs[:0]
}

// writeFastOut sends one destination's frames, coalescing runs of equal
// sizes into GSO sends when gso is set and the kernel allows, and returns
// how many frames (and payload bytes) were sent.
func (s *Server) writeFastOut(b *fastBatch, o *fastOut, gso bool) (sent, bytes int) {
	ua := b.udpAddr(o.addr)
	useGSO := gso && gsoSupported && !s.fastNoGSO.Load() && len(o.frames) > 1
	b.msgs, b.counts, b.bufs = b.msgs[:0], b.counts[:0], b.bufs[:0]
	gi := 0
	for i := 0; i < len(o.frames); {
		f := o.frames[i]
		n := 1
		if useGSO {
			// A run: equal sizes, the last may be shorter (UDP_SEGMENT rule).
			for i+n < len(o.frames) && n < gsoMaxSegments && (n+1)*len(f) <= gsoMaxBytes {
				next := o.frames[i+n]
				if len(next) > len(f) {
					break
				}
				n++
				if len(next) < len(f) {
					break
				}
			}
		}
		msg := ipv4.Message{Addr: ua}
		if n == 1 {
			b.bufs = append(b.bufs, f)
		} else {
			if gi == len(b.gso) {
				b.gso = append(b.gso, make([]byte, 0, gsoMaxBytes))
				b.oob = append(b.oob, nil)
			}
			buf := b.gso[gi][:0]
			for _, g := range o.frames[i : i+n] {
				buf = append(buf, g...)
			}
			b.bufs = append(b.bufs, buf)
			b.oob[gi] = gsoControl(b.oob[gi], uint16(len(f)))
			msg.OOB = b.oob[gi]
			gi++
		}
		msg.Buffers = b.bufs[len(b.bufs)-1 : len(b.bufs) : len(b.bufs)]
		b.msgs = append(b.msgs, msg)
		b.counts = append(b.counts, n)
		i += n
	}
	done := 0 // messages written
	for done < len(b.msgs) {
		n, err := o.bc.WriteBatch(b.msgs[done:], 0)
		if err != nil {
			if useGSO && (gsoShouldDisable(err) || gsoTooBig(err)) {
				if gsoShouldDisable(err) {
					// This path cannot offload: stop trying, everywhere.
					s.fastNoGSO.Store(true)
					s.log.Info("fast path: UDP GSO unavailable; sending datagrams one by one", "err", err)
				}
				// Either way, resend the rest of this destination without
				// it (segments larger than the device MTU get EMSGSIZE
				// with GSO, but are fragmented without it).
				rest := o.frames[frameIndex(b.counts, done):]
				o2 := fastOut{conn: o.conn, bc: o.bc, addr: o.addr, frames: rest}
				s2, b2 := s.writeFastOut(b, &o2, false)
				return sent + s2, bytes + b2
			}
			break
		}
		for _, c := range b.counts[done : done+n] {
			for _, f := range o.frames[sent : sent+c] {
				bytes += len(f) - relayproto.FastRecvOverhead
			}
			sent += c
		}
		done += n
	}
	return sent, bytes
}

// udpAddr returns ap as b's reused *net.UDPAddr, valid until the next
// call: sendmmsg copies it, and net.UDPAddrFromAddrPort would allocate
// one (and its IP) per destination per batch.
func (b *fastBatch) udpAddr(ap netip.AddrPort) *net.UDPAddr {
	a := ap.Addr()
	if a.Is4() {
		v := a.As4()
		copy(b.ip[:], v[:])
		b.ua.IP = b.ip[:4]
	} else {
		b.ip = a.As16()
		b.ua.IP = b.ip[:]
	}
	b.ua.Port, b.ua.Zone = int(ap.Port()), a.Zone()
	return &b.ua
}

// frameIndex returns the index of the first frame of message m.
func frameIndex(counts []int, m int) int {
	i := 0
	for _, c := range counts[:m] {
		i += c
	}
	return i
}
