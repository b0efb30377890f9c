package relayd

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
)

// Regional mesh.
//
// Every relay dials every address in its mesh list over QUIC with
// relayproto.MeshALPN. Both sides prove knowledge of the mesh secret with
// an HMAC over the TLS exporter value, so a MAC cannot be replayed on
// another session and neither side needs the other's certificate pin.
//
// A link is one-way: the dialer pushes MeshPresent/MeshGone for its own
// clients and MeshForward for packets to clients on the accepting relay.
// Two relays that list each other hold two links, one per direction, so
// each relay learns where every client of the region is from its inbound
// links and sends through its outbound ones. Packets are forwarded one hop
// only: a MeshForward is delivered to a local client or dropped.

// Mesh timing and bounds.
const (
	meshBackoffMin = 500 * time.Millisecond
	meshBackoffMax = 30 * time.Second
	// meshQueueLen is the data queue to one mesh peer: it carries many
	// clients' traffic, so it is 8× a client's.
	meshQueueLen = 8 * DefaultQueueLen
	// meshCtrlMax bounds queued presence frames. Past it the link is
	// reset and resynchronized from scratch, which is always correct.
	meshCtrlMax = 1 << 16
)

// MAC labels: the dialer and the acceptor prove with different labels so
// one side's MAC is never valid as the other's.
const (
	macDial   = "wiremesh mesh dial v1"
	macAccept = "wiremesh mesh accept v1"
)

func meshMAC(secret []byte, label string, exporter []byte, relay key.RelayPublic) [relayproto.MACLen]byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(label))
	h.Write(exporter)
	k := relay.Raw()
	h.Write(k[:])
	var out [relayproto.MACLen]byte
	copy(out[:], h.Sum(nil))
	return out
}

// meshState is the runtime-updatable mesh configuration.
type meshState struct {
	mu      sync.Mutex
	peers   []string
	secret  []byte
	changed chan struct{} // cap 1
	inbound map[key.RelayPublic]*quic.Conn
}

func (m *meshState) init(peers []string, secret []byte) {
	m.changed = make(chan struct{}, 1)
	m.inbound = map[key.RelayPublic]*quic.Conn{}
	m.set(peers, secret)
}

