package relayd

import (
	"bytes"
	"errors"
	"net"
	"testing"

	"golang.org/x/net/ipv4"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
)

// Fixed keys of the fuzzed clients, so seeds can address them.
var (
	fuzzSender   = key.PublicFromRaw[key.Node]([key.Len]byte{1: 0xaa, 31: 1})
	fuzzReceiver = key.PublicFromRaw[key.Node]([key.Len]byte{1: 0xbb, 31: 2})
)

// fuzzFrameSeeds are frame sequences a client may send after its hello.
func fuzzFrameSeeds() [][]byte {
	f := relayproto.AppendFrame
	var ping [relayproto.PingLen]byte
	seq := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	return [][]byte{
		seq(f(nil, relayproto.FrameSendPacket, relayproto.AppendKeyPacket(nil, fuzzReceiver, []byte("wg"))),
			f(nil, relayproto.FrameSendHandle, relayproto.AppendHandlePacket(nil, 1, []byte("by handle")))),
		seq(f(nil, relayproto.FrameSendDisco, relayproto.AppendKeyPacket(nil, fuzzReceiver, []byte("disco"))),
			f(nil, relayproto.FramePing, ping[:]), f(nil, relayproto.FramePong, ping[:]), f(nil, relayproto.FrameKeepAlive, nil)),
		seq(f(nil, relayproto.FrameFastPathRequest, nil), f(nil, relayproto.FrameFastPathConfirm, make([]byte, relayproto.ChallengeLen)),
			f(nil, relayproto.FrameSendPacket, relayproto.AppendKeyPacket(nil, key.NodePublic{}, nil))),
		seq(f(nil, relayproto.FrameSendPacket, relayproto.AppendKeyPacket(nil, fuzzReceiver, make([]byte, 60000))),
			f(nil, relayproto.FrameSendHandle, relayproto.AppendHandlePacket(nil, 7, nil))),
		f(nil, relayproto.FrameClientHello, make([]byte, 40)), // not allowed after the hello
		{0xff, 0, 0, 0},
	}
}

// FuzzServerFrames drives a relay's per-client frame handling with a fuzzed
// frame sequence from one admitted client, next to a receiver that never
// reads, and checks the queue, handle and control-queue bounds after every
// frame. Frames go through the stream reader, and the same bytes are also
// fed as one datagram.
func FuzzServerFrames(f *testing.F) {
	s := newTestServer(f, func(c *Config) {
		c.ListenFast = "127.0.0.1:0"
		c.FastShared = true
		c.QueueLen = 8
		c.QueueBytes = 4096
	})
	for _, b := range fuzzFrameSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		src := s.register(newFakeConn(), relayproto.ClientHello{Version: relayproto.Version, Node: fuzzSender})
		dst := s.register(newFakeConn(), relayproto.ClientHello{Version: relayproto.Version, Node: fuzzReceiver})
		defer func() {
			for _, c := range []*client{src, dst} {
				c.close("fuzz done")
				s.unregister(c)
			}
		}()
		check := func() {
			dst.mu.Lock()
			qb, sum := dst.mu.qbytes, 0
			for _, q := range []*ring{&dst.mu.data, &dst.mu.disco} {
				for i := range q.n {
					sum += len(q.buf[(q.head+i)%len(q.buf)].payload)
				}
			}
			dst.mu.Unlock()
			if qb != sum || qb > s.cfg.QueueBytes {
				t.Fatalf("receiver queue holds %d bytes, accounted %d, cap %d", sum, qb, s.cfg.QueueBytes)
			}
			src.mu.Lock()
			nctrl := len(src.mu.ctrl)
			src.mu.Unlock()
			if nctrl > ctrlQueueLen {
				t.Fatalf("%d control frames queued", nctrl)
			}
			src.handles.RLock()
			nh := len(src.handles.byKey)
			src.handles.RUnlock()
			if nh > maxPeerHandles {
				t.Fatalf("%d handles", nh)
			}
		}
		r := relayproto.NewReader(bytes.NewReader(in), relayproto.MaxBodyLen)
		for {
			typ, body, err := r.Next(nil)
			if err != nil {
				break
			}
			if err := src.handleFrame(typ, body); err != nil && !errors.Is(err, errUnexpected) &&
				!errors.Is(err, relayproto.ErrMalformed) && !errors.Is(err, relayproto.ErrTruncated) &&
				!errors.Is(err, relayproto.ErrOversized) && !errors.Is(err, relayproto.ErrUnknown) {
				t.Fatalf("frame %s: unclassified error %v", typ, err)
			}
			check()
		}
		if typ, body, err := relayproto.SplitDatagram(in); err == nil {
			src.handleFrame(typ, body)
			check()
		}
	})
}

