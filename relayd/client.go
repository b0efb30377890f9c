package relayd

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
)

// A client has three goroutines, all stopped by closing its connection:
//
//	readStream    frames on the control stream (hello already consumed)
//	readDatagrams QUIC datagrams; drains quic-go's 128-entry receive queue
//	              as fast as it can so quic-go never drops silently
//	write         empties ctrl, then disco, then data queues onto the wire
//
// Queues live under client.mu. ctrl is never dropped from (a client that
// lets 64 control frames pile up is not reading and is closed); disco and
// data drop their oldest entry when full and count it.

// senderSetMax bounds the set of peers a client has received packets from,
// which decides who hears PeerGone when it leaves. Past it, new senders are
// not tracked (they learn of the departure from their next packet instead).
const senderSetMax = 256

// notHereMax bounds the per-client memory of keys it was told are not here,
// so a client spraying unknown keys gets one PeerGone per key, not one per
// packet, without unbounded growth; the set is reset when it fills.
const notHereMax = 64

// maxPeerHandles bounds the handles a relay hands one sender (see
// client.handles). Past it the sender gets no more handles and addresses
// further peers by key (28 bytes more per packet). It matches relayclient's
// own bound.
const maxPeerHandles = 4096

// DefaultQueueBytes caps the payload bytes queued for one receiver across
// its data and disco queues. 128 full-size (1280-byte) packets take 160 KiB,
// so ordinary traffic only ever meets the packet limit; the byte cap stops
// 64 KiB stream packets from making a non-reading client hold 128 × 64 KiB.
const DefaultQueueBytes = 256 << 10

// DefaultClientRate is the per-client send limit when none is configured:
// 1 Gbit/s, about what the whole relay forwards on two cores, so one client
// can use the relay alone but never more than it, and a flood from one
// client cannot grow without bound. Config.ClientRate < 0 turns it off.
const DefaultClientRate = 125_000_000

// DefaultClientBurst is the default token bucket depth, as time at the
// client's rate: 100 ms, 12.5 MB at the default rate. A second's worth
// (the default before) let a flooding client run unlimited for its first
// second, and that second alone set the other clients' p99 (BENCHMARKS.md).
// minClientBurst keeps a small --client-rate usable: a fast-path batch of
// full-size datagrams fits.
const (
	DefaultClientBurst = 100 * time.Millisecond
	minClientBurst     = 64 << 10
)

// DefaultFastBulkNice is how much lower a bulk fast-path client's loop
// runs in CPU priority (Config.FastBulkNice).
const DefaultFastBulkNice = 10

// writeTimeout bounds one stream write. A client whose flow-control
// window stays shut this long is not reading and is closed; its queues
// meanwhile drop their oldest packets as usual.
const writeTimeout = 10 * time.Second

// writeBatch bounds how many bytes of stream frames the writer gathers
// before one Write; larger batches amortize quic-go's per-Write locking.
const writeBatch = 64 << 10

type packet struct {
	src     key.NodePublic
	payload []byte
	enq     int64 // Server.nowNanos at enqueue
}

// ring is a fixed-capacity FIFO that drops its oldest entry when full.
type ring struct {
	buf     []packet
	head, n int
}

// push adds p, returning the oldest entry if it was dropped to make room.
func (r *ring) push(p packet, capacity int) (old packet, dropped bool) {
	if r.buf == nil {
		r.buf = make([]packet, capacity) // lazily: idle clients pay nothing
	}
	if r.n == len(r.buf) {
		old = r.buf[r.head]
		r.buf[r.head] = packet{}
		r.head = (r.head + 1) % len(r.buf)
		r.n--
		dropped = true
	}
	r.buf[(r.head+r.n)%len(r.buf)] = p
	r.n++
	return old, dropped
}

func (r *ring) pop() (packet, bool) {
	if r.n == 0 {
		return packet{}, false
	}
	p := r.buf[r.head]
	r.buf[r.head] = packet{}
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return p, true
}

