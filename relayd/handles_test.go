package relayd_test

import (
	"testing"

	"github.com/wiremesh/wiremesh/relayd/relaytest"
	"github.com/wiremesh/wiremesh/relayproto"
)

// pingSync sends a ping and returns every frame type received before its
// pong: the relay queues control frames in order, so anything the frames
// sent before the ping caused is among them.
func (rs *rawSession) pingSync() []relayproto.FrameType {
	rs.t.Helper()
	d := []byte("syncsync")
	rs.send(relayproto.FramePing, d)
	var seen []relayproto.FrameType
	for {
		typ, body, err := rs.r.Next(nil)
		if err != nil {
			rs.t.Fatalf("waiting for pong: %v", err)
		}
		if typ == relayproto.FramePong && string(body) == string(d) {
			return seen
		}
		seen = append(seen, typ)
	}
}

// TestHandlesScopedPerSender: handles cannot be enumerated. Sending to any
// handle a client was not given reaches nobody and reveals nothing; a
// PeerPresent (with a handle) comes only for a peer addressed by key, and
// that handle means nothing in another client's frames. Before the fix,
// handles were relay-wide and sequential, and sending to one answered
// PeerPresent with its owner's key.
func TestHandlesScopedPerSender(t *testing.T) {
	r := relaytest.Start(t, nil)
	kb, _, sb := dial(t, r, false, nil)
	_, _, sc := dial(t, r, false, nil)
	attacker := rawAdmit(t, r)
	for h := uint32(0); h < 1000; h++ {
		attacker.send(relayproto.FrameSendHandle, relayproto.AppendHandlePacket(nil, h, []byte("probe")))
	}
	for _, typ := range attacker.pingSync() {
		if typ == relayproto.FramePeerPresent {
			t.Fatal("a handle probe earned a PeerPresent")
		}
	}
	for _, s := range []*sink{sb, sc} {
		s.mu.Lock()
		n := len(s.pkts)
		s.mu.Unlock()
		if n != 0 {
			t.Fatal("a probe by guessed handle was delivered")
		}
	}

	// Addressed by key: delivered, and announced with a handle.
	attacker.send(relayproto.FrameSendPacket, relayproto.AppendKeyPacket(nil, kb.Public(), []byte("by key")))
	k, h, err := relayproto.ParsePeerPresent(attacker.await(relayproto.FramePeerPresent))
	if err != nil || k != kb.Public() || h == 0 {
		t.Fatalf("PeerPresent %v %d %v", k, h, err)
	}
	attacker.send(relayproto.FrameSendHandle, relayproto.AppendHandlePacket(nil, h, []byte("by handle")))
	sb.waitFor(t, "packet by handle", func() bool { return len(sb.pkts) == 2 && string(sb.pkts[1].Payload) == "by handle" })

	// The same handle from another sender reaches nobody.
	other := rawAdmit(t, r)
	other.send(relayproto.FrameSendHandle, relayproto.AppendHandlePacket(nil, h, []byte("borrowed")))
	other.pingSync()
	attacker.send(relayproto.FrameSendHandle, relayproto.AppendHandlePacket(nil, h, []byte("fence")))
	sb.waitFor(t, "fence", func() bool { return len(sb.pkts) >= 3 })
	sb.mu.Lock()
	defer sb.mu.Unlock()
	for _, p := range sb.pkts {
		if string(p.Payload) == "borrowed" {
			t.Fatal("another sender's handle was honoured")
		}
	}
}
