package relayd

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/relayproto"
)

func TestRingDropsOldest(t *testing.T) {
	var r ring
	drops := 0
	for i := range 10 {
		if _, dropped := r.push(packet{enq: int64(i)}, 4); dropped {
			drops++
		}
	}
	if drops != 6 || r.n != 4 {
		t.Fatalf("drops=%d n=%d, want 6 and 4", drops, r.n)
	}
	for want := int64(6); want < 10; want++ {
		p, ok := r.pop()
		if !ok || p.enq != want {
			t.Fatalf("pop = %d %v, want %d (oldest dropped first)", p.enq, ok, want)
		}
	}
	if _, ok := r.pop(); ok {
		t.Fatal("pop from empty ring")
	}
}

func TestLimiter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := newLimiter(1000, 1500, t0) // 1000 B/s, 1500 B burst
	if !l.allow(1500, t0) {
		t.Fatal("burst refused")
	}
	if l.allow(1, t0) {
		t.Fatal("allowed past an empty bucket")
	}
	if !l.allow(500, t0.Add(500*time.Millisecond)) {
		t.Fatal("refill not credited")
	}
	if l.allow(600, t0.Add(time.Second)) {
		t.Fatal("refill over-credited")
	}
	if !l.allow(1500, t0.Add(time.Hour)) || l.allow(1, t0.Add(time.Hour)) {
		t.Fatal("bucket not capped at burst")
	}
}

func TestSTUNResponse(t *testing.T) {
	from := &net.UDPAddr{IP: net.IPv4(198, 18, 0, 7), Port: 41641}
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	resp, ok := stunResponse(req.Raw, from)
	if !ok {
		t.Fatal("binding request not answered")
	}
	m := &stun.Message{Raw: resp}
	if err := m.Decode(); err != nil {
		t.Fatal(err)
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(m); err != nil {
		t.Fatal(err)
	}
	if !xa.IP.Equal(from.IP) || xa.Port != from.Port || m.TransactionID != req.TransactionID {
		t.Fatalf("mapped %v:%d txid match %v", xa.IP, xa.Port, m.TransactionID == req.TransactionID)
	}
	if _, ok := stunResponse([]byte("not stun at all, but twenty bytes+"), from); ok {
		t.Fatal("garbage answered")
	}
	ind := stun.MustBuild(stun.TransactionID, stun.BindingSuccess)
	if _, ok := stunResponse(ind.Raw, from); ok {
		t.Fatal("a response was answered")
	}
}

// TestWriteCorpus regenerates testdata/fuzz seeds for this package's fuzz
// targets when WIREMESH_WRITE_CORPUS=1, and otherwise checks they exist.
func TestWriteCorpus(t *testing.T) {
	signer := key.NewSigning()
	relay := key.NewRelay()
	nk := key.NewNode()
	tok, _ := admit.Issue(signer, nk.Public(), "tst", time.Now(), time.Hour)
	h := relayproto.ClientHello{Version: relayproto.Version, Node: nk.Public(), Token: tok}
	copy(h.Proof[:], key.Seal(nk, relay.Public(), make([]byte, relayproto.ExporterLen)))
	seeds := map[string][][]byte{
		"FuzzSTUN": {
			stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw,
			stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewSoftware("x")).Raw,
			{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42},
		},
		"FuzzHello":         {h.Append(nil), make([]byte, 106)},
		"FuzzServerFrames":  fuzzFrameSeeds(),
		"FuzzFastDatagrams": fuzzFastSeeds(),
	}
	for name, list := range seeds {
		dir := filepath.Join("testdata", "fuzz", name)
		if os.Getenv("WIREMESH_WRITE_CORPUS") != "1" {
			if ents, err := os.ReadDir(dir); err != nil || len(ents) == 0 {
				t.Errorf("no committed corpus in %s", dir)
			}
			continue
		}
		os.MkdirAll(dir, 0o755)
		for i, b := range list {
			os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%d", i)), []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)), 0o644)
		}
	}
}

func FuzzSTUN(f *testing.F) {
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw)
	from := &net.UDPAddr{IP: net.IPv6loopback, Port: 1}
	f.Fuzz(func(t *testing.T, b []byte) {
		resp, ok := stunResponse(b, from)
		if ok && !stun.IsMessage(resp) {
			t.Fatal("answer is not STUN")
		}
	})
}

