package filter

import (
	"os"
	"testing"

	"golang.zx2c4.com/wireguard/tun"
)

// fakeTUN records what is written to it and serves queued reads.
type fakeTUN struct {
	written [][]byte
	reads   [][]byte
}

func (f *fakeTUN) File() *os.File           { return nil }
func (f *fakeTUN) MTU() (int, error)        { return 1280, nil }
func (f *fakeTUN) Name() (string, error)    { return "fake", nil }
func (f *fakeTUN) Events() <-chan tun.Event { return nil }
func (f *fakeTUN) Close() error             { return nil }
func (f *fakeTUN) BatchSize() int           { return 4 }
func (f *fakeTUN) Write(bufs [][]byte, off int) (int, error) {
	for _, b := range bufs {
		f.written = append(f.written, append([]byte(nil), b[off:]...))
	}
	return len(bufs), nil
}
func (f *fakeTUN) Read(bufs [][]byte, sizes []int, off int) (int, error) {
	n := 0
	for n < len(bufs) && len(f.reads) > 0 {
		sizes[n] = copy(bufs[n][off:], f.reads[0])
		f.reads = f.reads[1:]
		n++
	}
	return n, nil
}

func withOffset(p []byte, off int) []byte { return append(make([]byte, off), p...) }

func TestDeviceFilters(t *testing.T) {
	const off = 16
	inner := &fakeTUN{}
	f := New(nil)
	var dropped []Verdict
	d := Wrap(inner, f, func(v Verdict) { dropped = append(dropped, v) })

	// The OS sends to C; C's reply must then pass, B's unsolicited packet not.
	inner.reads = [][]byte{ipv4(ProtoTCP, me, peerC, 40000, 80)}
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
	if len(inner.written) != 1 || string(inner.written[0]) != string(reply) {
		t.Fatalf("delivered %d packets, want only the reply", len(inner.written))
	}
	if len(dropped) != 2 || dropped[0] != DropNoRule {
		t.Fatalf("drops %v", dropped)
	}
	// A batch with no drops passes through whole.
	inner.written = nil
	if n, _ := d.Write([][]byte{withOffset(reply, off), withOffset(reply, off)}, off); n != 2 || len(inner.written) != 2 {
		t.Fatalf("clean batch: n=%d delivered=%d", n, len(inner.written))
	}
}
