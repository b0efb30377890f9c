package meshnode

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/wiremesh/wiremesh/internal/poll"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/meshnode/portmap"
)

// fakeMapper is a portmap.Mapper whose mapping the test sets.
type fakeMapper struct {
	changed chan struct{}

	mu     sync.Mutex
	port   uint16 // the port it was asked to map
	ext    netip.AddrPort
	kind   portmap.Kind
	closed int
}

func (f *fakeMapper) Mapping() (netip.AddrPort, portmap.Kind) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ext, f.kind
}

func (f *fakeMapper) Changed() <-chan struct{} { return f.changed }

func (f *fakeMapper) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed++
	return nil
}

func (f *fakeMapper) set(ext netip.AddrPort, kind portmap.Kind) {
	f.mu.Lock()
	f.ext, f.kind = ext, kind
	f.mu.Unlock()
	select {
	case f.changed <- struct{}{}:
	default:
	}
}

func (f *fakeMapper) state() (port uint16, closed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.port, f.closed
}

// TestPortMappingWired runs two nodes, A with --port-mapping on a fake
// client: the client is asked for A's UDP port; its mapped address
// becomes one of A's endpoints and reaches B (through the coordinator) as a
// candidate for A; a lost mapping leaves both; netcheck reports the kind;
// and Run returns only after the client was closed (the mapping deleted).
// B runs with port mapping off and never starts a client.
func TestPortMappingWired(t *testing.T) {
	m := newMesh(t, "nyc")
	fake := &fakeMapper{changed: make(chan struct{}, 1)}
	starts := 0
	var an, bn *Node
	a := m.startNodeWith(t, "a", "", func(c *Config) {
		c.PortMapping = true
		c.testPortmap = func(_ context.Context, cfg portmap.Config) (portmap.Mapper, error) {
			fake.mu.Lock()
			fake.port = cfg.Port
			starts++
			fake.mu.Unlock()
			return fake, nil
		}
		c.testHook = func(n *Node) { an = n }
	})
	b := m.startNodeWith(t, "b", "", func(c *Config) {
		c.testPortmap = func(context.Context, portmap.Config) (portmap.Mapper, error) {
			t.Error("port mapping started with PortMapping off")
			return nil, nil
		}
		c.testHook = func(n *Node) { bn = n }
	})
	for _, n := range []*testNode{a, b} {
		n.waitStatus(t, "one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	poll.Until(t, "the client asked for A's port", func() bool {
		p, _ := fake.state()
		return p != 0 && p == an.bind.Port()
	})
	// 127.0.0.2 reaches A's socket too (all of 127/8 is loopback), so the
	// "mapped" address is a real one that no STUN answer or local address
	// gives.
	mapped := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), an.bind.Port())
	fake.set(mapped, portmap.KindNATPMP)
	aKey := an.priv.Public()
	poll.Until(t, "the mapped address is A's endpoint and B's candidate", func() bool {
		return slices.Contains(an.discovery.Endpoints(), mapped) && slices.Contains(bn.paths.Candidates(aKey), mapped)
	})
	nc, err := a.api.Netcheck(context.Background())
	if err != nil || nc.PortMapping != "nat-pmp" {
		t.Fatalf("netcheck: %+v %v", nc, err)
	}
	if nc, err := b.api.Netcheck(context.Background()); err != nil || nc.PortMapping != "" {
		t.Fatalf("B's netcheck: %+v %v", nc, err)
	}

	fake.set(netip.AddrPort{}, portmap.KindNone)
	poll.Until(t, "the lost mapping left A's endpoints", func() bool {
		return !slices.Contains(an.discovery.Endpoints(), mapped)
	})
	if nc, err := a.api.Netcheck(context.Background()); err != nil || nc.PortMapping != "" {
		t.Fatalf("netcheck after the loss: %+v %v", nc, err)
	}

	a.shutdown(t)
	if _, closed := fake.state(); closed != 1 || starts != 1 {
		t.Fatalf("after Run returned: closed %d times, started %d times", closed, starts)
	}
}