func (m *meshState) set(peers []string, secret []byte) {
	m.mu.Lock()
	m.peers = slices.Clone(peers)
	m.secret = slices.Clone(secret)
	m.mu.Unlock()
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

func (m *meshState) get() ([]string, []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.peers, m.secret
}

// SetMesh replaces the regional mesh peers and secret while serving. Links
// to removed peers close; new peers are dialed. An empty secret disables
// the mesh in both directions.
func (s *Server) SetMesh(peers []string, secret []byte) { s.mesh.set(peers, secret) }

// MeshPeers returns the relay keys of peers with an authenticated outbound
// link.
func (s *Server) MeshPeers() []key.RelayPublic {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []key.RelayPublic
	for k := range s.mu.meshOut {
		out = append(out, k)
	}
	return out
}

// meshLoop keeps one dialer per configured peer.
func (s *Server) meshLoop(ctx context.Context) {
	type dialer struct {
		cancel context.CancelFunc
		secret string
	}
	running := map[string]dialer{}
	defer func() {
		for _, d := range running {
			d.cancel()
		}
	}()
	for {
		peers, secret := s.mesh.get()
		want := map[string]bool{}
		if len(secret) > 0 {
			for _, p := range peers {
				want[p] = true
			}
		}
		for addr, d := range running {
			if !want[addr] || d.secret != string(secret) {
				d.cancel()
				delete(running, addr)
			}
		}
		for addr := range want {
			if _, ok := running[addr]; ok {
				continue
			}
			dctx, cancel := context.WithCancel(ctx)
			running[addr] = dialer{cancel, string(secret)}
			sec := slices.Clone(secret)
			s.spawn(func() { s.dialMesh(dctx, addr, sec) })
		}
		select {
		case <-ctx.Done():
			return
		case <-s.mesh.changed:
		}
	}
}

// dialMesh keeps an outbound link to addr up until ctx ends.
func (s *Server) dialMesh(ctx context.Context, addr string, secret []byte) {
	backoff := meshBackoffMin
	for ctx.Err() == nil {
		start := time.Now()
		self, err := s.meshLink(ctx, addr, secret)
		if self {
			s.log.Debug("mesh peer is this relay; not dialing it", "relay", addr)
			return
		}
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("mesh link down", "relay", addr, "err", err)
		if time.Since(start) > meshBackoffMax {
			backoff = meshBackoffMin
		}
		wait := backoff/2 + rand.N(backoff/2+1) // jitter: [b/2, b]
		backoff = min(2*backoff, meshBackoffMax)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// meshLink dials addr, authenticates and serves the link until it fails.
func (s *Server) meshLink(ctx context.Context, addr string, secret []byte) (self bool, err error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return false, fmt.Errorf("resolve: %w", err)
	}
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HelloTimeout)
	defer cancel()
	qc, err := s.tr.Dial(hctx, ua, &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Peers are configured by address only; the secret's MACs over
		// the exporter authenticate both ends instead of a certificate.
		InsecureSkipVerify: true,
		NextProtos:         []string{relayproto.MeshALPN},
	}, quicConfig(s.cfg.HelloTimeout))
	if err != nil {
		return false, fmt.Errorf("dial: %w", err)
	}
	defer qc.CloseWithError(0, "mesh link closed")
	st, err := qc.OpenStreamSync(hctx)
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	cs := qc.ConnectionState().TLS
	exp, err := cs.ExportKeyingMaterial(relayproto.MeshExporterLabel, nil, relayproto.ExporterLen)
	if err != nil {
		return false, fmt.Errorf("exporter: %w", err)
	}
	hello := relayproto.MeshHello{Relay: s.pub, MAC: meshMAC(secret, macDial, exp, s.pub), Region: s.cfg.Region}
	if _, err := st.Write(relayproto.AppendFrame(nil, relayproto.FrameMeshHello, hello.Append(nil))); err != nil {
		return false, fmt.Errorf("send hello: %w", err)
	}
	st.SetReadDeadline(time.Now().Add(s.cfg.HelloTimeout))
	typ, body, err := relayproto.NewReader(st, relayproto.MaxHelloLen).Next(nil)
	if err != nil {
		return false, fmt.Errorf("read hello: %w", err)
	}
	st.SetReadDeadline(time.Time{})
	if typ != relayproto.FrameMeshHelloOK {
		return false, fmt.Errorf("peer answered %s", typ)
	}
	ok, err := relayproto.ParseMeshHello(body)
	if err != nil {
		return false, err
	}
	want := meshMAC(secret, macAccept, exp, ok.Relay)
	if !hmac.Equal(want[:], ok.MAC[:]) {
		return false, fmt.Errorf("peer does not know the mesh secret")
	}
	if ok.Relay == s.pub {
		return true, nil
	}
	mo := &meshOut{s: s, relay: ok.Relay, str: st, wake: make(chan struct{}, 1), done: make(chan struct{})}
	s.mu.Lock()
	old := s.mu.meshOut[ok.Relay]
	s.mu.meshOut[ok.Relay] = mo
	s.m.meshPeers.Set(float64(len(s.mu.meshOut)))
	s.mu.Unlock()
	if old != nil {
		old.close()
	}
	s.log.Info("mesh link up", "relay", addr, "relay_key", ok.Relay.ShortString())
	for _, c := range s.snapshotClients() {
		mo.enqueueCtrl(relayproto.FrameMeshPresent, relayproto.AppendKey(nil, c.key))
	}
	stop := context.AfterFunc(ctx, mo.close)
	defer stop()
	// Reads detect the peer closing; the link carries nothing inbound.
	go func() {
		var b [1]byte
		st.Read(b[:])
		mo.close()
	}()
	err = mo.write()
	mo.close()
	s.mu.Lock()
	if s.mu.meshOut[ok.Relay] == mo {
		delete(s.mu.meshOut, ok.Relay)
	}
	s.m.meshPeers.Set(float64(len(s.mu.meshOut)))
	s.mu.Unlock()
	return false, err
}

// meshOut is the sending side of one authenticated outbound mesh link.
type meshOut struct {
	s     *Server
	relay key.RelayPublic
	str   *quic.Stream
	wake  chan struct{}
	done  chan struct{}
	once  sync.Once
	mu    struct {
		sync.Mutex
		ctrl [][]byte
		data ring // payload holds a whole MeshForward frame
	}
}

