// Package relayclient connects nodes (meshnode, loadtest) to Wiremesh
// relays. Dial makes one authenticated connection, racing QUIC against TLS
// over TCP; Client keeps one relay connection up with jittered backoff;
// Pool keeps several relays open at once (the home relay plus peers' home
// relays on demand) and closes idle non-home connections.
//
// Received packets go to Config.Handler straight from the receive loops,
// with no queue in between, so quic-go's datagram receive queue is drained
// as fast as the handler returns. Handlers must not block.
package relayclient

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
	"github.com/wiremesh/wiremesh/tlspin"
)

// Relay is what a client needs to know about a relay: where it is, the pin
// of its certificate and its key (the proof is sealed to it).
type Relay struct {
	Addr   string // host:port; QUIC on UDP, TLS fallback on the same TCP port
	Pin    string // tlspin pin of its certificate
	Key    key.RelayPublic
	Region string // informational
}

// Transport names reported by Conn.Transport.
const (
	TransportQUIC = relayproto.TransportQUIC
	TransportTCP  = relayproto.TransportTCP
)

// Packet is one packet received through a relay.
type Packet struct {
	Src     key.NodePublic
	Payload []byte // owned by the handler
	Disco   bool
}

// NoticeKind says what a Notice is about.
type NoticeKind int

// Notice kinds.
const (
	NoticePeerPresent NoticeKind = iota // Peer is on this relay (Handle set)
	NoticePeerGone                      // Peer left or was never here (Gone set)
	NoticeRestarting                    // the relay is draining (Restarting set)
	NoticeHealth                        // the relay's health message changed
)

// Notice is a control message from the relay.
type Notice struct {
	Kind NoticeKind
	// Relay is the relay the notice came from.
	Relay      Relay
	Peer       key.NodePublic
	Handle     uint32
	Gone       relayproto.PeerGoneReason
	Restarting relayproto.Restarting
	Health     string
}

// Config configures a connection to one relay.
type Config struct {
	Relay   Relay
	NodeKey key.NodePrivate
	// Token returns the current admission token (binary, admit package).
	Token func() []byte
	// Datagrams asks for packets as QUIC datagrams (when they fit) and
	// sends them that way; false uses the stream for everything.
	Datagrams bool
	Handler   func(Packet) // may be nil: packets are discarded
	OnNotice  func(Notice) // may be nil
	Log       *slog.Logger // nil: discard
	// Transport, if set, is the quic-go transport (UDP socket) to dial
	// from; many connections may share one. Nil: a socket per connection.
	Transport *quic.Transport
	// Prefs remembers which transport worked per relay; nil: no memory.
	Prefs *Prefs
	// DisableQUIC and DisableTCP force one transport (tests, operators).
	DisableQUIC, DisableTCP bool
	// FastPath makes Client negotiate the plain-UDP fast path after each
	// connect (see Conn.EnableFastPath); without one it carries on over
	// QUIC or TCP.
	FastPath bool
	// Shared, if set, is a UDP socket the fast path runs over instead of
	// one of its own (see SharedSocket). If it cannot share (ClaimFast
	// fails), the fast path opens its own socket.
	Shared SharedSocket
	// Control, if set, is called on every socket the client opens itself
	// (QUIC without Transport, TCP, the fast path's own UDP socket) before
	// it is used: a node that accepts subnet routes or uses an exit node
	// marks them so that they bypass its own routing table.
	Control func(network, address string, c syscall.RawConn) error
}

// Errors.
var (
	ErrNotConnected = errors.New("relayclient: not connected")
	ErrClosed       = errors.New("relayclient: connection closed")
)

// Timing. tcpHeadStart is how long QUIC may try alone before TCP joins
// the race (RFC 8305 uses 250 ms between address families for the same
// reason: give the preferred path a chance without stalling on it).
const (
	tcpHeadStart  = 250 * time.Millisecond
	dialTimeout   = 10 * time.Second
	keepAlive     = relayproto.KeepAlive
	idleTimeout   = 3 * keepAlive
	maxPendingPng = 16 // outstanding Ping calls per connection
	// maxHandles bounds the peer handles remembered per connection; a
	// relay announcing more peers than this only costs 28 bytes a packet.
	maxHandles = 4096
)

