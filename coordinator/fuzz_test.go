package coordinator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
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

// FuzzAPI sends fuzzed bodies, properly proven by a registered node or a
// joined relay, to every request-response endpoint (the map stream's
// decoding is the same decodeJSON path): the coordinator must answer each
// with a status below 500.
func FuzzAPI(f *testing.F) {
	s := coordtest.Start(f, func(c *coordinator.Config) { c.RevocationPollTimeout = time.Millisecond })
	n := s.Register(f, s.AuthKey(f, coordinator.AuthKeyRequest{Reusable: true}), "fuzz")
	shared := key.Precompute(n.Key, s.Info.Key)
	jk, err := s.CreateJoinKey(f.Context(), "nyc", "")
	if err != nil {
		f.Fatal(err)
	}
	rk := key.NewRelay()
	if _, _, err := coordclient.JoinRelay(f.Context(), s.URL(), jk, rk, netmap.RelayJoinRequest{Region: "nyc", PublicAddr: "198.18.0.1:443",
		Pin: "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}); err != nil {
		f.Fatal(err)
	}
	rshared := key.Precompute(rk, s.Info.Key)
	h := s.Handler()
	for _, seed := range []string{
		`{"endpoints":["198.18.0.1:41641"],"home_relay":"nyc"}`,
		`{"version":1,"disco_key":"discokey:0000000000000000000000000000000000000000000000000000000000000001"}`,
		`{"version":1,"auth_key":"x","node_key":"nodekey:00","disco_key":"discokey:00"}`,
		`{"clients":1}`, `{"after":0}`, `{"after":18446744073709551615}`, `[]`, `null`,
		`{"advertised_routes":["198.19.50.0/24","198.19.60.0/24"],"exit_node":true}`,
		`{"advertised_routes":["100.64.0.0/24","0.0.0.0/0"]}`,
	} {
		for p := range 10 {
			f.Add(uint8(p), []byte(seed))
		}
	}
	paths := []string{coordinator.PathUpdate, coordinator.PathRegister, coordinator.PathRelayJoin, coordinator.PathRelayBeat, coordinator.PathRelayRevs}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		path := paths[int(which)%len(paths)]
		req := httptest.NewRequest("POST", path, bytes.NewReader(body))
		if which/uint8(len(paths))%2 == 0 {
			req.Header.Set(netmap.ProofHeader, netmap.MakeProof(&shared, n.Key.Public().String(), "POST", path, body, time.Now()))
		} else {
			req.Header.Set(netmap.ProofHeader, netmap.MakeProof(&rshared, rk.Public().String(), "POST", path, body, time.Now()))
			req.Header.Set("Authorization", "Bearer "+jk)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code >= 500 {
			b, _ := io.ReadAll(w.Body)
			t.Fatalf("%s %q: HTTP %d %s", path, body, w.Code, b)
		}
	})
}

// FuzzLogin sends fuzzed bodies to the interactive-login endpoints, each
// proven with a node key (the fuzzed node_key usually differs from it):
// every answer is below 500, except 503 once the waiting logins reach
// their limit.
func FuzzLogin(f *testing.F) {
	s := coordtest.Start(f, func(c *coordinator.Config) { c.WebListen = "127.0.0.1:0" })
	nk := key.NewNode()
	shared := key.Precompute(nk, s.Info.Key)
	h := s.Handler()
	for _, seed := range []string{
		`{"version":1,"node_key":"` + nk.Public().String() + `","hostname":"laptop","os":"linux"}`,
		`{"version":1,"node_key":"nodekey:00","hostname":"x"}`,
		`{"code":"AAAAAAAAAAAAAAAAAAAAAA"}`, `{"code":""}`, `[]`, `null`,
	} {
		f.Add(uint8(0), []byte(seed))
		f.Add(uint8(1), []byte(seed))
	}
	paths := []string{coordinator.PathLogin, coordinator.PathLoginWait}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		path := paths[int(which)%len(paths)]
		req := httptest.NewRequest("POST", path, bytes.NewReader(body))
		req.Header.Set(netmap.ProofHeader, netmap.MakeProof(&shared, nk.Public().String(), "POST", path, body, time.Now()))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		b, _ := io.ReadAll(w.Body)
		if w.Code >= 500 && !(w.Code == 503 && bytes.Contains(b, []byte("too many logins"))) {
			t.Fatalf("%s %q: HTTP %d %s", path, body, w.Code, b)
		}
	})
}

