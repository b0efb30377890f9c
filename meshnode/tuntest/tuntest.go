// Package tuntest provides a fake TUN device for tests of the packages that
// wrap one (the packet filter, the subnet router's forwarder): it records
// every packet written to it and serves queued packets to reads.
package tuntest

import (
	"os"

	"golang.zx2c4.com/wireguard/tun"
)

// TUN is an in-memory tun.Device. It is not safe for concurrent use.
type TUN struct {
	// Written holds a copy of every packet written, without the offset.
	Written [][]byte
	// Reads are served, one packet per buffer, to Read calls in order.
	Reads [][]byte
	// Batch is what BatchSize reports (default 8).
	Batch int
}

var _ tun.Device = (*TUN)(nil)

// File returns nil: there is no file behind the fake.
func (f *TUN) File() *os.File { return nil }

// MTU reports 1280.
func (f *TUN) MTU() (int, error) { return 1280, nil }

// Name reports "fake".
func (f *TUN) Name() (string, error) { return "fake", nil }

// Events returns nil: the fake never changes state.
func (f *TUN) Events() <-chan tun.Event { return nil }

// Close does nothing.
func (f *TUN) Close() error { return nil }

// BatchSize reports Batch, or 8.
func (f *TUN) BatchSize() int {
	if f.Batch > 0 {
		return f.Batch
	}
	return 8
}

// Write records a copy of each packet (from off).
func (f *TUN) Write(bufs [][]byte, off int) (int, error) {
	for _, b := range bufs {
		f.Written = append(f.Written, append([]byte(nil), b[off:]...))
	}
	return len(bufs), nil
}

// Read serves queued Reads, at most one per buffer.
func (f *TUN) Read(bufs [][]byte, sizes []int, off int) (int, error) {
	n := 0
	for n < len(bufs) && len(f.Reads) > 0 {
		sizes[n] = copy(bufs[n][off:], f.Reads[0])
		f.Reads = f.Reads[1:]
		n++
	}
	return n, nil
}
