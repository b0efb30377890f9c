package punch

// Role is this node's part in a birthday search with one peer.
type Role int

const (
	// RoleNone: no search. Either both NATs keep one mapping per socket
	// (plain hole punching works), a port mapping gives the hard side a
	// stable address, or both are hard (the search cannot work: neither
	// side's port is predictable; the pair stays relayed).
	RoleNone Role = iota
	// RoleHard: this node is behind the hard NAT: it opens the sockets.
	RoleHard
	// RoleEasy: this node is behind the easy NAT: it probes.
	RoleEasy
)

func (r Role) String() string {
	switch r {
	case RoleHard:
		return "hard"
	case RoleEasy:
		return "easy"
	}
	return "none"
}

// RoleFor decides from both sides' netcheck results: hard is
// mapping_varies_by_dest, mapped is whether that side holds a port mapping
// (its mapped address is a stable candidate, so no search is needed).
// Both sides compute it from the same facts and reach matching roles.
func RoleFor(selfHard, selfMapped, peerHard, peerMapped bool) Role {
	selfHard = selfHard && !selfMapped
	peerHard = peerHard && !peerMapped
	switch {
	case selfHard && !peerHard:
		return RoleHard
	case peerHard && !selfHard:
		return RoleEasy
	}
	return RoleNone
}