func (mo *meshOut) close() {
	mo.once.Do(func() {
		close(mo.done)
		mo.str.CancelRead(0)
		mo.str.Close()
	})
}

func (mo *meshOut) signal() {
	select {
	case mo.wake <- struct{}{}:
	default:
	}
}

func (mo *meshOut) enqueueCtrl(t relayproto.FrameType, body []byte) {
	mo.mu.Lock()
	if len(mo.mu.ctrl) >= meshCtrlMax {
		mo.mu.Unlock()
		mo.close() // resync on reconnect
		return
	}
	mo.mu.ctrl = append(mo.mu.ctrl, relayproto.AppendFrame(nil, t, body))
	mo.mu.Unlock()
	mo.signal()
}

func (mo *meshOut) enqueueData(frame []byte, enq int64) {
	mo.mu.Lock()
	_, dropped := mo.mu.data.push(packet{payload: frame, enq: enq}, meshQueueLen)
	mo.mu.Unlock()
	if dropped {
		mo.s.m.drops.WithLabelValues(dropMeshQueueFull).Inc()
	}
	mo.signal()
}

func (mo *meshOut) write() error {
	var buf []byte
	keepalive := time.NewTicker(KeepAlive)
	defer keepalive.Stop()
	for {
		select {
		case <-mo.wake:
		case <-keepalive.C:
			mo.enqueueCtrl(relayproto.FrameKeepAlive, nil)
			continue
		case <-mo.done:
			return fmt.Errorf("closed")
		}
		for {
			mo.mu.Lock()
			ctrl := mo.mu.ctrl
			mo.mu.ctrl = nil
			buf = buf[:0]
			for _, f := range ctrl {
				buf = append(buf, f...)
			}
			n := 0
			for len(buf) < writeBatch {
				p, ok := mo.mu.data.pop()
				if !ok {
					break
				}
				buf = append(buf, p.payload...)
				n++
			}
			mo.mu.Unlock()
			if len(buf) == 0 {
				break
			}
			if _, err := mo.str.Write(buf); err != nil {
				return err
			}
			mo.s.m.meshOutPkts.Add(float64(n))
		}
	}
}

// meshAnnounce tells every mesh peer that k arrived or left.
func (s *Server) meshAnnounce(k key.NodePublic, present bool) {
	s.mu.RLock()
	outs := make([]*meshOut, 0, len(s.mu.meshOut))
	for _, mo := range s.mu.meshOut {
		outs = append(outs, mo)
	}
	s.mu.RUnlock()
	t := relayproto.FrameMeshGone
	if present {
		t = relayproto.FrameMeshPresent
	}
	for _, mo := range outs {
		mo.enqueueCtrl(t, relayproto.AppendKey(nil, k))
	}
}

// meshForward sends a packet for dst to the mesh peer it is on.
func (s *Server) meshForward(via key.RelayPublic, src, dst key.NodePublic, payload []byte, disco bool) {
	s.mu.RLock()
	mo := s.mu.meshOut[via]
	s.mu.RUnlock()
	if mo == nil {
		s.m.drops.WithLabelValues(dropNoSuchPeer).Inc()
		return
	}
	var fl byte
	if disco {
		fl = relayproto.MeshFlagDisco
	}
	n := 2*relayproto.KeyLen + 1 + len(payload)
	frame := relayproto.AppendHeader(make([]byte, 0, relayproto.HeaderLen+n), relayproto.FrameMeshForward, n)
	frame = relayproto.AppendMeshForward(frame, src, dst, fl, payload)
	mo.enqueueData(frame, s.nowNanos())
}