func FuzzHello(f *testing.F) {
	signer := key.NewSigning()
	priv := key.NewRelay()
	s := &Server{cfg: Config{Region: "tst", Now: time.Now}, priv: priv, pub: priv.Public(), m: newMetrics(prometheus.NewRegistry())}
	s.SetTrusted([]key.SigningPublic{signer.Public()})
	exporter := bytes.Repeat([]byte{7}, relayproto.ExporterLen)
	nk := key.NewNode()
	tok, _ := admit.Issue(signer, nk.Public(), "tst", time.Now(), time.Hour)
	good := relayproto.ClientHello{Version: relayproto.Version, Node: nk.Public(), Token: tok}
	copy(good.Proof[:], key.Seal(nk, priv.Public(), exporter))
	f.Add(good.Append(nil))
	bad := good
	bad.Token = nil
	f.Add(bad.Append(nil))
	f.Add(make([]byte, 10))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := relayproto.ParseClientHello(b)
		if err != nil {
			return
		}
		rj := s.authenticate(h, exporter)
		if rj == nil && (h.Node != nk.Public() || h.Version != relayproto.Version) {
			t.Fatalf("accepted a hello for %v", h.Node)
		}
		if rj != nil && rj.reason.String() == "" {
			t.Fatal("rejection without a label")
		}
	})
}

// TestJoinMergesStaticConfig: the coordinator's answer adds to the static
// trust keys and mesh peers, it never replaces them.
func TestJoinMergesStaticConfig(t *testing.T) {
	static, coordKey := key.NewSigning().Public(), key.NewSigning().Public()
	j := &joiner{self: "198.18.0.1:443", priv: key.NewRelay()}
	cfg := Config{Trusted: []key.SigningPublic{static}, MeshWith: []string{"198.18.0.9:443"}, MeshSecret: []byte("s3")}
	j.state = &joinState{Response: netmap.RelayJoinResponse{AdmitKeys: []key.SigningPublic{coordKey}}}
	j.apply(&cfg)
	resp := netmap.RelayJoinResponse{AdmitKeys: []key.SigningPublic{coordKey}, MeshSecret: "coord",
		Region: netmap.Region{Relays: []netmap.Relay{{Addr: "198.18.0.2:443"}, {Addr: "198.18.0.1:443"}}}}
	trusted, peers, secret := j.merged(resp)
	if len(trusted) != 2 || trusted[0] != coordKey || trusted[1] != static {
		t.Fatalf("trusted %v", trusted)
	}
	if fmt.Sprint(peers) != "[198.18.0.2:443 198.18.0.9:443]" || string(secret) != "coord" {
		t.Fatalf("peers %v secret %q", peers, secret)
	}
	resp.MeshSecret = ""
	if _, _, secret := j.merged(resp); string(secret) != "s3" {
		t.Fatalf("static secret lost: %q", secret)
	}
}

// TestSTUNAnswerNoLargerThanNeeded: no SOFTWARE attribute, and a
// FINGERPRINT only when asked with one; the IPv4 answers are 32 and 40
// bytes. Before the fix every answer carried both (3× the request).
func TestSTUNAnswerNoLargerThanNeeded(t *testing.T) {
	from := &net.UDPAddr{IP: net.IPv4(198, 18, 0, 7), Port: 41641}
	bare := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	withFP := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	for _, tc := range []struct {
		req  *stun.Message
		want int
	}{{bare, 32}, {withFP, 40}} {
		resp, ok := stunResponse(tc.req.Raw, from)
		if !ok {
			t.Fatal("not answered")
		}
		if len(resp) != tc.want {
			t.Fatalf("answer to a %d-byte request is %d bytes, want %d", len(tc.req.Raw), len(resp), tc.want)
		}
		m := &stun.Message{Raw: resp}
		if err := m.Decode(); err != nil || m.Contains(stun.AttrSoftware) {
			t.Fatalf("decode %v, software %v", err, m.Contains(stun.AttrSoftware))
		}
	}
}

// TestSTUNLimiter: per source, then globally, with an injected clock.
func TestSTUNLimiter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	l := newSTUNLimiter(t0)
	a, b := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	n := 0
	for range 1000 {
		if l.allow(a, t0) {
			n++
		}
	}
	if n != stunSourceBurst {
		t.Fatalf("source answered %d times at once, want the burst %d", n, stunSourceBurst)
	}
	if !l.allow(b, t0) {
		t.Fatal("another source was limited by the first")
	}
	if !l.allow(a, t0.Add(time.Second)) {
		t.Fatal("source not refilled")
	}
	for i := range stunMaxSources + 10 { // the table stays bounded
		l.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), t0)
	}
	if len(l.sources) > stunMaxSources {
		t.Fatalf("%d sources tracked", len(l.sources))
	}
}
