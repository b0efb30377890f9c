package coordinator

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/policy"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// TestChangeCostIsEdgeBased checks that finding the nodes a change affects
// examines only the nodes in the matching rules' sets, not every node: in a
// fleet of 2,000 nodes where a team of 10 sees only itself, a team member's
// change examines at most the team.
func TestChangeCostIsEdgeBased(t *testing.T) {
	st := newState()
	p, err := policy.Parse([]byte(`{"tagOwners": {"tag:team": [], "tag:hub": []},
		"acls": [
			{"action": "accept", "src": ["tag:team"], "dst": ["tag:team:*"]},
			{"action": "accept", "src": ["*"], "dst": ["tag:hub:443"]},
		]}`))
	if err != nil {
		t.Fatal(err)
	}
	st.setPolicyLocked(p)
	const fleet, team = 2000, 10
	now := time.Now()
	var member, hub, plain *nodeState
	for i := range fleet {
		var tags []string
		switch {
		case i < team:
			tags = []string{"tag:team"}
		case i == team:
			tags = []string{"tag:hub"}
		}
		n := &nodeState{id: netmap.NodeID(i + 1), nodeKey: key.NewNode().Public(), rec: store.Node{
			ID: int64(i + 1), Name: fmt.Sprint("n", i), Tags: tags, IP: netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}),
			KeyExpiry: now.Add(time.Hour)}}
		st.addLocked(n)
		switch {
		case i == 0:
			member = n
		case i == team:
			hub = n
		case i == fleet-1:
			plain = n
		}
	}
	count := func(x *nodeState) (seen int, visits int64) {
		before := st.visits.Load()
		st.visibleFrom(x, now, func(*nodeState) { seen++ })
		return seen, st.visits.Load() - before
	}
	// A team member sees its 9 teammates and the hub (every source may
	// reach the hub): 10 nodes, found by examining the sets of the rules it
	// matches (the team set from both sides, the hub set): 21 nodes.
	if seen, visits := count(member); seen != team || visits > 2*team+1 {
		t.Errorf("team member: sees %d (want %d), examined %d nodes (want ≤ %d)", seen, team, visits, 2*team+1)
	}
	// An untagged node sees only the hub.
	if seen, visits := count(plain); seen != 1 || visits > 1 {
		t.Errorf("plain node: sees %d, examined %d; want 1 and 1", seen, visits)
	}
	// The hub is seen by everyone: its change really affects the fleet.
	if seen, _ := count(hub); seen != fleet-1 {
		t.Errorf("hub: sees %d, want %d", seen, fleet-1)
	}
}