type client struct {
	s     *Server
	c     conn
	key   key.NodePublic
	dgram bool // deliver packets as datagrams when they fit
	lim   *limiter
	fast  atomic.Pointer[fastState] // nil until the client asks for a fast path
	wake  chan struct{}             // cap 1: writer has work
	done  chan struct{}             // closed by close

	mu struct {
		sync.Mutex
		closed  bool
		ctrl    [][]byte // whole stream frames
		disco   ring
		data    ring
		senders map[key.NodePublic]struct{}
		notHere map[key.NodePublic]struct{}
		qbytes  int // payload bytes in disco and data
	}
	// handles are this client's own names for the peers it sends to: a
	// handle is handed out (in PeerPresent) only for a peer the client
	// addressed by key, and means something only in this client's
	// SendHandle frames, so handles reveal nothing and cannot be guessed
	// into another client's traffic. Handles are never reused within a
	// connection; a handle names a key, so it survives the peer
	// reconnecting.
	handles struct {
		sync.RWMutex
		byHandle map[uint32]key.NodePublic
		byKey    map[key.NodePublic]uint32
		next     uint32
	}
	closeOnce sync.Once
}

// handleFor returns cl's handle for peer k, assigning one if needed; ok is
// false once cl holds maxPeerHandles.
func (cl *client) handleFor(k key.NodePublic) (uint32, bool) {
	cl.handles.Lock()
	defer cl.handles.Unlock()
	if h, ok := cl.handles.byKey[k]; ok {
		return h, true
	}
	if len(cl.handles.byKey) >= maxPeerHandles {
		return 0, false
	}
	if cl.handles.byKey == nil {
		cl.handles.byKey = map[key.NodePublic]uint32{}
		cl.handles.byHandle = map[uint32]key.NodePublic{}
	}
	cl.handles.next++
	h := cl.handles.next
	cl.handles.byKey[k] = h
	cl.handles.byHandle[h] = k
	return h, true
}

// peerByHandle resolves one of cl's handles.
func (cl *client) peerByHandle(h uint32) (key.NodePublic, bool) {
	cl.handles.RLock()
	defer cl.handles.RUnlock()
	k, ok := cl.handles.byHandle[h]
	return k, ok
}

// register creates the client after admission and makes it reachable,
// replacing an older connection with the same key.
func (s *Server) register(c conn, h relayproto.ClientHello) *client {
	cl := &client{s: s, c: c, key: h.Node, dgram: h.Flags&relayproto.FlagDatagrams != 0 && c.transport() == transportQUIC,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	if s.cfg.ClientRate > 0 {
		cl.lim = newLimiter(s.cfg.ClientRate, s.cfg.ClientBurst, time.Now())
	}
	s.mu.Lock()
	old := s.mu.clients[h.Node]
	s.mu.clients[h.Node] = cl
	delete(s.mu.remote, h.Node) // a local client wins over a mesh rumour
	s.mu.Unlock()
	if old != nil {
		old.close("replaced by a newer connection")
	}
	s.meshAnnounce(h.Node, true)
	// Handle 0: handles are per sender (client.handles), announced in
	// PeerPresent; a client has no relay-wide handle of its own.
	sh := relayproto.ServerHello{Version: relayproto.Version, Region: s.cfg.Region}
	cl.c.Write(relayproto.AppendFrame(nil, relayproto.FrameServerHello, sh.Append(nil)))
	return cl
}

// unregister removes cl and tells the peers that sent to it.
func (s *Server) unregister(cl *client) {
	s.mu.Lock()
	current := s.mu.clients[cl.key] == cl
	if current {
		delete(s.mu.clients, cl.key)
	}
	fs := cl.fast.Load()
	if fs != nil {
		delete(s.mu.sessions, fs.session)
	}
	s.mu.Unlock()
	if fs != nil && fs.conn != nil {
		fs.conn.Close()
	}
	cl.mu.Lock()
	senders := cl.mu.senders
	cl.mu.senders = nil
	dropped := cl.mu.data.n + cl.mu.disco.n
	cl.mu.data, cl.mu.disco, cl.mu.qbytes = ring{}, ring{}, 0
	cl.mu.Unlock()
	if dropped > 0 {
		s.m.drops.WithLabelValues(dropClosed).Add(float64(dropped))
	}
	if !current {
		return // replaced: the peer is still here
	}
	s.meshAnnounce(cl.key, false)
	body := relayproto.AppendPeerGone(nil, cl.key, relayproto.PeerGoneDisconnected)
	for k := range senders {
		s.mu.RLock()
		peer := s.mu.clients[k]
		s.mu.RUnlock()
		if peer != nil {
			peer.enqueueCtrl(relayproto.FramePeerGone, body)
		}
	}
}

// run serves the client until its connection fails or ctx ends.
func (cl *client) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cl.write()
		cl.close("write failed") // a client nobody can write to is gone
	}()
	if cl.c.transport() == transportQUIC {
		wg.Add(1)
		go func() { defer wg.Done(); cl.readDatagrams(ctx) }()
	}
	err := cl.readStream()
	cl.close(closeReason(err))
	wg.Wait()
}