// fuzzSessionMark in a datagram's second byte makes FuzzFastDatagrams put
// the sender's real (random) session id there, so seeds reach past the
// session lookup.
const fuzzSessionMark = 0xa5

// fuzzFastSeeds are batches for FuzzFastDatagrams: each datagram is
// length(2) flags(1) bytes; flag bit 0 sends it from a stranger's address.
func fuzzFastSeeds() [][]byte {
	mk := func(flags byte, d []byte) []byte {
		return append([]byte{byte(len(d) >> 8), byte(len(d)), flags}, d...)
	}
	marked := func(kind byte, rest []byte) []byte {
		d := append([]byte{kind, fuzzSessionMark}, make([]byte, relayproto.SessionLen-1)...)
		return append(d, rest...)
	}
	recv := fuzzReceiver.Raw()
	send := marked(relayproto.FastSend, append(recv[:], bytes.Repeat([]byte{7}, 1280)...))
	return [][]byte{
		bytes.Join([][]byte{mk(0, send), mk(0, send), mk(1, send)}, nil),
		bytes.Join([][]byte{mk(0, marked(relayproto.FastBind, nil)), mk(1, marked(relayproto.FastBind, nil))}, nil),
		mk(0, []byte{relayproto.FastRecv}),
		mk(0, append([]byte{relayproto.FastSend}, make([]byte, 60)...)),
		{0, 0, 0},
	}
}

// FuzzFastDatagrams feeds fuzzed batches of fast-path datagrams, from the
// validated address and from a stranger, through the batched fast path to
// a receiver with its own fast path; nothing may panic and the batch must
// come out empty.
func FuzzFastDatagrams(f *testing.F) {
	s := newTestServer(f, func(c *Config) { c.ListenFast = "127.0.0.1:0" })
	a := newFastPeer(f, s)
	recvCl := s.register(newFakeConn(), relayproto.ClientHello{Version: relayproto.Version, Node: fuzzReceiver})
	recvCl.startFastPath()
	f.Cleanup(func() { recvCl.close("fuzz done"); s.unregister(recvCl) })
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { sink.Close() })
	sa := sink.LocalAddr().(*net.UDPAddr).AddrPort()
	recvCl.fast.Load().addr.Store(&sa)
	stranger := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 9}
	for _, b := range fuzzFastSeeds() {
		f.Add(b)
	}
	fb := newFastBatch()
	f.Fuzz(func(t *testing.T, in []byte) {
		var msgs []ipv4.Message
		for len(in) >= 3 && len(msgs) < fastBatchLen {
			n, flags := int(in[0])<<8|int(in[1]), in[2]
			in = in[3:]
			n = min(n, len(in), fastBufLen)
			buf := make([]byte, fastBufLen)
			copy(buf, in[:n])
			in = in[n:]
			if n > relayproto.SessionLen && buf[1] == fuzzSessionMark {
				copy(buf[1:], a.fs.session[:])
			}
			var from net.Addr = a.sock.LocalAddr()
			if flags&1 != 0 {
				from = stranger
			}
			msgs = append(msgs, ipv4.Message{Buffers: [][]byte{buf}, N: n, Addr: from})
		}
		s.handleFastBatch(a.fs.conn, fb, msgs)
		if len(fb.outs) != 0 {
			t.Fatal("batch not emptied")
		}
	})
}
