package relayproto

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/wiremesh/wiremesh/key"
)

// seedBodies are real encodings of every frame body, used to seed every
// fuzz target. TestWriteCorpus writes them to testdata/fuzz.
func seedBodies() map[string][][]byte {
	nk := key.NewNode().Public()
	h := ClientHello{Version: Version, Flags: FlagDatagrams, Node: nk, Token: bytes.Repeat([]byte{1}, 120)}
	sh := ServerHello{Version: Version, Handle: 7, Region: "nyc"}
	rj := Reject{Reason: ReasonTokenExpired, Message: "expired"}
	rs := Restarting{ReconnectIn: 1000, TryFor: 5000}
	mh := MeshHello{Relay: key.NewRelay().Public(), Region: "nyc"}
	var stream []byte
	stream = AppendFrame(stream, FrameClientHello, h.Append(nil))
	stream = AppendFrame(stream, FrameSendPacket, AppendKeyPacket(nil, nk, []byte("wireguard")))
	stream = AppendFrame(stream, FramePing, []byte("abcdefgh"))
	return map[string][][]byte{
		"FuzzStream":      {stream, AppendFrame(nil, FrameKeepAlive, nil), {0xee, 0, 0, 0, 0}, {0x10, 0xff, 0xff, 0xff, 0xff}},
		"FuzzDatagram":    {append([]byte{byte(FrameSendPacket)}, AppendKeyPacket(nil, nk, []byte("wg"))...), append([]byte{byte(FrameSendHandle)}, AppendHandlePacket(nil, 3, []byte("wg"))...), {byte(FramePing), 1, 2, 3, 4, 5, 6, 7, 8}, {}},
		"FuzzClientHello": {h.Append(nil), make([]byte, 10)},
		"FuzzServerHello": {sh.Append(nil)},
		"FuzzReject":      {rj.Append(nil)},
		"FuzzPacket":      {AppendKeyPacket(nil, nk, []byte("x")), AppendHandlePacket(nil, 9, []byte("y"))},
		"FuzzNotices":     {AppendPeerPresent(nil, nk, 4), AppendPeerGone(nil, nk, PeerGoneNotHere), rs.Append(nil), []byte("12345678")},
		"FuzzMesh":        {mh.Append(nil), AppendMeshForward(nil, nk, nk, 0, []byte("p")), AppendKey(nil, nk)},
		"FuzzFast": {AppendFastSend(nil, [SessionLen]byte{1}, nk, []byte("wg")), AppendFastRecv(nil, nk, []byte("wg")),
			append([]byte{FastBind}, make([]byte, SessionLen)...), (&FastPathOffer{Port: 7000}).Append(nil)},
	}
}

// TestWriteCorpus regenerates the committed seed corpora when
// WIREMESH_WRITE_CORPUS=1; otherwise it checks that they exist.
func TestWriteCorpus(t *testing.T) {
	for name, seeds := range seedBodies() {
		dir := filepath.Join("testdata", "fuzz", name)
		if os.Getenv("WIREMESH_WRITE_CORPUS") != "1" {
			if ents, err := os.ReadDir(dir); err != nil || len(ents) == 0 {
				t.Errorf("no committed corpus in %s", dir)
			}
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds {
			data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%d", i)), []byte(data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func addSeeds(f *testing.F, name string) {
	for _, s := range seedBodies()[name] {
		f.Add(s)
	}
}

// checkErr fails on errors that are not one of the package's sentinels.
func checkErr(t *testing.T, err error) {
	if err == nil || err == io.EOF {
		return
	}
	for _, e := range []error{ErrTruncated, ErrOversized, ErrUnknown, ErrMalformed} {
		if errors.Is(err, e) {
			return
		}
	}
	t.Fatalf("unexpected error type: %v", err)
}

func FuzzStream(f *testing.F) {
	addSeeds(f, "FuzzStream")
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b), 4096)
		for range 64 {
			typ, body, err := r.Next(nil)
			checkErr(t, err)
			if err != nil {
				return
			}
			if len(body) > 4096 {
				t.Fatalf("body of %d bytes past the limit", len(body))
			}
			// Re-encode and compare: framing must be lossless.
			if again := AppendFrame(nil, typ, body); !bytes.Equal(again[HeaderLen:], body) {
				t.Fatal("re-encode mismatch")
			}
		}
	})
}