func closeReason(err error) string {
	if err == nil || errors.Is(err, io.EOF) {
		return "closed"
	}
	return err.Error()
}

func (cl *client) close(why string) {
	cl.closeOnce.Do(func() {
		cl.mu.Lock()
		cl.mu.closed = true
		cl.mu.Unlock()
		close(cl.done)
		cl.c.close(why)
	})
}

// badFrame counts a protocol violation; the caller then closes.
func (cl *client) badFrame(err error) error {
	cl.s.m.badFrames.WithLabelValues(relayproto.BadFrameReason(err)).Inc()
	cl.s.log.Debug("bad frame", "peer", cl.key.ShortString(), "err", err)
	return err
}

var errUnexpected = errors.New("unexpected frame")

func (cl *client) readStream() error {
	r := relayproto.NewReader(cl.c, relayproto.MaxBodyLen)
	for {
		cl.c.setIdleDeadline(time.Now().Add(IdleTimeout))
		typ, body, err := r.Next(nil)
		if err != nil {
			if errors.Is(err, relayproto.ErrTruncated) || errors.Is(err, relayproto.ErrOversized) || errors.Is(err, relayproto.ErrUnknown) {
				return cl.badFrame(err)
			}
			return err
		}
		if err := cl.handleFrame(typ, body); err != nil {
			return err
		}
	}
}

func (cl *client) readDatagrams(ctx context.Context) {
	qc := cl.c.(*quicConn)
	for {
		d, err := qc.c.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		typ, body, err := relayproto.SplitDatagram(d)
		if err == nil {
			err = cl.handleFrame(typ, body)
		}
		if err != nil {
			if !errors.Is(err, errUnexpected) {
				cl.badFrame(err)
			}
			cl.close("bad datagram")
			return
		}
	}
}

// handleFrame acts on one frame from the client. body is owned by the caller
// until handle returns, except that packet payloads may be kept.
func (cl *client) handleFrame(typ relayproto.FrameType, body []byte) error {
	switch typ {
	case relayproto.FrameSendPacket, relayproto.FrameSendDisco:
		dst, payload, err := relayproto.ParseKeyPacket(body)
		if err != nil {
			return cl.badFrame(err)
		}
		cl.s.forward(cl, dst, payload, typ == relayproto.FrameSendDisco, true)
	case relayproto.FrameSendHandle:
		h, payload, err := relayproto.ParseHandlePacket(body)
		if err != nil {
			return cl.badFrame(err)
		}
		dst, ok := cl.peerByHandle(h)
		if !ok {
			cl.s.m.drops.WithLabelValues(dropNoSuchPeer).Inc()
			return nil
		}
		cl.s.forward(cl, dst, payload, false, false)
	case relayproto.FramePing:
		if _, err := relayproto.ParsePing(body); err != nil {
			return cl.badFrame(err)
		}
		cl.enqueueCtrl(relayproto.FramePong, body)
	case relayproto.FramePong:
		d, err := relayproto.ParsePing(body)
		if err != nil {
			return cl.badFrame(err)
		}
		sent := int64(binary.BigEndian.Uint64(d[:]))
		if rtt := time.Duration(cl.s.nowNanos() - sent); rtt >= 0 && rtt < IdleTimeout {
			cl.s.m.clientRTT.Observe(rtt.Seconds())
		}
	case relayproto.FrameKeepAlive:
	case relayproto.FrameFastPathRequest:
		cl.startFastPath()
	case relayproto.FrameFastPathConfirm:
		return cl.confirmFastPath(body)
	default:
		cl.s.m.badFrames.WithLabelValues("unexpected").Inc()
		return errUnexpected
	}
	return nil
}

// forward routes one packet from src to dstKey. byKey says the sender
// addressed it by key (not by one of its handles): only then may it learn
// the peer's presence and a handle from a PeerPresent.
func (s *Server) forward(src *client, dstKey key.NodePublic, payload []byte, disco, byKey bool) {
	if src.lim != nil && !src.lim.allow(len(payload), time.Now()) {
		s.m.drops.WithLabelValues(dropRateLimited).Inc()
		return
	}
	var via key.RelayPublic
	remote := false
	s.mu.RLock()
	dst := s.mu.clients[dstKey]
	if dst == nil {
		via, remote = s.mu.remote[dstKey]
	}
	s.mu.RUnlock()
	switch {
	case dst != nil:
		dst.enqueue(packet{src: src.key, payload: payload, enq: s.nowNanos()}, disco, src, byKey)
	case remote:
		s.meshForward(via, src.key, dstKey, payload, disco)
	default:
		s.m.drops.WithLabelValues(dropNoSuchPeer).Inc()
		src.notifyNotHere(dstKey)
	}
}

