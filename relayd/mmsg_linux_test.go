package relayd

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/net/ipv4"
)

// mmsgPair is a receiving socket read through newBatchConn and a sender.
func mmsgPair(t *testing.T, ip string) (rx *net.UDPConn, bc batchConn, tx *net.UDPConn) {
	t.Helper()
	a := &net.UDPAddr{IP: net.ParseIP(ip)}
	rx, err := net.ListenUDP("udp", a)
	if err != nil {
		t.Skipf("no %s here: %v", ip, err)
	}
	t.Cleanup(func() { rx.Close() })
	tx, err = net.ListenUDP("udp", a)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Close() })
	bc = newBatchConn(rx)
	if _, ok := bc.(*mmsgConn); !ok {
		t.Fatalf("newBatchConn gave %T, want *mmsgConn", bc)
	}
	return rx, bc, tx
}

func msgs(n, size int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, size)}
	}
	return ms
}

// TestMmsgReadBatch: datagrams arrive whole and in order with their
// sender's address, over IPv4 and IPv6, in batches that may be partial; one
// longer than its buffer is flagged as truncated.
func TestMmsgReadBatch(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "::1"} {
		t.Run(ip, func(t *testing.T) {
			rx, bc, tx := mmsgPair(t, ip)
			sizes := []int{1, 1280, 7, 0, 1500, 2000} // the last is longer than the buffers
			for i, n := range sizes {
				if _, err := tx.WriteTo(bytes.Repeat([]byte{byte(i + 1)}, n), rx.LocalAddr()); err != nil {
					t.Fatal(err)
				}
			}
			from := tx.LocalAddr().(*net.UDPAddr).AddrPort()
			ms := msgs(4, 1500) // fewer than were sent: the rest come in a second batch
			var got int
			for got < len(sizes) {
				n, err := bc.ReadBatch(ms, 0)
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range ms[:n] {
					i := got
					got++
					want := min(sizes[i], 1500)
					if m.N != want || !bytes.Equal(m.Buffers[0][:m.N], bytes.Repeat([]byte{byte(i + 1)}, want)) {
						t.Fatalf("datagram %d: %d bytes, want %d of byte %d", i, m.N, want, i+1)
					}
					if tr := msgTruncated(m.Flags); tr != (sizes[i] > 1500) {
						t.Fatalf("datagram %d (%d bytes): truncated %v", i, sizes[i], tr)
					}
					ua, ok := m.Addr.(*net.UDPAddr)
					if !ok {
						t.Fatalf("datagram %d: address %T", i, m.Addr)
					}
					if ap := ua.AddrPort(); netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) != from {
						t.Fatalf("datagram %d from %v, want %v", i, ua, from)
					}
				}
			}
		})
	}
}

// TestMmsgReadBatchNoAllocs: a read of queued datagrams allocates
// nothing once the reader has its arrays.
func TestMmsgReadBatchNoAllocs(t *testing.T) {
	rx, bc, tx := mmsgPair(t, "127.0.0.1")
	const runs = 50
	for range runs + 1 { // AllocsPerRun calls the function once more to warm up
		if _, err := tx.WriteTo(make([]byte, 100), rx.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	ms := msgs(1, 1500)
	var fails int
	allocs := testing.AllocsPerRun(runs, func() {
		if n, err := bc.ReadBatch(ms, 0); n != 1 || err != nil {
			fails++
		}
	})
	if fails > 0 {
		t.Fatalf("%d reads failed", fails)
	}
	if allocs != 0 {
		t.Fatalf("%.1f allocations per read, want 0", allocs)
	}
}

// TestMmsgReadBatchClosed: a read blocked on an empty socket ends with
// net.ErrClosed when the socket is closed.
func TestMmsgReadBatchClosed(t *testing.T) {
	rx, bc, _ := mmsgPair(t, "127.0.0.1")
	errc := make(chan error, 1)
	go func() {
		_, err := bc.ReadBatch(msgs(2, 1500), 0)
		errc <- err
	}()
	rx.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v, want net.ErrClosed", err)
	}
}
