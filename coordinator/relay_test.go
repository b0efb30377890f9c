package coordinator_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/tlspin"
)

// testPin returns the pin of a freshly generated relay certificate.
func testPin(t *testing.T) string {
	certPEM, _, err := tlspin.Generate("relay")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return tlspin.Pin(cert)
}

func TestRelayJoinHeartbeatDownUp(t *testing.T) {
	s := coordtest.Start(t, func(c *coordinator.Config) {
		c.HeartbeatInterval = 100 * time.Millisecond
		c.SweepInterval = 20 * time.Millisecond
		c.RelayMapFile = writeFile(t, `{"regions":[{"code":"fra","name":"Frankfurt","lat":50.1,"lon":8.7,"relays":[
			{"name":"fra-1","addr":"198.18.1.1:443","pin":"sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","key":"`+key.NewRelay().Public().String()+`"}]}]}`)
	})
	ctx := context.Background()
	jk, err := s.CreateJoinKey(ctx, "nyc", "New York")
	if err != nil {
		t.Fatal(err)
	}
	if _, pin, err := netmap.ParseJoinKey(jk); err != nil || pin != s.Pin() {
		t.Fatalf("join key %q does not carry the pin: %v", jk, err)
	}
	node := s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "n")
	w := watch(t, node, netmap.MapRequest{})
	w.waitFor("static region", func(nm *netmap.NetworkMap) bool { return len(nm.RelayMap.Regions) == 2 })

	pin := testPin(t)
	r1, r2 := key.NewRelay(), key.NewRelay()
	// Wrong region for the key, and a forged key, are refused.
	if _, _, err := coordclient.JoinRelay(ctx, s.URL(), jk, r1, netmap.RelayJoinRequest{Region: "fra", PublicAddr: "198.18.2.1:443", Pin: pin}); err == nil {
		t.Fatal("join into another region accepted")
	}
	forged := netmap.FormatJoinKey(netmap.NewSecret(), s.Pin())
	if _, _, err := coordclient.JoinRelay(ctx, s.URL(), forged, r1, netmap.RelayJoinRequest{Region: "nyc", PublicAddr: "198.18.2.1:443", Pin: pin}); !coordclient.IsUnauthorized(err) {
		t.Fatalf("forged join key: %v", err)
	}
	if _, _, err := coordclient.JoinRelay(ctx, s.URL(), jk, r1, netmap.RelayJoinRequest{Region: "nyc", PublicAddr: "nope", Pin: pin}); err == nil {
		t.Fatal("bad public addr accepted")
	}
	// A relay that never joined cannot heartbeat.
	stranger, err := coordclient.NewRelayClient(ctx, s.URL(), s.Pin(), key.NewRelay())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stranger.Heartbeat(ctx, netmap.RelayHeartbeat{}); !coordclient.IsUnauthorized(err) {
		t.Fatalf("heartbeat before join: %v", err)
	}

	c1, resp1, err := coordclient.JoinRelay(ctx, s.URL(), jk, r1, netmap.RelayJoinRequest{Region: "nyc", PublicAddr: "198.18.2.1:443", Pin: pin})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp1.AdmitKeys) != 1 || resp1.AdmitKeys[0] != s.Info.AdmitKeys[0] || resp1.MeshSecret == "" ||
		time.Duration(resp1.HeartbeatInterval) != 100*time.Millisecond || resp1.Region.Code != "nyc" || resp1.Region.Name != "New York" {
		t.Fatalf("join response: %+v", resp1)
	}
	_, resp2, err := coordclient.JoinRelay(ctx, s.URL(), jk, r2, netmap.RelayJoinRequest{Region: "nyc", Name: "nyc-b", PublicAddr: "198.18.2.2:443", Pin: pin})
	if err != nil {
		t.Fatal(err)
	}
	if resp2.MeshSecret != resp1.MeshSecret || len(resp2.Region.Relays) != 2 {
		t.Fatalf("second relay of the region: %+v", resp2)
	}
	hb, err := c1.Heartbeat(ctx, netmap.RelayHeartbeat{Clients: 3})
	if err != nil || len(hb.Region.Relays) != 2 {
		t.Fatalf("heartbeat: %+v %v", hb, err)
	}
	w.waitFor("nyc relays in node map", func(nm *netmap.NetworkMap) bool {
		for _, r := range nm.RelayMap.Regions {
			if r.Code == "nyc" && len(r.Relays) == 2 {
				return true
			}
		}
		return false
	})
	// Both stop heartbeating: marked down. r1 comes back: marked up; r1 draining.
	state := func(nm *netmap.NetworkMap, name string) (string, bool) {
		for _, r := range nm.RelayMap.Regions {
			for _, rl := range r.Relays {
				if rl.Name == name {
					return rl.State, rl.Healthy
				}
			}
		}
		return "", false
	}
	r1Name := resp1.Name
	w.waitFor("relays down", func(nm *netmap.NetworkMap) bool {
		a, ha := state(nm, r1Name)
		b, _ := state(nm, "nyc-b")
		return a == netmap.RelayDown && b == netmap.RelayDown && !ha
	})
	if _, err := c1.Heartbeat(ctx, netmap.RelayHeartbeat{}); err != nil {
		t.Fatal(err)
	}
	w.waitFor("r1 up", func(nm *netmap.NetworkMap) bool { st, h := state(nm, r1Name); return st == netmap.RelayUp && h })
	if _, err := c1.Heartbeat(ctx, netmap.RelayHeartbeat{Draining: true}); err != nil {
		t.Fatal(err)
	}
	w.waitFor("r1 draining", func(nm *netmap.NetworkMap) bool { st, h := state(nm, r1Name); return st == netmap.RelayDraining && !h })
	nm := w.waitFor("static", func(*netmap.NetworkMap) bool { return true })
	if st, h := state(&nm, "fra-1"); st != netmap.RelayStatic || !h {
		t.Errorf("static relay: %s %v", st, h)
	}
	rel := s.Relays()
	if len(rel) != 3 {
		t.Errorf("relays list: %+v", rel)
	}
}
