package netmap

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// sampleMap is a realistic full frame, also the fuzz seed.
func sampleMap() *MapResponse {
	nk, dk, rk := key.NewNode().Public(), key.NewDisco().Public(), key.NewRelay().Public()
	self := Node{ID: 1, Name: "a", Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")},
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}, NodeKey: nk, DiscoKey: dk,
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:41641")}, HomeRelay: "nyc", Online: true,
		KeyExpiry: time.Unix(1800000000, 0).UTC(), Tags: []string{"tag:a"}}
	peer := self
	peer.ID, peer.Name = 2, "b"
	return &MapResponse{Seq: 1, Full: true, Self: &self, Peers: []Node{peer},
		RelayMap: &RelayMap{Regions: []Region{{Code: "nyc", Name: "New York", Lat: 40.7, Lon: -74,
			Relays: []Relay{{Name: "nyc-1", Addr: "198.18.1.1:443", Pin: "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", Key: rk, Healthy: true, State: RelayUp}}}}},
		DNS:          &DNS{Domain: "mesh.internal", MagicDNS: true},
		PacketFilter: &Filter{Rules: []FilterRule{{SrcIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, DstPorts: []PortRange{{Dst: netip.MustParsePrefix("100.64.0.1/32"), First: 0, Last: 65535}}}}},
		Admission:    &Admission{Token: "tok", Expires: time.Unix(1800000000, 0).UTC()},
	}
}

