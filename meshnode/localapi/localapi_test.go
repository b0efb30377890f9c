package localapi

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type fakeBackend struct {
	down chan struct{}
}

func (f *fakeBackend) Status() Status {
	hs := time.Date(2026, 11, 25, 15, 4, 5, 0, time.UTC)
	return Status{
		Self:        Self{Name: "a", IPs: []string{"100.64.0.1"}, NodeKey: "nodekey:aa", HomeRelay: "nyc"},
		Coordinator: Coordinator{Connected: true},
		Peers: []PeerStatus{{Name: "b", IPs: []string{"100.64.0.2"}, NodeKey: "nodekey:bb", Online: true,
			Path: "direct", Endpoint: "198.18.0.22:41641", RTTMs: 1.7, RxBytes: 1234, TxBytes: 5678, LastHandshake: &hs}},
	}
}

func (f *fakeBackend) Ping(ctx context.Context, req PingRequest, emit func(PingResult)) error {
	if req.Peer != "b" {
		return ErrNotFound
	}
	emit(PingResult{Peer: "b", IP: "100.64.0.2", Path: "relay", Via: "nyc", RTTMs: 3.1})
	emit(PingResult{Peer: "b", IP: "100.64.0.2", Path: "direct", Via: "198.18.0.22:41641", RTTMs: 0.9})
	return nil
}

func (f *fakeBackend) Netcheck(ctx context.Context) (Netcheck, error) {
	return Netcheck{UDP: true, PreferredRelay: "nyc", RelayLatencyMS: map[string]float64{"nyc": 1.2}}, nil
}

func (f *fakeBackend) Down() { close(f.down) }

func TestLocalAPI(t *testing.T) {
	sock := filepath.Join(t.TempDir(), SocketName)
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	fb := &fakeBackend{down: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go NewServer(fb, slog.New(slog.DiscardHandler)).Serve(ctx, ln)
	c := NewClient(sock)

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(st)
	// Field names are the contract's.
	for _, f := range []string{`"self":`, `"home_relay":"nyc"`, `"coordinator":{"connected":true}`, `"peers":`,
		`"node_key":"nodekey:bb"`, `"online":true`, `"path":"direct"`, `"endpoint":"198.18.0.22:41641"`,
		`"rtt_ms":1.7`, `"rx_bytes":1234`, `"tx_bytes":5678`, `"last_handshake":"2026-11-25T15:04:05Z"`} {
		if !strings.Contains(string(b), f) {
			t.Fatalf("status JSON lacks %s:\n%s", f, b)
		}
	}
	var got []PingResult
	if err := c.Ping(ctx, PingRequest{Peer: "b", Count: 3}, func(p PingResult) { got = append(got, p) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1].Path != "direct" || got[0].Via != "nyc" {
		t.Fatalf("ping results %+v", got)
	}
	if err := c.Ping(ctx, PingRequest{Peer: "zz"}, func(PingResult) {}); err == nil || !strings.Contains(err.Error(), "no such peer") {
		t.Fatalf("unknown peer: %v", err)
	}
	if err := c.Ping(ctx, PingRequest{Peer: "b", Count: maxPings + 1}, func(PingResult) {}); err == nil {
		t.Fatal("oversized count accepted")
	}
	nc, err := c.Netcheck(ctx)
	if err != nil || nc.PreferredRelay != "nyc" || nc.RelayLatencyMS["nyc"] != 1.2 {
		t.Fatalf("netcheck %+v %v", nc, err)
	}
	if err := c.Down(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fb.down:
	case <-time.After(5 * time.Second):
		t.Fatal("Down not delivered")
	}
	if _, err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Status(ctx); err == nil || !strings.Contains(err.Error(), "meshnode run") {
		t.Fatalf("no daemon: %v", err)
	}
}
