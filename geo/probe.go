package geo

import (
	"context"
	"net/netip"
	"sync"
	"time"
)

// Prober measures one region once. It returns the round trip, how it was
// measured ("stun", "quic" or "tls"), and, for STUN, the public address the
// region's relay saw (zero otherwise).
type Prober func(ctx context.Context, region string) (rtt time.Duration, via string, mapped netip.AddrPort, err error)

// ProbeResult is one region's outcome in a ProbeAll round.
type ProbeResult struct {
	Sample
	Mapped netip.AddrPort
	Err    error
}

// maxParallelProbes bounds concurrent probes. All regions are probed at
// once in practice (relay maps hold tens of regions), so a round takes one
// timeout at worst, not one per region.
const maxParallelProbes = 32

// ProbeAll probes every region in parallel, each bounded by timeout, and
// returns one result per region in the order given. It returns when all
// probes have finished or timed out.
func ProbeAll(ctx context.Context, regions []string, timeout time.Duration, probe Prober, now func() time.Time) []ProbeResult {
	out := make([]ProbeResult, len(regions))
	sem := make(chan struct{}, maxParallelProbes)
	var wg sync.WaitGroup
	for i, code := range regions {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			pctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			rtt, via, mapped, err := probe(pctx, code)
			out[i] = ProbeResult{Sample: Sample{Region: code, RTT: rtt, At: now(), Via: via}, Mapped: mapped, Err: err}
		}()
	}
	wg.Wait()
	return out
}