func TestFrameRoundTripAndApply(t *testing.T) {
	var buf bytes.Buffer
	full := sampleMap()
	online := true
	delta := &MapResponse{Seq: 2, PeersChanged: []Node{{ID: 3, Name: "c"}}, PeersRemoved: []NodeID{2},
		PeersChangedPatch: []PeerChange{{ID: 3, Online: &online}, {ID: 99, Online: &online}}}
	for _, m := range []*MapResponse{full, delta, {Seq: 3, KeepAlive: true}} {
		if err := WriteFrame(&buf, m); err != nil {
			t.Fatal(err)
		}
	}
	fr := NewFrameReader(&buf)
	var nm NetworkMap
	if err := nm.Apply(delta); !errors.Is(err, ErrNoFullMap) {
		t.Fatalf("delta before full map: %v", err)
	}
	for i := 0; i < 3; i++ {
		m, err := fr.ReadMapResponse()
		if err != nil {
			t.Fatal(err)
		}
		if err := nm.Apply(m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := fr.Next(); err != io.EOF {
		t.Fatalf("after last frame: %v", err)
	}
	if nm.Self.Name != "a" || len(nm.Peers) != 1 || nm.Peers[3].Name != "c" || !nm.Peers[3].Online || nm.RelayMap.Regions[0].Relays[0].Name != "nyc-1" ||
		nm.DNS.Domain != "mesh.internal" || len(nm.Filter.Rules) != 1 || nm.Admission.Token != "tok" || nm.Seq != 2 {
		t.Fatalf("applied map: %+v", nm)
	}
	if got := nm.PeerList(); len(got) != 1 {
		t.Fatalf("PeerList: %+v", got)
	}
}

func TestFrameLimits(t *testing.T) {
	var hdr []byte
	hdr = AppendFrame(hdr, MaxFrameSize+1)
	if _, err := NewFrameReader(bytes.NewReader(hdr)).Next(); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized frame: %v", err)
	}
	trunc := append(AppendFrame(nil, 10), "abc"...)
	if _, err := NewFrameReader(bytes.NewReader(trunc)).Next(); err == nil || err == io.EOF {
		t.Fatalf("truncated frame: %v", err)
	}
	if _, err := NewFrameReader(bytes.NewReader([]byte{0, 0})).Next(); err == nil || err == io.EOF {
		t.Fatalf("truncated header: %v", err)
	}
}

func TestKeysText(t *testing.T) {
	pin := "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	s := NewSecret()
	ak := FormatAuthKey(s, pin)
	got, gotPin, err := ParseAuthKey(ak)
	if err != nil || !got.Equal(s) || gotPin != pin {
		t.Fatalf("ParseAuthKey(%q) = %v %q %v", ak, got, gotPin, err)
	}
	if _, _, err := ParseJoinKey(ak); !errors.Is(err, ErrBadAuthKey) {
		t.Fatalf("auth key parsed as join key: %v", err)
	}
	jk := FormatJoinKey(s, pin)
	if _, p, err := ParseJoinKey(jk); err != nil || p != pin {
		t.Fatalf("ParseJoinKey: %v", err)
	}
	for _, bad := range []string{"", "wmauth.", "wmauth.00", "wmauth." + s.String(), "wmauth." + s.String() + ".short",
		"wmauth." + strings.Repeat("g", 32) + ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", strings.Repeat("x", 200)} {
		if _, _, err := ParseAuthKey(bad); !errors.Is(err, ErrBadAuthKey) {
			t.Errorf("ParseAuthKey(%q) = %v", bad, err)
		}
	}
	if s.Hash() == NewSecret().Hash() {
		t.Error("hash collision")
	}
}

func TestProof(t *testing.T) {
	client, server := key.NewNode(), key.NewCoord()
	cs := key.Precompute(client, server.Public())
	ss := key.Precompute(server, client.Public())
	now := time.Now()
	body := []byte(`{"x":1}`)
	h := MakeProof(&cs, client.Public().String(), "POST", "/p", body, now)
	pub, sealed, err := ParseProof(h)
	if err != nil || pub != client.Public().String() {
		t.Fatal(pub, err)
	}
	if _, err := OpenProof(&ss, sealed, "POST", "/p", body, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		err  error
		open func() error
	}{
		{"stale", ErrProofStale, func() error { _, err := OpenProof(&ss, sealed, "POST", "/p", body, now.Add(time.Hour)); return err }},
		{"other body", ErrProofMismatch, func() error { _, err := OpenProof(&ss, sealed, "POST", "/p", []byte("{}"), now); return err }},
		{"other path", ErrProofMismatch, func() error { _, err := OpenProof(&ss, sealed, "POST", "/q", body, now); return err }},
		{"other key", ErrProofInvalid, func() error {
			o := key.Precompute(server, key.NewNode().Public())
			_, err := OpenProof(&o, sealed, "POST", "/p", body, now)
			return err
		}},
	}
	for _, c := range cases {
		if err := c.open(); !errors.Is(err, c.err) {
			t.Errorf("%s: %v, want %v", c.name, err, c.err)
		}
	}
	for _, bad := range []string{"", "nokey", "k !!!", "k " + strings.Repeat("A", 300)} {
		if _, _, err := ParseProof(bad); err == nil {
			t.Errorf("ParseProof(%q) accepted", bad)
		}
	}
}

func TestDurationJSON(t *testing.T) {
	b, _ := json.Marshal(RelayJoinResponse{HeartbeatInterval: Duration(10 * time.Second)})
	var r RelayJoinResponse
	if err := json.Unmarshal(b, &r); err != nil || time.Duration(r.HeartbeatInterval) != 10*time.Second {
		t.Fatalf("%s -> %v %v", b, r.HeartbeatInterval, err)
	}
}

// TestFrameReaderGrowsWithData: a header claiming the largest frame,
// followed by a few bytes and the end of the stream, must not make the
// reader allocate the claimed 64 MiB up front.
func TestFrameReaderGrowsWithData(t *testing.T) {
	in := append(AppendFrame(nil, MaxFrameSize), []byte(`{"seq":1}`)...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := NewFrameReader(bytes.NewReader(in)).Next()
	runtime.ReadMemStats(&after)
	if err == nil || err == io.EOF {
		t.Fatalf("truncated frame: %v", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
		t.Fatalf("reading a 9-byte frame that claims %d bytes allocated %d bytes", MaxFrameSize, got)
	}
	// Frames larger than the first chunk still arrive whole.
	big := bytes.Repeat([]byte("x"), 3*frameChunk+7)
	got, err := NewFrameReader(bytes.NewReader(append(AppendFrame(nil, len(big)), big...))).Next()
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("big frame: %d bytes, %v", len(got), err)
	}
}
