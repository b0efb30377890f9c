package loadtest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/wiremesh/wiremesh/relayproto"
)

// The baseline: a plain Go UDP forwarder with the same job as the relay
// minus QUIC, authentication and queues. Every packet starts with
//
//	kind  1 byte  'R' (a receiver registers for a pair) or 'D' (data)
//	pair  2 bytes pair number
//
// and data is forwarded unchanged to the pair's registered receiver.
const (
	udpHeader = 3
	// udpSocketBuffer is asked of every baseline socket; quic-go asks
	// for 7 MiB on its own sockets, so the baseline gets the same chance.
	udpSocketBuffer = 7 << 20
)

type udpFwdOpts struct {
	Listen string `flag:"listen" env:"LISTEN" envDefault:"127.0.0.1:3479" help:"UDP address to forward on"`
}

func runUDPFwd(ctx context.Context, args []string, out, errOut io.Writer) error {
	o := udpFwdOpts{}
	if err := parse("udpfwd", &o, args, out, "loadtest udpfwd [--listen ADDR]"); err != nil {
		return err
	}
	ua, err := net.ResolveUDPAddr("udp", o.Listen)
	if err != nil {
		return fmt.Errorf("loadtest udpfwd: --listen: %w", err)
	}
	c, err := net.ListenUDP("udp", ua)
	if err != nil {
		return fmt.Errorf("loadtest udpfwd: %w", err)
	}
	fmt.Fprintf(errOut, "loadtest: udp forwarder on %s\n", c.LocalAddr())
	return forwardUDP(ctx, c)
}

// forwardUDP serves until ctx ends.
func forwardUDP(ctx context.Context, c *net.UDPConn) error {
	c.SetReadBuffer(udpSocketBuffer)
	c.SetWriteBuffer(udpSocketBuffer)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	// routes is bounded by the 16-bit pair number.
	routes := map[uint16]*net.UDPAddr{}
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDP(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			continue
		}
		if n < udpHeader {
			continue
		}
		pair := binary.BigEndian.Uint16(buf[1:])
		switch buf[0] {
		case 'R':
			routes[pair] = from
			c.WriteToUDP(buf[:n], from) // ack
		case 'D':
			if to := routes[pair]; to != nil {
				c.WriteToUDP(buf[:n], to)
			}
		}
	}
}

// runUDPPairs measures the baseline forwarder at fwd the same way
// runPairs measures the relay.
func runUDPPairs(ctx context.Context, fwd string, spec pairSpec, prog time.Duration, errOut io.Writer) (RunResult, error) {
	fa, err := net.ResolveUDPAddr("udp", fwd)
	if err != nil {
		return RunResult{}, err
	}
	t0 := time.Now()
	n := spec.pairs + spec.flood
	stats := make([]*counters, n)
	sends := make([]sender, n)
	var socks []*net.UDPConn
	var wg sync.WaitGroup
	defer func() {
		for _, s := range socks {
			s.Close()
		}
		wg.Wait()
	}()
	for i := range n {
		stats[i] = &counters{}
		tx, err := net.DialUDP("udp", nil, fa)
		if err != nil {
			return RunResult{}, err
		}
		rx, err := net.DialUDP("udp", nil, fa)
		if err != nil {
			tx.Close()
			return RunResult{}, err
		}
		socks = append(socks, tx, rx)
		for _, s := range []*net.UDPConn{tx, rx} {
			s.SetReadBuffer(udpSocketBuffer)
			s.SetWriteBuffer(udpSocketBuffer)
		}
		reg := []byte{'R', 0, 0}
		binary.BigEndian.PutUint16(reg[1:], uint16(i))
		ack := make([]byte, 16)
		registered := false
		for range 10 {
			rx.Write(reg)
			rx.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := rx.Read(ack); err == nil {
				registered = true
				break
			}
		}
		if !registered {
			return RunResult{}, fmt.Errorf("loadtest: udp forwarder at %s does not answer", fwd)
		}
		rx.SetReadDeadline(time.Time{})
		st := stats[i]
		wg.Add(1)
		if spec.batch > 1 {
			go func() { defer wg.Done(); readUDPBatches(rx, spec.batch, func(d []byte) { st.record(t0, d) }) }()
		} else {
			go func() {
				defer wg.Done()
				buf := make([]byte, 65536)
				for {
					n, err := rx.Read(buf)
					if err != nil {
						return
					}
					if n > udpHeader {
						st.record(t0, buf[udpHeader:n])
					}
				}
			}()
		}
		pkts := make([][]byte, max(spec.batch, 1))
		for j := range pkts {
			pkts[j] = make([]byte, udpHeader+spec.size)
			pkts[j][0] = 'D'
			binary.BigEndian.PutUint16(pkts[j][1:], uint16(i))
		}
		pc := ipv4.NewPacketConn(tx)
		var ms []ipv4.Message
		sends[i] = func(ps [][]byte) error {
			for len(ps) > 0 {
				k := min(len(ps), len(pkts))
				for j, p := range ps[:k] {
					copy(pkts[j][udpHeader:], p)
				}
				var err error
				if k == 1 {
					_, err = tx.Write(pkts[0])
				} else {
					ms, err = writeAll(pc, ms, pkts[:k], nil)
				}
				if err != nil {
					return err
				}
				ps = ps[k:]
			}
			return nil
		}
	}
	res := RunResult{Delivery: "udp", Transport: "udp", Pairs: spec.pairs, Size: spec.size, TargetPPS: spec.rate}
	if err := drive(ctx, t0, sends, stats, spec, prog, errOut); err != nil {
		return res, err
	}
	summarize(&res, stats, spec)
	return res, nil
}

// readUDPBatches reads the forwarder's datagrams n at a time from rx until
// it is closed and passes each payload (after the header) to record.
func readUDPBatches(rx *net.UDPConn, n int, record func([]byte)) {
	pc := ipv4.NewPacketConn(rx)
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, relayproto.MaxFastDatagram)} // --client-batch sizes fit
	}
	for {
		k, err := pc.ReadBatch(ms, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		for i := range ms[:k] {
			if ms[i].N > udpHeader {
				record(ms[i].Buffers[0][udpHeader:ms[i].N])
			}
		}
	}
}