// Conn is one authenticated relay connection. Send and Ping are safe for
// concurrent use.
type Conn struct {
	cfg       Config
	log       *slog.Logger
	transport string
	handle    uint32
	region    string
	qc        *quic.Conn    // nil on TCP
	rw        io.ReadWriter // the stream (QUIC stream or tls.Conn)
	closeFn   func()

	wmu  sync.Mutex // serializes stream writes
	wbuf []byte

	mu struct {
		sync.Mutex
		handles map[key.NodePublic]uint32
		pings   map[[relayproto.PingLen]byte]chan struct{}
		err     error
		fastCh  chan fastMsg // fast-path control frames, while negotiating
	}
	// fast is the fast path, nil until EnableFastPath succeeds; the send
	// path loads it with no lock.
	fast     atomic.Pointer[fastPath]
	done     chan struct{}
	doneOnce sync.Once
	wg       sync.WaitGroup
}

// Transport returns "quic" or "tcp".
func (c *Conn) Transport() string { return c.transport }

// Handle returns the short handle the relay gave this client.
func (c *Conn) Handle() uint32 { return c.handle }

// Done is closed when the connection has failed or was closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, once Done is closed.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.err
}

// Close closes the connection and waits for its goroutines.
func (c *Conn) Close() error {
	c.fail(ErrClosed)
	c.wg.Wait()
	return nil
}

func (c *Conn) fail(err error) {
	c.doneOnce.Do(func() {
		c.mu.Lock()
		c.mu.err = err
		c.mu.Unlock()
		close(c.done)
		c.closeFn()
	})
}

// Dial connects to cfg.Relay and authenticates, racing QUIC and TLS over
// TCP Happy-Eyeballs style (QUIC gets a head start unless Prefs says TCP
// worked last time). A relay's refusal is returned as relayproto.Reject.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	raw, err := race(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("relayclient: dial %s: %w", cfg.Relay.Addr, err)
	}
	c, err := hello(ctx, cfg, raw)
	if err != nil {
		raw.close()
		return nil, fmt.Errorf("relayclient: %s: %w", cfg.Relay.Addr, err)
	}
	cfg.Prefs.remember(cfg.Relay.Addr, raw.transport)
	return c, nil
}

// rawConn is a transport-level connection before the hello.
type rawConn struct {
	transport string
	qc        *quic.Conn
	rw        io.ReadWriter
	exporter  func() ([]byte, error)
	close     func()
	setRD     func(time.Time)
}

func race(ctx context.Context, cfg Config) (*rawConn, error) {
	type result struct {
		c   *rawConn
		err error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan result, 2)
	attempts := 0
	tcpStarted := false
	startTCP := func() {
		if tcpStarted || cfg.DisableTCP {
			return
		}
		tcpStarted = true
		attempts++
		go func() { c, err := dialTCP(ctx, cfg); results <- result{c, err} }()
	}
	if !cfg.DisableQUIC {
		attempts++
		go func() { c, err := dialQUIC(ctx, cfg); results <- result{c, err} }()
	}
	head := tcpHeadStart
	if cfg.DisableQUIC || cfg.Prefs.get(cfg.Relay.Addr) == TransportTCP {
		head = 0
	}
	timer := time.NewTimer(head)
	defer timer.Stop()
	if head == 0 {
		startTCP()
	}
	var errs []error
	var won *rawConn
	for got := 0; got < attempts || (!tcpStarted && !cfg.DisableTCP); {
		select {
		case <-timer.C:
			startTCP()
		case r := <-results:
			got++
			if r.err != nil {
				errs = append(errs, r.err)
				startTCP() // QUIC failed early: do not wait out the head start
				continue
			}
			if won == nil {
				won = r.c
				cancel() // the loser aborts before it sends a hello
				// Reap a loser that completed anyway.
				if rem := attempts - got; rem > 0 {
					go func() {
						for range rem {
							if r := <-results; r.c != nil {
								r.c.close()
							}
						}
					}()
				}
				return won, nil
			}
		case <-ctx.Done():
			errs = append(errs, ctx.Err())
			return nil, errors.Join(errs...)
		}
		if attempts == 0 {
			break
		}
	}
	if len(errs) == 0 {
		errs = append(errs, errors.New("no transport enabled"))
	}
	return nil, errors.Join(errs...)
}

