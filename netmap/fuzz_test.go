package netmap

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// Fuzz targets for every decoder a coordinator or client runs on bytes
// from the network. Seeds are real encodings; testdata/fuzz holds more.

func FuzzDecodeMapResponse(f *testing.F) {
	b, _ := json.Marshal(sampleMap())
	f.Add(b)
	f.Add([]byte(`{"seq":2,"peers_changed":[{"id":3}],"peers_removed":[2]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMapResponse(b)
		if err != nil {
			return
		}
		var nm NetworkMap
		nm.Apply(&MapResponse{Full: true})
		nm.Apply(m)
		if _, err := json.Marshal(m); err != nil {
			t.Fatalf("decoded frame does not re-encode: %v", err)
		}
	})
}

func FuzzFrameReader(f *testing.F) {
	var buf bytes.Buffer
	WriteFrame(&buf, sampleMap())
	WriteFrame(&buf, &MapResponse{Seq: 2, KeepAlive: true})
	f.Add(buf.Bytes())
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := NewFrameReader(bytes.NewReader(b))
		for i := 0; i < 64; i++ {
			p, err := fr.Next()
			if err != nil {
				return
			}
			if len(p) > MaxFrameSize {
				t.Fatal("frame over the limit")
			}
		}
	})
}

// FuzzRequests decodes every request type the coordinator accepts.
func FuzzRequests(f *testing.F) {
	nk, dk := key.NewNode().Public(), key.NewDisco().Public()
	for _, v := range []any{
		RegisterRequest{Version: 1, AuthKey: "wmauth.x", NodeKey: nk, DiscoKey: dk, Hostname: "h", OS: "linux"},
		MapRequest{Version: 1, DiscoKey: dk, HomeRelay: "nyc", Netcheck: &Netcheck{UDP: true, RelayLatencyMS: map[string]float64{"nyc": 1}}},
		RelayJoinRequest{Version: 1, Region: "nyc", PublicAddr: "198.18.0.1:443", Key: key.NewRelay().Public(), Pin: "sha256/x"},
		RelayHeartbeat{Clients: 3, Draining: true},
	} {
		b, _ := json.Marshal(v)
		f.Add(b)
	}
	f.Add([]byte(`{"endpoints":["198.18.0.1:1"],"home_relay":"fra"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r RegisterRequest
		json.Unmarshal(b, &r)
		var m MapRequest
		json.Unmarshal(b, &m)
		var u UpdateRequest
		json.Unmarshal(b, &u)
		var j RelayJoinRequest
		json.Unmarshal(b, &j)
		var h RelayHeartbeat
		json.Unmarshal(b, &h)
		var jr RelayJoinResponse
		json.Unmarshal(b, &jr)
		var rm RelayMap
		json.Unmarshal(b, &rm)
	})
}

func FuzzKeysAndProof(f *testing.F) {
	f.Add("wmauth.00112233445566778899aabbccddeeff.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("wmjoin.00112233445566778899aabbccddeeff.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	client, server := key.NewNode(), key.NewCoord()
	cs := key.Precompute(client, server.Public())
	f.Add(MakeProof(&cs, client.Public().String(), "POST", "/p", nil, time.Unix(1e9, 0)))
	ss := key.Precompute(server, client.Public())
	f.Fuzz(func(t *testing.T, s string) {
		if sec, pin, err := ParseAuthKey(s); err == nil {
			if _, _, err := ParseAuthKey(FormatAuthKey(sec, pin)); err != nil {
				t.Fatalf("round trip of %q: %v", s, err)
			}
		}
		ParseJoinKey(s)
		if _, sealed, err := ParseProof(s); err == nil {
			OpenProof(&ss, sealed, "POST", "/p", nil, time.Unix(1e9, 0))
		}
	})
}

// FuzzApply folds a fuzzed sequence of frames (the stream framing, as a
// node reads it) into a NetworkMap: Apply must never panic, must refuse a
// delta before the first full map without changing anything, and must keep
// the map consistent: every peer stored under its own ID, and a frame's
// removed peers gone after it.
func FuzzApply(f *testing.F) {
	var buf bytes.Buffer
	WriteFrame(&buf, sampleMap())
	WriteFrame(&buf, &MapResponse{Seq: 2, PeersChanged: []Node{{ID: 7, Name: "n7"}}, PeersRemoved: []NodeID{2}})
	on := true
	WriteFrame(&buf, &MapResponse{Seq: 3, PeersChangedPatch: []PeerChange{{ID: 7, Online: &on}}, PeersRemoved: []NodeID{7}})
	WriteFrame(&buf, &MapResponse{Seq: 4, KeepAlive: true})
	f.Add(buf.Bytes())
	buf.Reset()
	WriteFrame(&buf, &MapResponse{Seq: 1, PeersChanged: []Node{{ID: 1}}})
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		fr := NewFrameReader(bytes.NewReader(b))
		var nm NetworkMap
		for range 32 {
			m, err := fr.ReadMapResponse()
			if err != nil {
				return
			}
			before := nm.Seq
			err = nm.Apply(m)
			if nm.Peers == nil {
				if !m.Full && !m.KeepAlive && err != ErrNoFullMap {
					t.Fatalf("delta before a full map: %v", err)
				}
				if nm.Seq != before {
					t.Fatal("refused delta changed the map")
				}
				continue
			}
			for id, p := range nm.Peers {
				if p.ID != id {
					t.Fatalf("peer %d stored under %d", p.ID, id)
				}
			}
			if m.KeepAlive {
				continue
			}
			for _, id := range m.PeersRemoved {
				if _, ok := nm.Peers[id]; ok {
					t.Fatalf("peer %d still there after its removal", id)
				}
			}
		}
	})
}
