package filter

import (
	"golang.zx2c4.com/wireguard/tun"
)

// Device wraps a tun.Device so that every packet wireguard-go delivers from
// a peer passes the filter before the OS (or netstack) sees it, and every
// packet the OS sends to the mesh is recorded as a flow. It works the same
// for a kernel TUN device and a userspace netstack.
type Device struct {
	tun.Device
	f *Filter
	// onDrop, if set, is called for each dropped packet (metrics).
	onDrop func(Verdict)
}

// Wrap returns dev with f enforced. onDrop may be nil.
func Wrap(dev tun.Device, f *Filter, onDrop func(Verdict)) *Device {
	return &Device{Device: dev, f: f, onDrop: onDrop}
}

// Read reads packets the OS sends towards the mesh and records their flows.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.Device.Read(bufs, sizes, offset)
	for i := 0; i < n; i++ {
		d.f.Outbound(bufs[i][offset : offset+sizes[i]])
	}
	return n, err
}

// Write delivers packets from peers to the OS, dropping those the filter
// rejects. It reports every packet as handled, as a drop is not an error.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	return WriteKept(d.Device, bufs, offset, func(pkt []byte) bool {
		v := d.f.Inbound(pkt)
		if v != Accept && d.onDrop != nil {
			d.onDrop(v)
		}
		return v == Accept
	})
}

// WriteKept writes to dev the packets of bufs (each from offset) that keep
// accepts, in order, and reports all of bufs as handled: a dropped packet
// is not an error. The common case drops nothing and passes bufs through
// untouched; only a batch with drops pays for a new slice.
func WriteKept(dev tun.Device, bufs [][]byte, offset int, keep func(pkt []byte) bool) (int, error) {
	var kept [][]byte // nil while nothing has been dropped
	for i, b := range bufs {
		if keep(b[offset:]) {
			if kept != nil {
				kept = append(kept, b)
			}
			continue
		}
		if kept == nil {
			kept = make([][]byte, 0, len(bufs))
			kept = append(kept, bufs[:i]...)
		}
	}
	if kept == nil {
		kept = bufs
	}
	if len(kept) == 0 {
		return len(bufs), nil
	}
	if _, err := dev.Write(kept, offset); err != nil {
		return 0, err
	}
	return len(bufs), nil
}