// serveMeshIn serves an inbound link from a mesh peer. Until it proves the
// mesh secret by deadline it holds the pending slot pc, like a client.
func (s *Server) serveMeshIn(ctx context.Context, qc *quic.Conn, pc *pendingConn, deadline time.Time) {
	defer qc.CloseWithError(0, "mesh link closed")
	_, secret := s.mesh.get()
	if len(secret) == 0 {
		s.m.rejects.WithLabelValues(relayproto.ReasonOther.String()).Inc()
		return
	}
	hctx, cancel := context.WithDeadline(ctx, deadline)
	st, err := qc.AcceptStream(hctx)
	cancel()
	if err != nil {
		return
	}
	st.SetReadDeadline(deadline)
	r := relayproto.NewReader(st, relayproto.MaxHelloLen)
	typ, body, err := r.Next(nil)
	if err != nil || typ != relayproto.FrameMeshHello {
		s.m.badFrames.WithLabelValues("unexpected").Inc()
		return
	}
	h, err := relayproto.ParseMeshHello(body)
	if err != nil {
		s.m.badFrames.WithLabelValues(relayproto.BadFrameReason(err)).Inc()
		return
	}
	cs := qc.ConnectionState().TLS
	exp, err := cs.ExportKeyingMaterial(relayproto.MeshExporterLabel, nil, relayproto.ExporterLen)
	if err != nil {
		return
	}
	want := meshMAC(secret, macDial, exp, h.Relay)
	if !hmac.Equal(want[:], h.MAC[:]) {
		s.m.rejects.WithLabelValues(relayproto.ReasonBadProof.String()).Inc()
		s.log.Warn("mesh peer failed authentication", "addr", qc.RemoteAddr().String())
		return
	}
	ok := relayproto.MeshHello{Relay: s.pub, MAC: meshMAC(secret, macAccept, exp, s.pub)}
	if _, err := st.Write(relayproto.AppendFrame(nil, relayproto.FrameMeshHelloOK, ok.Append(nil))); err != nil {
		return
	}
	if h.Relay == s.pub {
		return // we dialed ourselves
	}
	s.pending.release(pc)
	s.mesh.mu.Lock()
	old := s.mesh.inbound[h.Relay]
	s.mesh.inbound[h.Relay] = qc
	s.mesh.mu.Unlock()
	if old != nil {
		old.CloseWithError(0, "replaced")
	}
	defer func() {
		s.mesh.mu.Lock()
		current := s.mesh.inbound[h.Relay] == qc
		if current {
			delete(s.mesh.inbound, h.Relay)
		}
		s.mesh.mu.Unlock()
		if !current {
			return
		}
		s.mu.Lock()
		for k, via := range s.mu.remote {
			if via == h.Relay {
				delete(s.mu.remote, k)
			}
		}
		s.mu.Unlock()
	}()
	stop := context.AfterFunc(ctx, func() { qc.CloseWithError(0, "relay shutting down") })
	defer stop()
	r.SetMax(relayproto.MaxBodyLen)
	for {
		st.SetReadDeadline(time.Now().Add(IdleTimeout))
		typ, body, err := r.Next(nil)
		if err != nil {
			if ctx.Err() == nil && qc.Context().Err() == nil {
				s.m.badFrames.WithLabelValues(relayproto.BadFrameReason(err)).Inc()
			}
			return
		}
		switch typ {
		case relayproto.FrameMeshPresent, relayproto.FrameMeshGone:
			k, err := relayproto.ParseKey(body)
			if err != nil {
				s.m.badFrames.WithLabelValues(relayproto.BadFrameReason(err)).Inc()
				return
			}
			s.mu.Lock()
			if typ == relayproto.FrameMeshPresent {
				if _, local := s.mu.clients[k]; !local && !s.revoked(k, s.cfg.Now()) {
					s.mu.remote[k] = h.Relay
				}
			} else if s.mu.remote[k] == h.Relay {
				delete(s.mu.remote, k)
			}
			s.mu.Unlock()
		case relayproto.FrameMeshForward:
			src, dst, fl, payload, err := relayproto.ParseMeshForward(body)
			if err != nil {
				s.m.badFrames.WithLabelValues(relayproto.BadFrameReason(err)).Inc()
				return
			}
			s.m.meshInPkts.Inc()
			s.mu.RLock()
			c := s.mu.clients[dst]
			s.mu.RUnlock()
			if c == nil {
				s.m.drops.WithLabelValues(dropNoSuchPeer).Inc()
				continue
			}
			c.enqueue(packet{src: src, payload: payload, enq: s.nowNanos()}, fl&relayproto.MeshFlagDisco != 0, nil, false)
		case relayproto.FrameKeepAlive:
		default:
			s.m.badFrames.WithLabelValues("unexpected").Inc()
			return
		}
	}
}
