package relayproto

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

func TestStreamRoundTrip(t *testing.T) {
	nk := key.NewNode().Public()
	payload := bytes.Repeat([]byte{0xab}, 1280)
	var b []byte
	b = AppendFrame(b, FrameSendPacket, AppendKeyPacket(nil, nk, payload))
	b = AppendFrame(b, FrameKeepAlive, nil)
	b = AppendFrame(b, FramePing, []byte("12345678"))
	r := NewReader(bytes.NewReader(b), MaxBodyLen)

	typ, body, err := r.Next(nil)
	if err != nil || typ != FrameSendPacket {
		t.Fatalf("first frame: %v %v", typ, err)
	}
	k, p, err := ParseKeyPacket(body)
	if err != nil || k != nk || !bytes.Equal(p, payload) {
		t.Fatalf("packet mismatch: %v", err)
	}
	if typ, body, err = r.Next(make([]byte, 0, 16)); err != nil || typ != FrameKeepAlive || len(body) != 0 {
		t.Fatalf("keepalive: %v %v %d", typ, err, len(body))
	}
	if typ, body, err = r.Next(nil); err != nil || typ != FramePing {
		t.Fatalf("ping: %v %v", typ, err)
	}
	if d, err := ParsePing(body); err != nil || string(d[:]) != "12345678" {
		t.Fatalf("ping body %q %v", d, err)
	}
	if _, _, err := r.Next(nil); err != io.EOF {
		t.Fatalf("want io.EOF at end, got %v", err)
	}
}

func TestReaderErrors(t *testing.T) {
	full := AppendFrame(nil, FrameSendPacket, AppendKeyPacket(nil, key.NewNode().Public(), []byte("hello")))
	cases := []struct {
		name string
		in   []byte
		max  int
		want error
	}{
		{"truncated header", full[:3], MaxBodyLen, ErrTruncated},
		{"truncated body", full[:len(full)-1], MaxBodyLen, ErrTruncated},
		{"unknown type", AppendFrame(nil, FrameType(0xee), nil), MaxBodyLen, ErrUnknown},
		{"oversized for limit", full, 10, ErrOversized},
		{"oversized absolute", AppendHeader(nil, FrameSendPacket, MaxBodyLen+1), 1 << 30, ErrOversized},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := NewReader(bytes.NewReader(tc.in), tc.max).Next(nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if BadFrameReason(err) == "other" {
				t.Fatalf("no reason label for %v", err)
			}
		})
	}
}

func TestDatagram(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"unknown", []byte{0xee, 1}, ErrUnknown},
		{"hello not allowed", []byte{byte(FrameClientHello), 1}, ErrMalformed},
		{"packet", append([]byte{byte(FrameSendPacket)}, make([]byte, 40)...), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := SplitDatagram(tc.in)
			if !errors.Is(err, tc.want) && !(err == nil && tc.want == nil) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestHelloRoundTrip(t *testing.T) {
	h := ClientHello{Version: Version, Flags: FlagDatagrams, Node: key.NewNode().Public(), Token: []byte("tok")}
	h.Proof[3] = 9
	got, err := ParseClientHello(h.Append(nil))
	if err != nil || got.Node != h.Node || got.Proof != h.Proof || string(got.Token) != "tok" || got.Flags != h.Flags {
		t.Fatalf("client hello round trip: %+v %v", got, err)
	}
	if _, err := ParseClientHello(make([]byte, 10)); !errors.Is(err, ErrTruncated) {
		t.Fatalf("short hello: %v", err)
	}
	if _, err := ParseClientHello(make([]byte, MaxHelloLen+1)); !errors.Is(err, ErrOversized) {
		t.Fatalf("long hello: %v", err)
	}
	sh := ServerHello{Version: Version, Handle: 77, Region: "nyc"}
	if got, err := ParseServerHello(sh.Append(nil)); err != nil || got != sh {
		t.Fatalf("server hello: %+v %v", got, err)
	}
	rj := Reject{Reason: ReasonReplay, Message: "nope"}
	if got, err := ParseReject(rj.Append(nil)); err != nil || got != rj {
		t.Fatalf("reject: %+v %v", got, err)
	}
	rs := Restarting{ReconnectIn: 2 * time.Second, TryFor: time.Minute}
	if got, err := ParseRestarting(rs.Append(nil)); err != nil || got != rs {
		t.Fatalf("restarting: %+v %v", got, err)
	}
	mh := MeshHello{Relay: key.NewRelay().Public(), Region: "fra"}
	mh.MAC[0] = 1
	if got, err := ParseMeshHello(mh.Append(nil)); err != nil || got != mh {
		t.Fatalf("mesh hello: %+v %v", got, err)
	}
	a, b := key.NewNode().Public(), key.NewNode().Public()
	s, d, fl, p, err := ParseMeshForward(AppendMeshForward(nil, a, b, MeshFlagDisco, []byte("x")))
	if err != nil || s != a || d != b || fl != MeshFlagDisco || string(p) != "x" {
		t.Fatalf("mesh forward: %v", err)
	}
	if k, h2, err := ParsePeerPresent(AppendPeerPresent(nil, a, 5)); err != nil || k != a || h2 != 5 {
		t.Fatalf("peer present: %v", err)
	}
	if k, r, err := ParsePeerGone(AppendPeerGone(nil, a, PeerGoneNotHere)); err != nil || k != a || r != PeerGoneNotHere {
		t.Fatalf("peer gone: %v", err)
	}
}

func TestReasonLabels(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range Reasons() {
		l := r.String()
		if seen[l] {
			t.Fatalf("duplicate label %q", l)
		}
		seen[l] = true
		if ReasonFromLabel(l) != r {
			t.Fatalf("label %q does not map back to %d", l, r)
		}
	}
}

func TestFrameNames(t *testing.T) {
	for i := 0; i < 256; i++ {
		ft := FrameType(i)
		if ft.Known() == (ft.String() == "unknown") {
			t.Fatalf("type 0x%02x: Known=%v String=%q", i, ft.Known(), ft.String())
		}
	}
}
