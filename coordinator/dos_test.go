package coordinator_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
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
	"github.com/wiremesh/wiremesh/tlspin"
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
	s := coordtest.Start(t, func(c *coordinator.Config) { c.ReplayCacheSize, c.ReplayPerSource = cacheSize, cacheSize })
	hc := s.HTTP // the same source address as the legitimate clients below
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

// slowBody opens a TLS connection from src, sends the headers of a POST
// that declares a body, and one byte of it: then nothing more.
func slowBody(t testing.TB, s *coordtest.Server, src string) *tls.Conn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: waitTimeout}
	c, err := tls.DialWithDialer(d, "tcp", s.Addr().String(), tlspin.ClientConfig(s.Pin(), "", "http/1.1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: coord\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{", coordinator.PathUpdate)
	return c
}

// waitClosed reads from c until the server ends the connection (an answer,
// then EOF), failing the test if that takes longer than waitTimeout.
func waitClosed(t testing.TB, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(waitTimeout))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: server kept the connection open", what)
	}
}

// TestSlowBodyCut: connections that trickle a declared body are cut after
// the body timeout, over HTTP/1.1 and HTTP/2, while a netmap stream opened
// before them keeps working after they are gone. Before request bodies had
// a deadline, the slow connections stayed open for ever.
func TestSlowBodyCut(t *testing.T) {
	s := coordtest.Start(t, func(c *coordinator.Config) { c.BodyTimeout = 200 * time.Millisecond })
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	a := s.Register(t, ak, "a")
	w := watch(t, a, netmap.MapRequest{})
	w.waitFor("first map", func(nm *netmap.NetworkMap) bool { return true })

	const conns = 20
	var slow []*tls.Conn
	for range conns {
		slow = append(slow, slowBody(t, s, "127.0.0.6"))
	}
	// HTTP/2: a stream whose body never finishes is reset.
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	go pw.Write([]byte("{"))
	req, _ := http.NewRequestWithContext(t.Context(), "POST", s.URL()+coordinator.PathUpdate, pr)
	h2err := make(chan error, 1)
	go func() {
		resp, err := s.HTTP.Do(req)
		if err == nil {
			if resp.StatusCode < 400 {
				err = fmt.Errorf("HTTP %d", resp.StatusCode)
			} else {
				err = nil
			}
			resp.Body.Close()
		} else {
			err = nil // the server reset the stream
		}
		h2err <- err
	}()
	for i, c := range slow {
		waitClosed(t, c, fmt.Sprintf("slow HTTP/1.1 body %d", i))
	}
	select {
	case err := <-h2err:
		if err != nil {
			t.Fatalf("slow HTTP/2 body: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("slow HTTP/2 body: stream kept open")
	}
	// The stream outlived every body deadline and still gets deltas.
	s.Register(t, ak, "b")
	w.waitFor("b after the slow bodies were cut", func(nm *netmap.NetworkMap) bool { return len(nm.Peers) == 1 })
}

// TestConnsPerSource: an address at its connection limit has further
// connections closed on accept; another address still gets served.
func TestConnsPerSource(t *testing.T) {
	const limit = 8
	s := coordtest.Start(t, func(c *coordinator.Config) { c.MaxConnsPerSource = limit })
	for range limit {
		slowBody(t, s, "127.0.0.7") // held open until the test ends
	}
	over, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.7")}}).Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	waitClosed(t, over, "connection past the per-source limit")
	hc := fromAddr(t, s, "127.0.0.8")
	if _, err := coordclient.FetchInfo(t.Context(), hc, s.URL()); err != nil {
		t.Fatalf("another source while one is at its limit: %v", err)
	}
}
