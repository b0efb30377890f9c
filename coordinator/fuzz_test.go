package coordinator_test

import (
	"bytes"
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

func FuzzParseRelayMap(f *testing.F) {
	f.Add([]byte(`{"regions":[{"code":"fra","name":"Frankfurt","lat":50.1,"lon":8.7,"relays":[{"name":"fra-1","addr":"198.18.1.1:443","pin":"sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","key":"relaykey:0000000000000000000000000000000000000000000000000000000000000001"}]}]}`))
	f.Add([]byte(`{"regions":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := coordinator.ParseRelayMap(b)
		if err != nil {
			return
		}
		for _, r := range m.Regions {
			for _, rl := range r.Relays {
				if rl.Key.IsZero() || rl.State != netmap.RelayStatic {
					t.Fatalf("accepted relay %+v", rl)
				}
			}
		}
	})
}

// FuzzAPI sends fuzzed bodies, properly proven by a registered node, to
// every request-response endpoint (the map stream's decoding is the same
// decodeJSON path): the coordinator must answer each with a status below 500.
func FuzzAPI(f *testing.F) {
	s := coordtest.Start(f)
	n := s.Register(f, s.AuthKey(f, coordinator.AuthKeyRequest{Reusable: true}), "fuzz")
	shared := key.Precompute(n.Key, s.Info.Key)
	h := s.Handler()
	for _, seed := range []string{
		`{"endpoints":["198.18.0.1:41641"],"home_relay":"nyc"}`,
		`{"version":1,"disco_key":"discokey:0000000000000000000000000000000000000000000000000000000000000001"}`,
		`{"version":1,"auth_key":"x","node_key":"nodekey:00","disco_key":"discokey:00"}`,
		`{"clients":1}`, `[]`, `null`,
		`{"advertised_routes":["198.19.50.0/24","198.19.60.0/24"],"exit_node":true}`,
		`{"advertised_routes":["100.64.0.0/24","0.0.0.0/0"]}`,
	} {
		for p := range 4 {
			f.Add(uint8(p), []byte(seed))
		}
	}
	paths := []string{coordinator.PathUpdate, coordinator.PathRegister, coordinator.PathRelayJoin, coordinator.PathRelayBeat}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		path := paths[int(which)%len(paths)]
		req := httptest.NewRequest("POST", path, bytes.NewReader(body))
		req.Header.Set(netmap.ProofHeader, netmap.MakeProof(&shared, n.Key.Public().String(), "POST", path, body, time.Now()))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 {
			b, _ := io.ReadAll(w.Body)
			t.Fatalf("%s %q: HTTP %d %s", path, body, w.Code, b)
		}
	})
}