func tlsConfig(cfg Config) *tls.Config {
	host, _, _ := net.SplitHostPort(cfg.Relay.Addr)
	return tlspin.ClientConfig(cfg.Relay.Pin, host, relayproto.ALPN)
}

func dialQUIC(ctx context.Context, cfg Config) (*rawConn, error) {
	ua, err := net.ResolveUDPAddr("udp", cfg.Relay.Addr)
	if err != nil {
		return nil, err
	}
	qconf := &quic.Config{
		EnableDatagrams: true,
		MaxIdleTimeout:  idleTimeout,
		KeepAlivePeriod: keepAlive,
	}
	var qc *quic.Conn
	var own net.PacketConn // our own socket, closed with the connection
	switch {
	case cfg.Transport != nil:
		qc, err = cfg.Transport.Dial(ctx, ua, tlsConfig(cfg), qconf)
	case cfg.Control != nil:
		lc := net.ListenConfig{Control: cfg.Control}
		if own, err = lc.ListenPacket(ctx, "udp", ":0"); err == nil {
			qc, err = quic.Dial(ctx, own, ua, tlsConfig(cfg), qconf)
		}
	default:
		qc, err = quic.DialAddr(ctx, cfg.Relay.Addr, tlsConfig(cfg), qconf)
	}
	if err != nil {
		if own != nil {
			own.Close()
		}
		return nil, fmt.Errorf("quic: %w", err)
	}
	closeQC := func(msg string) {
		qc.CloseWithError(0, msg)
		if own != nil {
			own.Close()
		}
	}
	st, err := qc.OpenStream()
	if err != nil {
		closeQC("")
		return nil, fmt.Errorf("quic: %w", err)
	}
	return &rawConn{
		transport: TransportQUIC, qc: qc, rw: st,
		exporter: func() ([]byte, error) {
			cs := qc.ConnectionState().TLS
			return cs.ExportKeyingMaterial(relayproto.ExporterLabel, nil, relayproto.ExporterLen)
		},
		close: func() { closeQC("closed") },
		setRD: func(t time.Time) { st.SetReadDeadline(t) },
	}, nil
}

func dialTCP(ctx context.Context, cfg Config) (*rawConn, error) {
	d := tls.Dialer{Config: tlsConfig(cfg), NetDialer: &net.Dialer{Control: cfg.Control}}
	nc, err := d.DialContext(ctx, "tcp", cfg.Relay.Addr)
	if err != nil {
		return nil, fmt.Errorf("tcp: %w", err)
	}
	tc := nc.(*tls.Conn)
	return &rawConn{
		transport: TransportTCP, rw: tc,
		exporter: func() ([]byte, error) {
			cs := tc.ConnectionState()
			return cs.ExportKeyingMaterial(relayproto.ExporterLabel, nil, relayproto.ExporterLen)
		},
		close: func() { tc.Close() },
		setRD: func(t time.Time) { tc.SetReadDeadline(t) },
	}, nil
}

// hello authenticates raw and starts the receive loops.
func hello(ctx context.Context, cfg Config, raw *rawConn) (*Conn, error) {
	exp, err := raw.exporter()
	if err != nil {
		return nil, fmt.Errorf("tls exporter: %w", err)
	}
	h := relayproto.ClientHello{Version: relayproto.Version, Node: cfg.NodeKey.Public()}
	if cfg.Datagrams && raw.transport == TransportQUIC {
		h.Flags |= relayproto.FlagDatagrams
	}
	copy(h.Proof[:], key.Seal(cfg.NodeKey, cfg.Relay.Key, exp))
	if cfg.Token != nil {
		h.Token = cfg.Token()
	}
	if _, err := raw.rw.Write(relayproto.AppendFrame(nil, relayproto.FrameClientHello, h.Append(nil))); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	dl, _ := ctx.Deadline()
	raw.setRD(dl)
	r := relayproto.NewReader(raw.rw, relayproto.MaxBodyLen)
	typ, body, err := r.Next(nil)
	if err != nil {
		return nil, fmt.Errorf("read server hello: %w", err)
	}
	raw.setRD(time.Time{})
	switch typ {
	case relayproto.FrameReject:
		rj, err := relayproto.ParseReject(body)
		if err != nil {
			return nil, err
		}
		return nil, rj
	case relayproto.FrameServerHello:
	default:
		return nil, fmt.Errorf("relay answered %s", typ)
	}
	sh, err := relayproto.ParseServerHello(body)
	if err != nil {
		return nil, err
	}
	c := &Conn{cfg: cfg, log: cfg.Log, transport: raw.transport, handle: sh.Handle, region: sh.Region,
		qc: raw.qc, rw: raw.rw, closeFn: raw.close, done: make(chan struct{})}
	c.mu.handles = map[key.NodePublic]uint32{}
	c.mu.pings = map[[relayproto.PingLen]byte]chan struct{}{}
	c.wg.Add(1)
	go func() { defer c.wg.Done(); c.fail(c.readStream(r, raw.setRD)) }()
	if c.qc != nil {
		c.wg.Add(1)
		go func() { defer c.wg.Done(); c.readDatagrams() }()
	}
	if raw.transport == TransportTCP {
		c.wg.Add(1)
		go func() { defer c.wg.Done(); c.keepAliveLoop() }()
	}
	return c, nil
}