// FuzzAdmin drives the admin socket's handler with fuzzed methods, paths
// and bodies: every answer must be JSON (or the policy text) with a status
// below 500, and the server must keep serving.
func FuzzAdmin(f *testing.F) {
	s := coordtest.Start(f)
	ak := s.AuthKey(f, coordinator.AuthKeyRequest{Reusable: true})
	for _, name := range []string{"a", "b", "c"} {
		s.Register(f, ak, name)
	}
	h := s.AdminHandler()
	paths := []string{coordinator.AdminPathAuthKey, coordinator.AdminPathRelayKey, coordinator.AdminPathRelayKeys,
		coordinator.AdminPathRelayKeyRevoke, coordinator.AdminPathNodes, coordinator.AdminPathDelete,
		coordinator.AdminPathExpire, coordinator.AdminPathRelays, coordinator.AdminPathPolicy, coordinator.AdminPathWebLogin, "/admin/v1/nope"}
	methods := []string{"GET", "POST", "PUT", "DELETE"}
	for i, seed := range []string{
		`{"reusable":true,"tags":["tag:x"],"expiry":"24h"}`, `{"region":"nyc","expiry":"1h"}`, `{"id":1}`, `{"name":"a"}`,
		`{"acls":[{"action":"accept","src":["*"],"dst":["*:*"]}]}`, `{"expiry":"-5s"}`, `{"region":"NYC"}`, `{}`, `[`, ``,
	} {
		f.Add(uint8(i), uint8(1), []byte(seed))
		f.Add(uint8(i), uint8(2), []byte(seed))
	}
	f.Fuzz(func(t *testing.T, p, m uint8, body []byte) {
		path, method := paths[int(p)%len(paths)], methods[int(m)%len(methods)]
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(method, path, bytes.NewReader(body)))
		if w.Code >= 500 {
			t.Fatalf("%s %s %q: HTTP %d %s", method, path, body, w.Code, w.Body.String())
		}
		if w.Header().Get("Content-Type") == "application/json" && !json.Valid(w.Body.Bytes()) {
			t.Fatalf("%s %s %q: answer is not JSON: %q", method, path, body, w.Body.String())
		}
	})
}

// FuzzStateFiles starts a coordinator on a state directory whose key and
// certificate files (or database) hold fuzzed bytes: New must refuse them
// with a one-line error, leaving the file as it was, or start; it must
// never panic.
func FuzzStateFiles(f *testing.F) {
	ck, _ := key.NewCoord().MarshalText()
	sk, _ := key.NewSigning().MarshalText()
	f.Add(uint8(0), ck)
	f.Add(uint8(1), sk)
	f.Add(uint8(2), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add(uint8(3), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add(uint8(0), []byte("coordpriv:zz"))
	f.Add(uint8(4), []byte("SQLite format 3\x00garbage"))
	files := []string{"coordinator.key", "signing.key", "tls.crt", "tls.key", "coordinator.db"}
	f.Fuzz(func(t *testing.T, which uint8, b []byte) {
		dir := t.TempDir()
		name := files[int(which)%len(files)]
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		srv, err := coordinator.New(context.Background(), coordinator.Config{Listen: "127.0.0.1:0", StateDir: dir, NoAdminSocket: true})
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("%s: multi-line error %q", name, err)
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(after, b) {
				t.Fatalf("%s: refused (%v), but the file was rewritten", name, err)
			}
			return
		}
		srv.Close()
	})
}
