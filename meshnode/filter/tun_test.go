package filter

import (
	"testing"

	"github.com/wiremesh/wiremesh/meshnode/tuntest"
)

func withOffset(p []byte, off int) []byte { return append(make([]byte, off), p...) }

func TestDeviceFilters(t *testing.T) {
	const off = 16
	inner := &tuntest.TUN{}
	f := New(nil)
	var dropped []Verdict
	d := Wrap(inner, f, func(v Verdict) { dropped = append(dropped, v) })

	// The OS sends to C; C's reply must then pass, B's unsolicited packet not.
	inner.Reads = [][]byte{ipv4(ProtoTCP, me, peerC, 40000, 80)}
	bufs := [][]byte{make([]byte, 100), make([]byte, 100)}
	sizes := make([]int, 2)
	if n, _ := d.Read(bufs, sizes, off); n != 1 {
		t.Fatalf("read %d", n)
	}
	reply := ipv4(ProtoTCP, peerC, me, 80, 40000)
	stranger := ipv4(ProtoTCP, peerB, me, 80, 40000)
	n, err := d.Write([][]byte{withOffset(stranger, off), withOffset(reply, off), withOffset(stranger, off)}, off)
	if err != nil || n != 3 {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if len(inner.Written) != 1 || string(inner.Written[0]) != string(reply) {
		t.Fatalf("delivered %d packets, want only the reply", len(inner.Written))
	}
	if len(dropped) != 2 || dropped[0] != DropNoRule {
		t.Fatalf("drops %v", dropped)
	}
	// A batch with no drops passes through whole.
	inner.Written = nil
	if n, _ := d.Write([][]byte{withOffset(reply, off), withOffset(reply, off)}, off); n != 2 || len(inner.Written) != 2 {
		t.Fatalf("clean batch: n=%d delivered=%d", n, len(inner.Written))
	}
}
