package coordinator_test

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/netmap"
)

// BenchmarkFanout measures one endpoint change reaching every other stream
// of benchNodes nodes (no policy: everyone sees everyone), all in this
// process over loopback TLS.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{250, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) { benchFanout(b, n) })
	}
}

func benchFanout(b *testing.B, count int) {
	s := coordtest.Start(b)
	ak := s.AuthKey(b, coordinator.AuthKeyRequest{Reusable: true})
	nodes := make([]*coordtest.Node, count)
	for i := range nodes {
		nodes[i] = s.Register(b, ak, fmt.Sprintf("n%d", i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	var mu sync.Mutex
	var marker []byte
	seen := 0
	cond := sync.NewCond(&mu)
	ready := make(chan struct{}, count)
	for _, n := range nodes[1:] {
		st, err := n.Client.OpenStream(ctx, netmap.MapRequest{DiscoKey: n.Disco.Public()})
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.Close()
			first := true
			for {
				f, err := st.NextRaw()
				if err != nil {
					return
				}
				if first {
					first = false
					ready <- struct{}{}
					continue
				}
				mu.Lock()
				if marker != nil && bytes.Contains(f, marker) {
					seen++
					cond.Broadcast()
				}
				mu.Unlock()
			}
		}()
	}
	for range nodes[1:] {
		<-ready
	}
	time.Sleep(200 * time.Millisecond) // let online deltas settle before timing
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ep := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 1000)
		mu.Lock()
		marker, seen = []byte(`"`+ep.String()+`"`), 0
		mu.Unlock()
		eps := []netip.AddrPort{ep}
		if err := nodes[0].Client.Update(ctx, netmap.UpdateRequest{Endpoints: &eps}); err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		for seen < count-1 {
			cond.Wait()
		}
		mu.Unlock()
	}
}