// noteSender records from as a sender to cl (for PeerGone on departure)
// and, the first time, sends it a PeerPresent with its handle for cl. The
// fast path calls it; fast-path packets are always addressed by key.
func (cl *client) noteSender(from *client) {
	cl.mu.Lock()
	announce := !cl.mu.closed && cl.trackSenderLocked(from)
	cl.mu.Unlock()
	if announce {
		cl.announceTo(from)
	}
}

// trackSenderLocked adds from to cl's senders and reports whether it is new.
func (cl *client) trackSenderLocked(from *client) bool {
	if _, ok := cl.mu.senders[from.key]; ok {
		return false
	}
	if cl.mu.senders == nil {
		cl.mu.senders = map[key.NodePublic]struct{}{}
	}
	if len(cl.mu.senders) >= senderSetMax {
		return false
	}
	cl.mu.senders[from.key] = struct{}{}
	return true
}

// announceTo sends from a PeerPresent for cl with from's handle for it.
func (cl *client) announceTo(from *client) {
	if h, ok := from.handleFor(cl.key); ok {
		from.enqueueCtrl(relayproto.FramePeerPresent, relayproto.AppendPeerPresent(nil, cl.key, h))
	}
}

// enqueue queues p for delivery. from is the local sender, if any: the first
// packet from a sender makes it a tracked sender, and, if it addressed cl by
// key (byKey), earns it a PeerPresent with a handle for cl.
//
// The queues drop their oldest packet when full, in packets (QueueLen,
// DiscoQueueLen) and in bytes (QueueBytes over both).
func (cl *client) enqueue(p packet, disco bool, from *client, byKey bool) {
	var dropped, bytesDropped int
	announce := false
	cl.mu.Lock()
	if cl.mu.closed {
		cl.mu.Unlock()
		cl.s.m.drops.WithLabelValues(dropClosed).Inc()
		return
	}
	q, capacity := &cl.mu.data, cl.s.cfg.QueueLen
	if disco {
		q, capacity = &cl.mu.disco, cl.s.cfg.DiscoQueueLen
	}
	if old, ok := q.push(p, capacity); ok {
		cl.mu.qbytes -= len(old.payload)
		dropped++
	}
	cl.mu.qbytes += len(p.payload)
	for cl.mu.qbytes > cl.s.cfg.QueueBytes {
		// Oldest data first; disco (small, and what sets up direct paths)
		// only when there is no data left to shed.
		old, ok := cl.mu.data.pop()
		if !ok {
			if old, ok = cl.mu.disco.pop(); !ok {
				break
			}
		}
		cl.mu.qbytes -= len(old.payload)
		bytesDropped++
	}
	if from != nil {
		announce = cl.trackSenderLocked(from) && byKey
	}
	cl.mu.Unlock()
	if dropped > 0 {
		if disco {
			cl.s.m.dropDisco.Inc()
		} else {
			cl.s.m.dropQueue.Inc()
		}
	}
	if bytesDropped > 0 {
		cl.s.m.dropQueueBytes.Add(float64(bytesDropped))
	}
	if announce {
		cl.announceTo(from)
	}
	cl.signal()
}

func (cl *client) signal() {
	select {
	case cl.wake <- struct{}{}:
	default:
	}
}

// enqueueCtrl queues a control frame. A client with ctrlQueueLen frames
// pending is not reading its stream and is closed.
func (cl *client) enqueueCtrl(t relayproto.FrameType, body []byte) {
	cl.mu.Lock()
	if cl.mu.closed {
		cl.mu.Unlock()
		return
	}
	if len(cl.mu.ctrl) >= ctrlQueueLen {
		cl.mu.Unlock()
		cl.close("control queue overflow")
		return
	}
	cl.mu.ctrl = append(cl.mu.ctrl, relayproto.AppendFrame(nil, t, body))
	cl.mu.Unlock()
	cl.signal()
}

