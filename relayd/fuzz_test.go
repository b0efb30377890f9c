package relayd

import (
	"bytes"
	"errors"
	"testing"

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