// keepAliveLoop sends keep-alives on TCP (QUIC has its own).
func (c *Conn) keepAliveLoop() {
	t := time.NewTicker(keepAlive)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			c.writeFrame(relayproto.FrameKeepAlive, nil)
		}
	}
}

func (c *Conn) readStream(r *relayproto.Reader, setRD func(time.Time)) error {
	for {
		setRD(time.Now().Add(idleTimeout))
		typ, body, err := r.Next(nil)
		if err != nil {
			return err
		}
		if err := c.handleFrame(typ, body, false); err != nil {
			return err
		}
	}
}

func (c *Conn) readDatagrams() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		d, err := c.qc.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		typ, body, err := relayproto.SplitDatagram(d)
		if err == nil {
			err = c.handleFrame(typ, body, true)
		}
		if err != nil {
			c.fail(err)
			return
		}
	}
}

func (c *Conn) handleFrame(typ relayproto.FrameType, body []byte, dgram bool) error {
	switch typ {
	case relayproto.FrameRecvPacket, relayproto.FrameRecvDisco:
		src, payload, err := relayproto.ParseKeyPacket(body)
		if err != nil {
			return err
		}
		if c.cfg.Handler != nil {
			c.cfg.Handler(Packet{Src: src, Payload: payload, Disco: typ == relayproto.FrameRecvDisco})
		}
	case relayproto.FramePeerPresent:
		k, h, err := relayproto.ParsePeerPresent(body)
		if err != nil {
			return err
		}
		c.mu.Lock()
		if len(c.mu.handles) >= maxHandles {
			clear(c.mu.handles) // keys still work; handles are relearned
		}
		c.mu.handles[k] = h
		c.mu.Unlock()
		c.notify(Notice{Kind: NoticePeerPresent, Peer: k, Handle: h})
	case relayproto.FramePeerGone:
		k, why, err := relayproto.ParsePeerGone(body)
		if err != nil {
			return err
		}
		c.mu.Lock()
		delete(c.mu.handles, k)
		c.mu.Unlock()
		c.notify(Notice{Kind: NoticePeerGone, Peer: k, Gone: why})
	case relayproto.FramePing:
		if _, err := relayproto.ParsePing(body); err != nil {
			return err
		}
		c.writeFrame(relayproto.FramePong, body)
	case relayproto.FramePong:
		d, err := relayproto.ParsePing(body)
		if err != nil {
			return err
		}
		c.mu.Lock()
		ch := c.mu.pings[d]
		delete(c.mu.pings, d)
		c.mu.Unlock()
		if ch != nil {
			close(ch)
		}
	case relayproto.FrameRestarting:
		rs, err := relayproto.ParseRestarting(body)
		if err != nil {
			return err
		}
		c.notify(Notice{Kind: NoticeRestarting, Restarting: rs})
	case relayproto.FrameHealth:
		m, err := relayproto.ParseHealth(body)
		if err != nil {
			return err
		}
		c.notify(Notice{Kind: NoticeHealth, Health: m})
	case relayproto.FrameKeepAlive:
	case relayproto.FrameFastPathOffer, relayproto.FrameFastPathReady:
		c.handleFastFrame(typ, body)
	default:
		return fmt.Errorf("%w: %s from relay", relayproto.ErrMalformed, typ)
	}
	return nil
}