func FuzzDatagram(f *testing.F) {
	addSeeds(f, "FuzzDatagram")
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, body, err := SplitDatagram(b)
		checkErr(t, err)
		if err != nil {
			return
		}
		switch typ {
		case FrameSendPacket, FrameRecvPacket:
			_, _, err = ParseKeyPacket(body)
		case FrameSendHandle:
			_, _, err = ParseHandlePacket(body)
		case FramePing, FramePong:
			_, err = ParsePing(body)
		default:
			t.Fatalf("type %s accepted in a datagram", typ)
		}
		checkErr(t, err)
	})
}

func FuzzClientHello(f *testing.F) {
	addSeeds(f, "FuzzClientHello")
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseClientHello(b)
		checkErr(t, err)
		if err == nil && !bytes.Equal(h.Append(nil), b) {
			t.Fatal("client hello does not round-trip")
		}
	})
}

func FuzzServerHello(f *testing.F) {
	addSeeds(f, "FuzzServerHello")
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseServerHello(b)
		checkErr(t, err)
		if err == nil && !bytes.Equal(h.Append(nil), b) {
			t.Fatal("server hello does not round-trip")
		}
	})
}

func FuzzReject(f *testing.F) {
	addSeeds(f, "FuzzReject")
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseReject(b)
		checkErr(t, err)
		if err == nil {
			_ = r.Reason.String()
			if !bytes.Equal(r.Append(nil), b) {
				t.Fatal("reject does not round-trip")
			}
		}
	})
}

func FuzzPacket(f *testing.F) {
	addSeeds(f, "FuzzPacket")
	f.Fuzz(func(t *testing.T, b []byte) {
		if k, p, err := ParseKeyPacket(b); err == nil {
			if !bytes.Equal(AppendKeyPacket(nil, k, p), b) {
				t.Fatal("key packet does not round-trip")
			}
		} else {
			checkErr(t, err)
		}
		if h, p, err := ParseHandlePacket(b); err == nil {
			if !bytes.Equal(AppendHandlePacket(nil, h, p), b) {
				t.Fatal("handle packet does not round-trip")
			}
		} else {
			checkErr(t, err)
		}
	})
}

func FuzzNotices(f *testing.F) {
	addSeeds(f, "FuzzNotices")
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, err := ParsePeerPresent(b)
		checkErr(t, err)
		_, _, err = ParsePeerGone(b)
		checkErr(t, err)
		_, err = ParseRestarting(b)
		checkErr(t, err)
		_, err = ParsePing(b)
		checkErr(t, err)
		_, err = ParseHealth(b)
		checkErr(t, err)
	})
}

func FuzzMesh(f *testing.F) {
	addSeeds(f, "FuzzMesh")
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := ParseMeshHello(b); err == nil {
			if !bytes.Equal(h.Append(nil), b) {
				t.Fatal("mesh hello does not round-trip")
			}
		} else {
			checkErr(t, err)
		}
		if s, d, fl, p, err := ParseMeshForward(b); err == nil {
			if !bytes.Equal(AppendMeshForward(nil, s, d, fl, p), b) {
				t.Fatal("mesh forward does not round-trip")
			}
		} else {
			checkErr(t, err)
		}
		_, err := ParseKey(b)
		checkErr(t, err)
	})
}

func FuzzFast(f *testing.F) {
	nk := key.NewNode().Public()
	var sess [SessionLen]byte
	sess[0] = 9
	f.Add(AppendFastSend(nil, sess, nk, []byte("wg")))
	f.Add(AppendFastRecv(nil, nk, []byte("wg")))
	f.Add(append([]byte{FastBind}, sess[:]...))
	f.Add(append(append([]byte{FastChallenge}, sess[:]...), 1, 2, 3, 4, 5, 6, 7, 8))
	f.Add((&FastPathOffer{Port: 7000, Session: sess}).Append(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		fd, err := ParseFast(b)
		checkErr(t, err)
		if err == nil {
			switch fd.Kind {
			case FastSend:
				if !bytes.Equal(AppendFastSend(nil, fd.Session, fd.Key, fd.Payload), b) {
					t.Fatal("fast send does not round-trip")
				}
			case FastRecv:
				if !bytes.Equal(AppendFastRecv(nil, fd.Key, fd.Payload), b) {
					t.Fatal("fast recv does not round-trip")
				}
			}
		}
		if o, err := ParseFastPathOffer(b); err == nil {
			if !bytes.Equal(o.Append(nil), b) {
				t.Fatal("offer does not round-trip")
			}
		} else {
			checkErr(t, err)
		}
		_, err = ParseChallenge(b)
		checkErr(t, err)
	})
}
