package loadtest

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayclient"
	"github.com/wiremesh/wiremesh/relayproto"
)

// Batched clients (--client-batch N > 1). With one system call per packet
// the load generator's own clients, not the relay, are what runs out of
// CPU first on a small machine, and the relay's batching cannot show
// against a forwarder that handles a datagram at a time. With a batch,
// every client sends and receives up to N datagrams per sendmmsg/recvmmsg:
// the fast-path clients over a batchSocket of their own (relayclient's
// SharedSocket, so the client builds the FastSend datagrams itself), the
// UDP forwarder's clients on their connected sockets, alike.

// maxClientBatch bounds --client-batch (the kernel's UIO_MAXIOV is 1024).
const maxClientBatch = 256

// batchSocket is one fast-path client's UDP socket, shared with
// relayclient for the Bind/Challenge exchange. Its read loop hands FastRecv
// payloads from a claimed relay address to onRecv directly and everything
// else from a claimed address to the claim's function.
type batchSocket struct {
	conn   *net.UDPConn
	pc     *ipv4.PacketConn
	onRecv func(payload []byte) // nil: a sender, which counts nothing
	done   chan struct{}

	mu     sync.Mutex
	claims map[netip.AddrPort]func([]byte)
}

func newBatchSocket(onRecv func([]byte)) (*batchSocket, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	c.SetReadBuffer(udpSocketBuffer)
	c.SetWriteBuffer(udpSocketBuffer)
	return &batchSocket{conn: c, pc: ipv4.NewPacketConn(c), onRecv: onRecv, done: make(chan struct{}),
		claims: map[netip.AddrPort]func([]byte){}}, nil
}

// WriteFast implements relayclient.SharedSocket.
func (s *batchSocket) WriteFast(d []byte, dst netip.AddrPort) error {
	_, err := s.conn.WriteToUDPAddrPort(d, dst)
	return err
}

// ClaimFast implements relayclient.SharedSocket.
func (s *batchSocket) ClaimFast(src netip.AddrPort, fn func(d []byte)) (any, func(), error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.claims[src] = fn
	return nil, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.claims, src)
	}, nil
}

// readLoop reads batches of n datagrams until the socket is closed.
func (s *batchSocket) readLoop(n int) {
	defer close(s.done)
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, relayproto.MaxFastDatagram)}
	}
	for {
		k, err := s.pc.ReadBatch(ms, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		for i := range ms[:k] {
			ua, ok := ms[i].Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			from := ua.AddrPort()
			from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			s.mu.Lock()
			fn := s.claims[from]
			s.mu.Unlock()
			if fn == nil {
				continue // not from a relay this client talks to
			}
			d := ms[i].Buffers[0][:ms[i].N]
			if s.onRecv != nil {
				if fd, err := relayproto.ParseFast(d); err == nil && fd.Kind == relayproto.FastRecv {
					s.onRecv(fd.Payload)
					continue
				}
			}
			fn(d)
		}
	}
}

// close closes the socket and waits for the read loop.
func (s *batchSocket) close() {
	s.conn.Close()
	<-s.done
}

// writeAll sends every datagram of ds with sendmmsg, to dst (nil: the
// socket's connected peer), using ms as scratch; it returns ms for reuse.
func writeAll(pc *ipv4.PacketConn, ms []ipv4.Message, ds [][]byte, dst net.Addr) ([]ipv4.Message, error) {
	ms = ms[:0]
	for i, d := range ds {
		if i < cap(ms) {
			ms = ms[:i+1]
		} else {
			ms = append(ms, ipv4.Message{})
		}
		m := &ms[i]
		if len(m.Buffers) != 1 {
			m.Buffers = make([][]byte, 1)
		}
		m.Buffers[0], m.Addr, m.N = d, dst, 0
	}
	for off := 0; off < len(ms); {
		n, err := pc.WriteBatch(ms[off:], 0)
		if err != nil {
			return ms, err
		}
		off += n
	}
	return ms, nil
}

// batchPair opens a sender's and a receiver's batchSocket for one pair,
// with their read loops; the receiver's records into st.
func batchPair(st *counters, t0 time.Time, n int) (sa, sb *batchSocket, err error) {
	if sa, err = newBatchSocket(nil); err != nil {
		return nil, nil, err
	}
	if sb, err = newBatchSocket(func(p []byte) { st.record(t0, p) }); err != nil {
		sa.conn.Close()
		return nil, nil, err
	}
	go sa.readLoop(n)
	go sb.readLoop(n)
	return sa, sb, nil
}

// fastBatchSender sends a's packets to dst as FastSend datagrams, a batch
// per sendmmsg, from a's batchSocket s to the relay's fast-path port.
func fastBatchSender(a *relayclient.Conn, s *batchSocket, dst key.NodePublic, spec pairSpec) (sender, error) {
	route := a.FastRoute()
	if route == nil {
		return nil, errors.New("loadtest: the fast path is not on the client's batch socket")
	}
	to := net.UDPAddrFromAddrPort(route.Addr)
	dgs := make([][]byte, spec.batch)
	for i := range dgs {
		dgs[i] = make([]byte, 0, spec.size+relayproto.FastSendOverhead)
	}
	var ms []ipv4.Message
	return func(ps [][]byte) error {
		for len(ps) > 0 {
			k := min(len(ps), len(dgs))
			for i, p := range ps[:k] {
				dgs[i] = relayproto.AppendFastSend(dgs[i][:0], route.Session, dst, p)
			}
			var err error
			if ms, err = writeAll(s.pc, ms, dgs[:k], to); err != nil {
				return err
			}
			ps = ps[k:]
		}
		return nil
	}, nil
}