func (c *Conn) notify(n Notice) {
	if c.cfg.OnNotice != nil {
		n.Relay = c.cfg.Relay
		c.cfg.OnNotice(n)
	}
}

func (c *Conn) writeFrame(t relayproto.FrameType, body []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wbuf = relayproto.AppendFrame(c.wbuf[:0], t, body)
	_, err := c.rw.Write(c.wbuf)
	if err != nil {
		c.fail(err)
	}
	return err
}

// Send relays payload to the node dst. With datagrams on, it goes as a
// QUIC datagram (addressed by handle once the relay has told us one) and
// falls back to the stream when too large. It blocks while quic-go's
// datagram send queue is full, which is the backpressure.
func (c *Conn) Send(dst key.NodePublic, payload []byte) error {
	select {
	case <-c.done:
		return ErrClosed
	default:
	}
	if len(payload) > relayproto.MaxPayloadLen {
		return fmt.Errorf("relayclient: packet of %d bytes: %w", len(payload), relayproto.ErrOversized)
	}
	if ok, err := c.sendFast(dst, payload); ok {
		return err
	}
	c.mu.Lock()
	h, haveHandle := c.mu.handles[dst]
	c.mu.Unlock()
	if c.cfg.Datagrams && c.qc != nil {
		// SendDatagram copies, so the buffer goes back to the pool.
		bp := dgramPool.Get().(*[]byte)
		d := (*bp)[:0]
		if haveHandle {
			d = relayproto.AppendHandlePacket(append(d, byte(relayproto.FrameSendHandle)), h, payload)
		} else {
			d = relayproto.AppendKeyPacket(append(d, byte(relayproto.FrameSendPacket)), dst, payload)
		}
		err := c.qc.SendDatagram(d)
		*bp = d
		dgramPool.Put(bp)
		var tooLarge *quic.DatagramTooLargeError
		if err == nil || !errors.As(err, &tooLarge) {
			return err
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if haveHandle {
		c.wbuf = relayproto.AppendHeader(c.wbuf[:0], relayproto.FrameSendHandle, relayproto.HandleLen+len(payload))
		c.wbuf = relayproto.AppendHandlePacket(c.wbuf, h, payload)
	} else {
		c.wbuf = relayproto.AppendHeader(c.wbuf[:0], relayproto.FrameSendPacket, relayproto.KeyLen+len(payload))
		c.wbuf = relayproto.AppendKeyPacket(c.wbuf, dst, payload)
	}
	if _, err := c.rw.Write(c.wbuf); err != nil {
		c.fail(err)
		return err
	}
	return nil
}

// dgramPool holds datagram build buffers; 2 KiB covers any datagram a
// 1500-byte path can carry, and larger ones simply grow their buffer.
var dgramPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// SendDisco relays a disco packet; the relay gives disco its own queue.
func (c *Conn) SendDisco(dst key.NodePublic, payload []byte) error {
	return c.writeFrame(relayproto.FrameSendDisco, relayproto.AppendKeyPacket(nil, dst, payload))
}

// Ping measures the round trip to the relay over the control stream.
func (c *Conn) Ping(ctx context.Context) (time.Duration, error) {
	var d [relayproto.PingLen]byte
	rand.Read(d[:])
	ch := make(chan struct{})
	c.mu.Lock()
	if len(c.mu.pings) >= maxPendingPng {
		c.mu.Unlock()
		return 0, errors.New("relayclient: too many pings outstanding")
	}
	c.mu.pings[d] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.mu.pings, d)
		c.mu.Unlock()
	}()
	start := time.Now()
	if err := c.writeFrame(relayproto.FramePing, d[:]); err != nil {
		return 0, err
	}
	select {
	case <-ch:
		return time.Since(start), nil
	case <-c.done:
		return 0, ErrClosed
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Prefs remembers, per relay address, which transport connected last, so
// a network that drops UDP does not pay the QUIC head start every time.
type Prefs struct {
	mu sync.Mutex
	m  map[string]string
}

func (p *Prefs) get(addr string) string {
	if p == nil {
		return ""
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.m[addr]
}

func (p *Prefs) remember(addr, transport string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]string{}
	}
	p.m[addr] = transport
}

// Preferred returns the transport that last worked for addr, or "".
func (p *Prefs) Preferred(addr string) string { return p.get(addr) }
