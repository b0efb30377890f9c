package relayclient

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/relayproto"
)

var fuzzPeer = key.PublicFromRaw[key.Node]([key.Len]byte{1: 0xcc, 31: 3})

// fuzzFrameSeeds are frame sequences a relay may send after its hello.
func fuzzFrameSeeds() [][]byte {
	f := relayproto.AppendFrame
	var ping [relayproto.PingLen]byte
	seq := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	rs := relayproto.Restarting{ReconnectIn: 1, TryFor: 2}
	offer := relayproto.FastPathOffer{Port: 1, Session: [relayproto.SessionLen]byte{1}}
	return [][]byte{
		seq(f(nil, relayproto.FrameRecvPacket, relayproto.AppendKeyPacket(nil, fuzzPeer, []byte("wg"))),
			f(nil, relayproto.FrameRecvDisco, relayproto.AppendKeyPacket(nil, fuzzPeer, []byte("disco"))),
			f(nil, relayproto.FramePeerPresent, relayproto.AppendPeerPresent(nil, fuzzPeer, 9))),
		seq(f(nil, relayproto.FramePeerGone, relayproto.AppendPeerGone(nil, fuzzPeer, relayproto.PeerGoneNotHere)),
			f(nil, relayproto.FramePing, ping[:]), f(nil, relayproto.FramePong, ping[:]), f(nil, relayproto.FrameKeepAlive, nil)),
		seq(f(nil, relayproto.FrameRestarting, rs.Append(nil)), f(nil, relayproto.FrameHealth, []byte("overloaded"))),
		seq(f(nil, relayproto.FrameFastPathOffer, offer.Append(nil)), f(nil, relayproto.FrameFastPathReady, nil)),
		f(nil, relayproto.FrameSendPacket, relayproto.AppendKeyPacket(nil, fuzzPeer, nil)), // client-only frame
		{0xff, 0, 0, 0},
	}
}

// FuzzClientFrames feeds a relay connection's frame handling a fuzzed
// sequence of frames from the relay (stream framing, and the same bytes as
// one datagram), checking that nothing panics, every refusal is an error
// rather than a crash, and the handle table stays bounded.
func FuzzClientFrames(f *testing.F) {
	for _, b := range fuzzFrameSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c := &Conn{log: slog.New(slog.DiscardHandler), rw: struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(nil), io.Discard}, closeFn: func() {}, done: make(chan struct{})}
		c.cfg.Handler = func(p Packet) {
			if len(p.Payload) > relayproto.MaxPayloadLen {
				t.Fatalf("%d-byte packet delivered", len(p.Payload))
			}
		}
		c.cfg.OnNotice = func(Notice) {}
		c.mu.handles = map[key.NodePublic]uint32{}
		c.mu.pings = map[[relayproto.PingLen]byte]chan struct{}{}
		c.mu.fastCh = make(chan fastMsg, 2)
		r := relayproto.NewReader(bytes.NewReader(in), relayproto.MaxBodyLen)
		for {
			typ, body, err := r.Next(nil)
			if err != nil {
				break
			}
			if c.handleFrame(typ, body, false) != nil {
				break // the connection would close here
			}
			c.mu.Lock()
			n := len(c.mu.handles)
			c.mu.Unlock()
			if n > maxHandles {
				t.Fatalf("%d handles", n)
			}
		}
		if typ, body, err := relayproto.SplitDatagram(in); err == nil {
			c.handleFrame(typ, body, true)
		}
	})
}

// TestWriteCorpus checks the committed seed corpus of FuzzClientFrames;
// with WIREMESH_WRITE_CORPUS=1 it writes it.
func TestWriteCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzClientFrames")
	if os.Getenv("WIREMESH_WRITE_CORPUS") != "1" {
		if ents, err := os.ReadDir(dir); err != nil || len(ents) == 0 {
			t.Errorf("no committed corpus in %s", dir)
		}
		return
	}
	os.MkdirAll(dir, 0o755)
	for i, b := range fuzzFrameSeeds() {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%d", i)), []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)), 0o644)
	}
}
