//go:build linux

package router

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/meshnode/routes"
	"golang.org/x/sys/unix"
)

func describe(r *Router, s State, tunIndex int) []string {
	var out []string
	for _, rt := range r.desiredRoutes(s, tunIndex) {
		k := keyOf(rt)
		var kind string
		switch rt.Type {
		case unix.RTN_UNREACHABLE:
			kind = "unreachable"
		case unix.RTN_THROW:
			kind = "throw"
		default:
			kind = "dev"
		}
		out = append(out, kind+" "+k.dst.String())
	}
	slices.Sort(out)
	return out
}

func TestDesiredRoutes(t *testing.T) {
	r := &Router{cfg: Config{TUN: "wm0", Self: netip.MustParseAddr("100.64.0.2")}}
	lan := netip.MustParsePrefix("198.19.2.0/24")
	sub := netip.MustParsePrefix("198.19.50.0/24")
	lan6 := netip.MustParsePrefix("2001:db8:1::/64") // documentation prefix; nothing is sent
	for _, tc := range []struct {
		name string
		s    State
		tun  int
		want []string
	}{
		{"nothing", State{}, 7, nil},
		{"subnet up", State{Routes: []Route{{sub, true}}}, 7,
			[]string{"dev 198.19.50.0/24", "unreachable 198.19.50.0/24"}},
		{"subnet down: only the backstop", State{Routes: []Route{{sub, false}}}, 7,
			[]string{"unreachable 198.19.50.0/24"}},
		{"no TUN: only backstops", State{Routes: []Route{{sub, true}, {routes.ExitPrefix, true}}}, 0,
			[]string{"throw fe80::/10", "unreachable 0.0.0.0/0", "unreachable 198.19.50.0/24", "unreachable ::/0"}},
		{"exit with LAN access", State{Routes: []Route{{routes.ExitPrefix, true}}, AllowLANAccess: true, LAN: []netip.Prefix{lan, lan6, netip.MustParsePrefix("fe80::/64")}}, 7,
			[]string{"dev 0.0.0.0/0", "throw 198.19.2.0/24", "throw 2001:db8:1::/64", "throw fe80::/10", "unreachable 0.0.0.0/0", "unreachable ::/0"}},
		{"exit without LAN access: IPv6 blackholed too", State{Routes: []Route{{routes.ExitPrefix, true}}, LAN: []netip.Prefix{lan, lan6}}, 7,
			[]string{"dev 0.0.0.0/0", "throw fe80::/10", "unreachable 0.0.0.0/0", "unreachable ::/0"}},
		{"LAN access without exit: no throws", State{Routes: []Route{{sub, true}}, AllowLANAccess: true, LAN: []netip.Prefix{lan}}, 7,
			[]string{"dev 198.19.50.0/24", "unreachable 198.19.50.0/24"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := describe(r, tc.s, tc.tun)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

func TestDesiredRulesOrder(t *testing.T) {
	rs := desiredRules(unix.AF_INET)
	for i := 1; i < len(rs); i++ {
		if rs[i].Priority <= rs[i-1].Priority {
			t.Fatalf("rule %d priority %d not after %d", i, rs[i].Priority, rs[i-1].Priority)
		}
	}
	last := rs[len(rs)-1]
	if last.Table != Table || last.Mark != 0 {
		t.Fatalf("last rule %+v, want an unmarked lookup of table %d", last, Table)
	}
	for _, r := range rs[:len(rs)-1] {
		if r.Mark != BypassMark || r.Mask == nil || *r.Mask != MarkMask {
			t.Fatalf("bypass rule %+v does not match the bypass mark", r)
		}
	}
	if rs[len(rs)-1].Priority >= 32766 {
		t.Fatal("table rule after the main table's")
	}
	if BypassMark&MarkMask != BypassMark || MasqMark&MarkMask != MasqMark || BypassMark == MasqMark {
		t.Fatal("marks outside the mask or equal")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Self: netip.MustParseAddr("100.64.0.1")},
		{TUN: "a-very-long-name0", Self: netip.MustParseAddr("100.64.0.1")},
		{TUN: "wm0"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// TestSetRejectsBadInput: a bad State is refused before anything touches
// the kernel (this test runs unprivileged against no namespace at all).
func TestSetRejectsBadInput(t *testing.T) {
	r := &Router{cfg: Config{TUN: "wm0", Self: netip.MustParseAddr("100.64.0.2")}, log: slog.New(slog.DiscardHandler)}
	for _, tc := range []struct {
		name string
		s    State
		want error
	}{
		{"mesh range", State{Advertise: []netip.Prefix{netip.MustParsePrefix("100.64.1.0/24")}}, routes.ErrMeshRange},
		{"overlap", State{Advertise: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("198.19.1.0/24")}}, routes.ErrOverlap},
		{"exit in list", State{Advertise: []netip.Prefix{routes.ExitPrefix}}, routes.ErrExitRoute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := r.Set(tc.s); !errors.Is(err, tc.want) {
				t.Fatalf("Set: %v, want %v", err, tc.want)
			}
		})
	}
	if err := r.Set(State{Routes: []Route{{Prefix: netip.MustParsePrefix("198.19.1.1/24"), Up: true}}}); err == nil {
		t.Fatal("accepted route with host bits")
	}
}
