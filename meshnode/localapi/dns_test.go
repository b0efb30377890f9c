package localapi

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

// dnsBackend is fakeBackend with a resolver that answers "b" and refuses
// an unknown type.
type dnsBackend struct {
	fakeBackend
	asked []string
}

func (d *dnsBackend) DNSQuery(_ context.Context, name, qtype string) (DNSAnswer, error) {
	d.asked = append(d.asked, name+" "+qtype)
	if qtype == "BOGUS" {
		return DNSAnswer{}, fmt.Errorf("%w: unknown type %q", ErrBadRequest, qtype)
	}
	return DNSAnswer{Name: name + ".mesh.test.", Type: qtype, Rcode: "NOERROR", Source: "mesh",
		Answers: []string{name + ".mesh.test.\t5\tIN\tA\t100.64.0.2"}}, nil
}

func serveFor(t *testing.T, b Backend) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), SocketName)
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go NewServer(b, slog.New(slog.DiscardHandler)).Serve(ctx, ln)
	return NewClient(sock)
}

// TestDNSQuery: /v1/dns/query answers through the backend's resolver
// (type A by default), refuses a missing or oversized name and a bad type
// with the backend's message, and says so when the daemon has no
// resolver.
func TestDNSQuery(t *testing.T) {
	ctx := context.Background()
	db := &dnsBackend{}
	c := serveFor(t, db)
	a, err := c.DNSQuery(ctx, "b", "")
	if err != nil || a.Source != "mesh" || a.Rcode != "NOERROR" || len(a.Answers) != 1 {
		t.Fatalf("query b: %+v %v", a, err)
	}
	if db.asked[0] != "b A" {
		t.Fatalf("asked %q", db.asked)
	}
	if _, err := c.DNSQuery(ctx, "b", "BOGUS"); err == nil || !strings.Contains(err.Error(), "unknown type") {
		t.Fatalf("bad type: %v", err)
	}
	for _, name := range []string{"", strings.Repeat("a", maxDNSName+1)} {
		if _, err := c.DNSQuery(ctx, name, "A"); err == nil || !strings.Contains(err.Error(), "name is required") {
			t.Fatalf("name %d bytes: %v", len(name), err)
		}
	}
	if len(db.asked) != 2 {
		t.Fatalf("refused names reached the resolver: %q", db.asked)
	}
	plain := serveFor(t, &fakeBackend{down: make(chan struct{})})
	if _, err := plain.DNSQuery(ctx, "b", "A"); err == nil || !strings.Contains(err.Error(), "no DNS resolver") {
		t.Fatalf("daemon without a resolver: %v", err)
	}
}
