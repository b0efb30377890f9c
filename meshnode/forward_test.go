package meshnode

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/meshnode/netstack"
	"golang.org/x/net/proxy"
)

func allPorts(t testing.TB) netstack.PortSet {
	ps, err := netstack.ParsePorts([]string{"1-65535"})
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// helloServer serves "hello from NAME" on a localhost port until the test
// ends, and returns the port.
func helloServer(t *testing.T, name string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "hello from %s", name)
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// read dials addr through d and returns what the far end says before
// closing.
func read(d proxy.Dialer, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := d.(proxy.ContextDialer).DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	b, err := io.ReadAll(c)
	if len(b) == 0 && err == nil {
		err = io.ErrUnexpectedEOF
	}
	return string(b), err
}

// socksGreets reports whether a SOCKS5 server at addr (reached through d)
// answers a greeting.
func socksGreets(d proxy.Dialer, addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := d.(proxy.ContextDialer).DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	c.Write([]byte{5, 1, 0})
	var reply [2]byte
	_, err = io.ReadFull(c, reply[:])
	return err == nil && reply == [2]byte{5, 0}
}

func socksDialer(t *testing.T, addr string, via proxy.Dialer) proxy.Dialer {
	t.Helper()
	d, err := proxy.SOCKS5("tcp", addr, nil, via)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestUserspaceNoACLBypassThroughSOCKS5 is issue 18's finding 4: the policy
// allows a->c and c->b, and its own test says a must not reach b's port.
// a used to get there anyway through c's SOCKS5 proxy, which c's node
// forwarded to from the mesh like any other port. Now c never forwards its
// own listeners, even with every port listed, and a's proxy refuses b,
// which is not its peer.
func TestUserspaceNoACLBypassThroughSOCKS5(t *testing.T) {
	m := newMesh(t, "nyc")
	bPort := helloServer(t, "b")
	a := m.startNodeWith(t, "a", "", func(c *Config) { c.ForwardPorts = netstack.PortSet{} })
	b := m.startNodeWith(t, "b", "", func(c *Config) {
		c.ForwardPorts, _ = netstack.ParsePorts([]string{strconv.Itoa(bPort)})
	})
	c := m.startNode(t, "c", "") // forwards every port, its proxy's among them
	for _, n := range []*testNode{a, b, c} {
		n.waitStatus(t, "two peers under allow-all", func(st localapi.Status) bool { return len(st.Peers) == 2 })
	}
	policy := fmt.Sprintf(`{
		"acls": [
			{"action": "accept", "src": ["a"], "dst": ["c:*"]},
			{"action": "accept", "src": ["c"], "dst": ["b:*"]},
		],
		"tests": [{"src": "a", "accept": ["c:80"], "deny": ["b:%d"]}],
	}`, bPort)
	if err := m.coord.SetPolicy(context.Background(), []byte(policy)); err != nil {
		t.Fatal(err)
	}
	a.waitStatus(t, "only c as a peer", func(st localapi.Status) bool {
		_, hasC := peerNamed(st, "c")
		return len(st.Peers) == 1 && hasC
	})
	c.waitStatus(t, "a and b as peers", func(st localapi.Status) bool { return len(st.Peers) == 2 })

	// What the policy allows works: c reaches b's service, a reaches a
	// forwarded service on c.
	if got, err := read(socksDialer(t, c.socks, proxy.Direct), "b:"+strconv.Itoa(bPort)); err != nil || got != "hello from b" {
		t.Fatalf("c -> b (allowed): %q %v", got, err)
	}
	cPort := helloServer(t, "c")
	if got, err := read(socksDialer(t, a.socks, proxy.Direct), "c:"+strconv.Itoa(cPort)); err != nil || got != "hello from c" {
		t.Fatalf("a -> c (allowed): %q %v", got, err)
	}

	// The bypass: a's proxy to c's proxy port over the mesh, then CONNECT
	// b from there.
	_, cSocksPort, _ := net.SplitHostPort(c.socks)
	viaC := socksDialer(t, "c:"+cSocksPort, socksDialer(t, a.socks, proxy.Direct))
	if got, err := read(viaC, "b:"+strconv.Itoa(bPort)); err == nil {
		t.Fatalf("a reached b:%d through c's SOCKS5: %q", bPort, got)
	}
	// And a's own proxy refuses b, which is not a's peer.
	if got, err := read(socksDialer(t, a.socks, proxy.Direct), "b:"+strconv.Itoa(bPort)); err == nil {
		t.Fatalf("a reached b:%d through its own proxy: %q", bPort, got)
	}
}

// TestUserspaceLocalhostNotExposed: under the default allow-all policy a
// peer used to reach every localhost-only service on a userspace node. Now
// only the ports the node lists are forwarded, and never its own SOCKS5
// proxy or metrics; a node's proxy refuses its own address too.
func TestUserspaceLocalhostNotExposed(t *testing.T) {
	m := newMesh(t, "nyc")
	metrics := freeAddr(t)
	listed := helloServer(t, "b-listed")
	_, mPort, _ := net.SplitHostPort(metrics)
	var bSocksPort string
	a := m.startNodeWith(t, "a", "", func(c *Config) { c.ForwardPorts = netstack.PortSet{} })
	b := m.startNodeWith(t, "b", "", func(c *Config) {
		c.Metrics = metrics
		_, bSocksPort, _ = net.SplitHostPort(c.Socks5)
		// The operator even lists the proxy and metrics ports: they
		// are still not forwarded.
		c.ForwardPorts, _ = netstack.ParsePorts([]string{strconv.Itoa(listed), bSocksPort, mPort})
	})
	for _, n := range []*testNode{a, b} {
		n.waitStatus(t, "one peer", func(st localapi.Status) bool { return len(st.Peers) == 1 })
	}
	private := helloServer(t, "b-private")
	d := socksDialer(t, a.socks, proxy.Direct)
	if got, err := read(d, "b:"+strconv.Itoa(listed)); err != nil || got != "hello from b-listed" {
		t.Fatalf("listed port: %q %v", got, err)
	}
	if got, err := read(d, "b:"+strconv.Itoa(private)); err == nil {
		t.Errorf("unlisted localhost service (port %d) reachable from a: %q", private, got)
	}
	// Each of b's own listeners is asked in its own protocol, so that a
	// forwarded one would answer.
	hc := &http.Client{Transport: &http.Transport{DialContext: d.(proxy.ContextDialer).DialContext}, Timeout: 15 * time.Second}
	if resp, err := hc.Get("http://b:" + mPort + "/metrics"); err == nil {
		resp.Body.Close()
		t.Errorf("b's metrics (port %s) reachable from a: %s", mPort, resp.Status)
	}
	if socksGreets(d, "b:"+bSocksPort) {
		t.Errorf("b's SOCKS5 proxy (port %s) reachable from a", bSocksPort)
	}
	// a's proxy does not loop back into a's own node.
	if got, err := read(d, "a:"+strconv.Itoa(private)); err == nil {
		t.Errorf("a's proxy dialled a itself: %q", got)
	}
}
