package lab

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The delay stage. The kernel has no netem, so latency is added in
// userspace: in the core, policy routing sends packets between two chosen
// addresses into a TUN device; a goroutine reads each one, holds it for the
// configured one-way delay (plus jitter), and writes it back to the TUN
// device, from where the core forwards it normally:
//
//	veth ─► core: rule "from A to B" ─► table N: dev dlyN ─► userspace hold
//	     ◄─ core: rule "iif dlyN lookup main" (higher priority) ◄─ write back
//
// Packets keep their order: a release time never precedes the previous
// packet's, so jitter stretches gaps but does not reorder.

// delayQueueLen bounds the packets held per stage. At 1,500 bytes that is
// 6 MB, enough for ~200 Mbit/s at 200 ms; beyond it packets are dropped and
// counted, as a real bottleneck would.
const delayQueueLen = 4096

// delayMTU is the largest packet the stage carries; it matches the veths.
const delayMTU = 1500

// Delay is a running delay stage between two addresses.
type Delay struct {
	A, B netip.Addr

	mu     sync.Mutex // guards OneWay and Jitter; use Set to change them
	OneWay time.Duration
	Jitter time.Duration

	lab     *Lab
	dev     string
	table   int
	f       *os.File
	q       chan delayed
	done    chan struct{}
	wg      sync.WaitGroup
	closeMu sync.Once
	dropped atomic.Uint64
	passed  atomic.Uint64
}

type delayed struct {
	pkt []byte
	at  time.Time
}

// AddDelay makes packets between addresses a and b (both ways) wait oneWay,
// plus a uniformly random jitter in [-jitter, +jitter], in each direction.
// The addresses must be routed through the core: public host addresses or
// routers' WAN addresses. The round trip grows by 2×oneWay.
func (l *Lab) AddDelay(a, b netip.Addr, oneWay, jitter time.Duration) (*Delay, error) {
	if jitter > oneWay {
		return nil, fmt.Errorf("lab: jitter %v larger than delay %v", jitter, oneWay)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, ErrClosed
	}
	idx := len(l.delays) + 1
	d := &Delay{A: a, B: b, OneWay: oneWay, Jitter: jitter, lab: l,
		dev: fmt.Sprintf("dly%d", idx), table: 1000 + idx,
		q: make(chan delayed, delayQueueLen), done: make(chan struct{})}
	l.delays = append(l.delays, d)
	l.mu.Unlock()

	err := l.Core.Do(func() error {
		f, err := openTUN(d.dev)
		d.f = f
		return err
	})
	if err != nil {
		return nil, err
	}
	err = l.Core.ip(
		fmt.Sprintf("link set %s mtu %d up", d.dev, delayMTU),
		fmt.Sprintf("route add default dev %s table %d", d.dev, d.table),
		// Packets coming back out of the stage follow the main table.
		fmt.Sprintf("rule add iif %s lookup main priority %d", d.dev, 100+idx),
		fmt.Sprintf("rule add from %s to %s lookup %d priority %d", a, b, d.table, 1000+idx),
		fmt.Sprintf("rule add from %s to %s lookup %d priority %d", b, a, d.table, 1000+idx),
	)
	if err != nil {
		return nil, err
	}
	if err := l.Core.sysctls(map[string]string{"net/ipv4/conf/" + d.dev + "/rp_filter": "0"}); err != nil {
		return nil, err
	}
	d.wg.Add(2)
	go d.readLoop()
	go d.writeLoop()
	return d, nil
}

// Stats returns how many packets the stage has passed and dropped.
func (d *Delay) Stats() (passed, dropped uint64) { return d.passed.Load(), d.dropped.Load() }

// Close stops the stage and removes its rules; traffic then flows without
// delay. Lab.Close calls it.
func (d *Delay) Close() error {
	d.closeMu.Do(func() {
		close(d.done)
		if d.f != nil {
			d.f.Close()
		}
		d.wg.Wait()
		// The namespace may already be going away; errors are not useful.
		d.lab.Core.ip(
			fmt.Sprintf("rule del from %s to %s lookup %d", d.A, d.B, d.table),
			fmt.Sprintf("rule del from %s to %s lookup %d", d.B, d.A, d.table),
			fmt.Sprintf("rule del iif %s lookup main", d.dev),
		)
	})
	return nil
}

// Set changes the stage's one-way delay and jitter; packets already held
// keep their release times.
func (d *Delay) Set(oneWay, jitter time.Duration) error {
	if jitter > oneWay {
		return fmt.Errorf("lab: jitter %v larger than delay %v", jitter, oneWay)
	}
	d.mu.Lock()
	d.OneWay, d.Jitter = oneWay, jitter
	d.mu.Unlock()
	return nil
}

func (d *Delay) hold() time.Duration {
	d.mu.Lock()
	oneWay, jitter := d.OneWay, d.Jitter
	d.mu.Unlock()
	if jitter == 0 {
		return oneWay
	}
	return oneWay + time.Duration(rand.Int64N(int64(2*jitter)+1)) - jitter
}

// readLoop takes packets from the TUN device and queues them with their
// release time.
func (d *Delay) readLoop() {
	defer d.wg.Done()
	var last time.Time
	for {
		buf := make([]byte, delayMTU)
		n, err := d.f.Read(buf)
		if err != nil {
			return
		}
		at := time.Now().Add(d.hold())
		if at.Before(last) {
			at = last
		}
		last = at
		select {
		case d.q <- delayed{buf[:n], at}:
		default:
			d.dropped.Add(1)
		}
	}
}

// writeLoop releases packets at their time.
func (d *Delay) writeLoop() {
	defer d.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		var p delayed
		select {
		case p = <-d.q:
		case <-d.done:
			return
		}
		if wait := time.Until(p.at); wait > 0 {
			t.Reset(wait)
			select {
			case <-t.C:
			case <-d.done:
				return
			}
		}
		if _, err := d.f.Write(p.pkt); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			d.dropped.Add(1)
			continue
		}
		d.passed.Add(1)
	}
}

// openTUN creates a TUN device (no packet info header) in the calling
// thread's namespace and returns it non-blocking, so that Close interrupts
// a pending Read.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lab: open /dev/net/tun: %w", err)
	}
	var req struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(req.name[:], name)
	req.flags = unix.IFF_TUN | unix.IFF_NO_PI
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("lab: TUNSETIFF %s: %w", name, errno)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}
