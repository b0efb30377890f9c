package meshnode

import (
	"context"
	"github.com/wiremesh/wiremesh/internal/poll"
	"testing"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/relayd"
)

// BenchmarkBindSend measures the node's Bind.Send for one 1280-byte
// WireGuard packet per call, as wireguard-go calls it, on the relay path
// (the relay's UDP fast path, in-process relay on loopback: "relay" on a
// socket of the relay client's own, as with --relay-only, and
// "relay-shared" on the bind's socket, in batches) and on the direct path
// (loopback UDP). It includes everything between
// wireguard-go and the socket: path lookup, relay choice, the relay
// client and the syscall.
func BenchmarkBindSend(b *testing.B) {
	for _, path := range []string{"relay", "relay-shared", "direct"} {
		b.Run(path, func(b *testing.B) {
			m := newMeshWith(b, func(c *relayd.Config) { c.ListenFast = "127.0.0.1:0" }, "nyc")
			var a *Node
			mod := func(c *Config) {
				c.RelayOnly = path == "relay"
				c.testHook = func(n *Node) { a = n }
			}
			an := m.startNodeWith(b, "a", "", mod)
			// relay-shared: b has no UDP socket, so a has no direct
			// path to it, while a's relay fast path runs on a's socket.
			bn := m.startNodeWith(b, "b", "", func(c *Config) { c.RelayOnly = path != "direct" })
			for _, n := range []*testNode{an, bn} {
				n.waitStatus(b, "a peer and a home", func(st localapi.Status) bool { return len(st.Peers) == 1 && st.Self.HomeRelay != "" })
			}
			fetch(b, an, "b")
			want := "relay"
			if path == "direct" {
				want = "direct"
			}
			an.waitStatus(b, want+" path", func(st localapi.Status) bool { return st.Peers[0].Path == want })
			switch path {
			case "relay":
				waitFast(b, a)
			case "relay-shared":
				waitSharedFast(b, a)
			}
			st, _ := an.api.Status(context.Background())
			ep := a.bind.Peer(mustNodeKey(b, st.Peers[0].NodeKey))
			// Stop the receiver, so that only the sender's work (and the
			// relay's drop) is measured: allocations are counted process-wide.
			bn.shutdown(b)
			pkt := make([]byte, 1280)
			pkt[0] = 4 // WireGuard transport data
			bufs := [][]byte{pkt}
			b.SetBytes(int64(len(pkt)))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if err := a.bind.Send(bufs, ep); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func mustNodeKey(tb testing.TB, s string) key.NodePublic {
	k, err := key.ParseNodePublic(s)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// waitFast waits until n's home relay connection has its fast path.
func waitFast(tb testing.TB, n *Node) {
	tb.Helper()
	poll.Until(tb, "fast path to the home relay", func() bool {
		c, err := n.pool.Get(n.relays.Home())
		return err == nil && c.Conn() != nil && c.Conn().FastPath()
	})
}

// waitSharedFast waits until n's home relay connection has its fast path
// on the bind's socket.
func waitSharedFast(tb testing.TB, n *Node) {
	tb.Helper()
	poll.Until(tb, "shared-socket fast path to the home relay", func() bool {
		c, err := n.pool.Get(n.relays.Home())
		return err == nil && c.FastRoute() != nil
	})
}