func (cl *client) notifyNotHere(k key.NodePublic) {
	cl.mu.Lock()
	if _, ok := cl.mu.notHere[k]; ok {
		cl.mu.Unlock()
		return
	}
	if cl.mu.notHere == nil || len(cl.mu.notHere) >= notHereMax {
		cl.mu.notHere = map[key.NodePublic]struct{}{}
	}
	cl.mu.notHere[k] = struct{}{}
	cl.mu.Unlock()
	cl.enqueueCtrl(relayproto.FramePeerGone, relayproto.AppendPeerGone(nil, k, relayproto.PeerGoneNotHere))
}

// write is the writer goroutine: control first, then disco, then data.
func (cl *client) write() {
	var (
		buf     []byte // stream frames gathered for one Write
		scratch []byte // one datagram
		batch   []packet
	)
	for {
		select {
		case <-cl.wake:
		case <-cl.done:
			return
		}
		for {
			cl.mu.Lock()
			ctrl := cl.mu.ctrl
			cl.mu.ctrl = nil
			batch = batch[:0]
			for len(batch) < 32 {
				p, ok := cl.mu.disco.pop()
				if !ok {
					break
				}
				cl.mu.qbytes -= len(p.payload)
				batch = append(batch, p)
			}
			nDisco := len(batch)
			for len(batch) < 64 {
				p, ok := cl.mu.data.pop()
				if !ok {
					break
				}
				cl.mu.qbytes -= len(p.payload)
				batch = append(batch, p)
			}
			cl.mu.Unlock()
			if len(ctrl) == 0 && len(batch) == 0 {
				break
			}
			buf = buf[:0]
			for _, f := range ctrl {
				buf = append(buf, f...)
			}
			now := cl.s.nowNanos()
			for i, p := range batch {
				cl.s.m.queueDelay.Observe(float64(now-p.enq) / 1e9)
				t := relayproto.FrameRecvPacket
				if i < nDisco {
					t = relayproto.FrameRecvDisco
				}
				if t == relayproto.FrameRecvPacket && relayproto.FastRecvOverhead+len(p.payload) <= relayproto.MaxFastDatagram {
					if addr, ok := cl.fastAddr(); ok {
						if err := cl.s.sendFast(cl, addr, p.src, p.payload); err == nil {
							cl.s.m.fwdFastPkts.Inc()
							cl.s.m.fwdFastBytes.Add(float64(len(p.payload)))
							continue
						}
					}
				}
				if cl.dgram && t == relayproto.FrameRecvPacket {
					// sendDatagram copies, so one scratch buffer serves all.
					scratch = relayproto.AppendKeyPacket(append(scratch[:0], byte(t)), p.src, p.payload)
					err := cl.c.sendDatagram(scratch)
					if err == nil {
						cl.s.m.fwdDgramPkts.Inc()
						cl.s.m.fwdDgramBytes.Add(float64(len(p.payload)))
						continue
					}
					var tooLarge *quic.DatagramTooLargeError
					if !errors.As(err, &tooLarge) {
						cl.s.m.drops.WithLabelValues(dropWriteError).Inc()
						return
					}
				}
				buf = relayproto.AppendHeader(buf, t, relayproto.KeyLen+len(p.payload))
				buf = relayproto.AppendKeyPacket(buf, p.src, p.payload)
				cl.s.m.fwdStreamPkts.Inc()
				cl.s.m.fwdStreamBytes.Add(float64(len(p.payload)))
				if len(buf) >= writeBatch {
					cl.c.setWriteDeadline(time.Now().Add(writeTimeout))
					if _, err := cl.c.Write(buf); err != nil {
						return
					}
					buf = buf[:0]
				}
			}
			if len(buf) > 0 {
				cl.c.setWriteDeadline(time.Now().Add(writeTimeout))
				if _, err := cl.c.Write(buf); err != nil {
					cl.s.m.drops.WithLabelValues(dropWriteError).Inc()
					return
				}
			}
			if cap(buf) > writeBatch*2 {
				buf = nil // do not pin a burst's buffer on an idle client
			}
		}
	}
}

// pingLoop pings every client each pingInterval; the pong's echo of the
// send time gives relayd_client_rtt_seconds without per-client state.
func (s *Server) pingLoop(ctx context.Context) {
	t := time.NewTicker(pingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, c := range s.snapshotClients() {
			var d [relayproto.PingLen]byte
			binary.BigEndian.PutUint64(d[:], uint64(s.nowNanos()))
			c.enqueueCtrl(relayproto.FramePing, d[:])
		}
	}
}
