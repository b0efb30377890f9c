package punch

import "testing"

func TestRoleFor(t *testing.T) {
	for _, tc := range []struct {
		name                                       string
		selfHard, selfMapped, peerHard, peerMapped bool
		want                                       Role
	}{
		{"easy-easy", false, false, false, false, RoleNone},
		{"hard-easy", true, false, false, false, RoleHard},
		{"easy-hard", false, false, true, false, RoleEasy},
		{"hard-hard", true, false, true, false, RoleNone},
		{"hard with mapping, easy", true, true, false, false, RoleNone},
		{"hard-hard, peer mapped", true, false, true, true, RoleHard},
		{"hard-hard, both mapped", true, true, true, true, RoleNone},
	} {
		got := RoleFor(tc.selfHard, tc.selfMapped, tc.peerHard, tc.peerMapped)
		if got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
		// The peer, from the same facts, takes the other part.
		peer := RoleFor(tc.peerHard, tc.peerMapped, tc.selfHard, tc.selfMapped)
		if (got == RoleHard) != (peer == RoleEasy) || (got == RoleNone) != (peer == RoleNone) {
			t.Errorf("%s: roles %v and %v do not match", tc.name, got, peer)
		}
	}
}
