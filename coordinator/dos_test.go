package coordinator_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// fromAddr returns a copy of the server's pinned HTTP client whose
// connections come from the loopback address ip (127.0.0.0/8 is all
// loopback on Linux), so a test can play several source addresses.
func fromAddr(t testing.TB, s *coordtest.Server, ip string) *http.Client {
	t.Helper()
	tr := s.HTTP.Transport.(*http.Transport).Clone()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr.DialContext = d.DialContext
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// postProven sends body to path with a proof made by (shared, pub) and
// returns the status.
func postProven(t testing.TB, hc *http.Client, s *coordtest.Server, path string, body []byte, shared *key.SharedKey, pub string, hdr http.Header) int {
	t.Helper()
	req, err := newRawRequest(s.URL()+path, body, netmap.MakeProof(shared, pub, "POST", path, body, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestBogusFloodDoesNotLockOut floods register and relay/join with
// requests that carry valid proofs of possession (fresh keys) but auth and
// join keys the coordinator never issued, many more than the replay cache
// holds, and then checks that a node and a relay with real keys still get
// in. Before the credential was checked ahead of the nonce, the flood
// filled the cache and everyone got 503.
func TestBogusFloodDoesNotLockOut(t *testing.T) {
	const cacheSize = 32
	const flood = 4 * cacheSize
	s := coordtest.Start(t, func(c *coordinator.Config) { c.ReplayCacheSize = cacheSize })
	hc := fromAddr(t, s, "127.0.0.9")
	disco := key.NewDisco().Public()
	for i := range flood {
		nk := key.NewNode()
		shared := key.Precompute(nk, s.Info.Key)
		body, _ := json.Marshal(netmap.RegisterRequest{Version: netmap.CurrentCapabilityVersion,
			AuthKey: netmap.FormatAuthKey(netmap.NewSecret(), s.Pin()), NodeKey: nk.Public(), DiscoKey: disco, Hostname: "bogus", OS: "linux"})
		if code := postProven(t, hc, s, coordinator.PathRegister, body, &shared, nk.Public().String(), nil); code != http.StatusUnauthorized {
			t.Fatalf("bogus register %d: HTTP %d, want 401", i, code)
		}
		rk := key.NewRelay()
		rshared := key.Precompute(rk, s.Info.Key)
		body, _ = json.Marshal(netmap.RelayJoinRequest{Version: netmap.CurrentCapabilityVersion, Region: "nyc",
			PublicAddr: "198.18.0.1:443", Key: rk.Public(), Pin: s.Pin()})
		hdr := http.Header{"Authorization": {"Bearer " + netmap.FormatJoinKey(netmap.NewSecret(), s.Pin())}}
		if code := postProven(t, hc, s, coordinator.PathRelayJoin, body, &rshared, rk.Public().String(), hdr); code != http.StatusUnauthorized {
			t.Fatalf("bogus join %d: HTTP %d, want 401", i, code)
		}
	}
	s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "legit")
	jk, err := s.CreateJoinKey(t.Context(), "nyc", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := coordclient.JoinRelay(t.Context(), s.URL(), jk, key.NewRelay(), netmap.RelayJoinRequest{
		Region: "nyc", PublicAddr: "198.18.0.1:443", Pin: testPin(t)}); err != nil {
		t.Fatalf("legit relay join after the flood: %v", err)
	}
}

// TestReplayBoundPerSource: one source that sends more authenticated
// requests than its share of the replay cache is refused (429), and a node
// at another address is not.
func TestReplayBoundPerSource(t *testing.T) {
	const perSource = 16
	s := coordtest.Start(t, func(c *coordinator.Config) { c.ReplayPerSource = perSource })
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	a, b := s.Register(t, ak, "a"), s.Register(t, ak, "b")
	noisy := coordclient.New(s.URL(), fromAddr(t, s, "127.0.0.2"), s.Info, a.Key)
	var refused error
	for range 2 * perSource {
		if err := noisy.Update(t.Context(), netmap.UpdateRequest{}); err != nil {
			refused = err
			break
		}
	}
	var ae *coordclient.APIError
	if !errors.As(refused, &ae) || ae.Status != http.StatusTooManyRequests {
		t.Fatalf("source past its replay share: %v, want HTTP 429", refused)
	}
	quiet := coordclient.New(s.URL(), fromAddr(t, s, "127.0.0.3"), s.Info, b.Key)
	if err := quiet.Update(context.Background(), netmap.UpdateRequest{}); err != nil {
		t.Fatalf("another source: %v", err)
	}
}
