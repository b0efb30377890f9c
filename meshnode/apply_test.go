package meshnode

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// peerDelta is the UAPI for turning peer set old into next, as a full map
// applies it.
func peerDelta(old, next map[key.NodePublic]netmap.Node) string {
	var b strings.Builder
	for k, o := range old {
		if _, ok := next[k]; !ok {
			writeUAPI(&b, peerChange{key: k, old: o, had: true})
		}
	}
	for k, p := range next {
		o, had := old[k]
		writeUAPI(&b, peerChange{key: k, old: o, had: had, next: p, has: true})
	}
	return b.String()
}

func TestPeerDelta(t *testing.T) {
	kb, kc, kd := key.NewNode().Public(), key.NewNode().Public(), key.NewNode().Public()
	pfx := func(s string) []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix(s)} }
	b := netmap.Node{Name: "b", NodeKey: kb, DiscoKey: key.NewDisco().Public(), Addresses: pfx("100.64.0.2/32"), AllowedIPs: pfx("100.64.0.2/32")}
	c := netmap.Node{Name: "c", NodeKey: kc, DiscoKey: key.NewDisco().Public(), Addresses: pfx("100.64.0.3/32"), AllowedIPs: pfx("100.64.0.3/32")}
	d := netmap.Node{Name: "d", NodeKey: kd, DiscoKey: key.NewDisco().Public(), Addresses: pfx("100.64.0.4/32")}
	old := map[key.NodePublic]netmap.Node{kb: b, kc: c}

	// Unchanged peers cost nothing.
	if got := peerDelta(old, old); got != "" {
		t.Fatalf("no-op delta: %q", got)
	}
	c2 := c
	c2.DiscoKey = key.NewDisco().Public() // c restarted
	next := map[key.NodePublic]netmap.Node{kc: c2, kd: d}
	got := peerDelta(old, next)
	for _, want := range []string{
		"public_key=" + kb.UAPI() + "\nremove=true\n",                                                                      // b gone
		"public_key=" + kc.UAPI() + "\nremove=true\npublic_key=" + kc.UAPI() + "\nendpoint=" + kc.String(),                 // c re-created
		"public_key=" + kd.UAPI() + "\nendpoint=" + kd.String() + "\nreplace_allowed_ips=true\nallowed_ip=100.64.0.4/32\n", // d added, addresses as allowed IPs
	} {
		if !strings.Contains(got, want) {
			t.Fatalf("delta lacks %q:\n%s", want, got)
		}
	}
	// An allowed-IP change updates in place, without re-creating the peer.
	c3 := c
	c3.AllowedIPs = append(pfx("100.64.0.3/32"), netip.MustParsePrefix("198.18.9.0/24"))
	got = peerDelta(map[key.NodePublic]netmap.Node{kc: c}, map[key.NodePublic]netmap.Node{kc: c3})
	if strings.Contains(got, "remove=true") || strings.Contains(got, "endpoint=") || !strings.Contains(got, "allowed_ip=198.18.9.0/24") {
		t.Fatalf("allowed-ip delta: %q", got)
	}
}
