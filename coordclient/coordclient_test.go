package coordclient_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

func TestNewHTTPClientChecks(t *testing.T) {
	if _, err := coordclient.NewHTTPClient("ftp://x", ""); err == nil {
		t.Error("ftp URL accepted")
	}
	if _, err := coordclient.NewHTTPClient("https://127.0.0.1:1", "sha256/short"); err == nil {
		t.Error("bad pin accepted")
	}
	if _, err := coordclient.DialWithAuthKey(context.Background(), "https://127.0.0.1:1", "nope", key.NewNode()); err == nil {
		t.Error("malformed auth key accepted")
	}
}

// TestDialRegisterWatch goes the way a node does: URL plus auth key only.
func TestDialRegisterWatch(t *testing.T) {
	s := coordtest.Start(t)
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := coordclient.DialWithAuthKey(ctx, s.URL(), ak, key.NewNode())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Register(ctx, ak, key.NewDisco().Public(), "me", "linux"); err != nil {
		t.Fatal(err)
	}
	s.Register(t, ak, "peer")
	ep := netip.MustParseAddrPort("198.18.0.5:41641")
	err = c.Watch(ctx, netmap.MapRequest{Endpoints: []netip.AddrPort{ep}}, func(nm *netmap.NetworkMap, m *netmap.MapResponse) error {
		if !m.Full {
			t.Fatalf("first frame is not a full map: %+v", m)
		}
		if _, ok := nm.PeerByName("peer"); !ok || nm.Self.Endpoints[0] != ep {
			t.Fatalf("map: %+v", nm)
		}
		cancel()
		return nil
	})
	if err != context.Canceled {
		t.Fatalf("Watch ended with %v", err)
	}
	// The pin is really checked: a client trusting another pin fails.
	other := "sha256/" + strings.Repeat("A", 43)
	if _, err := coordclient.Dial(context.Background(), s.URL(), other, key.NewNode()); err == nil {
		t.Fatal("a coordinator with another certificate was trusted")
	}
}

// TestNoPinVerifiesWithSystemRoots: without a pin (an interactive login
// without --coordinator-pin) the client verifies the certificate against
// the system's CA roots, so the coordinator's self-signed one is refused;
// with its pin the same coordinator is reached.
func TestNoPinVerifiesWithSystemRoots(t *testing.T) {
	s := coordtest.Start(t)
	hc, err := coordclient.NewHTTPClient(s.URL(), "")
	if err != nil {
		t.Fatal(err)
	}
	var ue x509.UnknownAuthorityError
	if _, err := coordclient.FetchInfo(context.Background(), hc, s.URL()); !errors.As(err, &ue) {
		t.Fatalf("self-signed coordinator without a pin: %v", err)
	}
	if _, err := coordclient.Dial(context.Background(), s.URL(), s.Pin(), key.NewNode()); err != nil {
		t.Fatalf("with the pin: %v", err)
	}
}
