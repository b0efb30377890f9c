package reporter

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/netmap"
)

type fakeCoord struct {
	mu    sync.Mutex
	fail  error // returned while set
	got   []netmap.UpdateRequest
	tries int
}

func (f *fakeCoord) Update(ctx context.Context, u netmap.UpdateRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries++
	if f.fail != nil {
		return f.fail
	}
	f.got = append(f.got, u)
	return nil
}

// seen returns what arrived and how many tries there were.
func (f *fakeCoord) seen() ([]netmap.UpdateRequest, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]netmap.UpdateRequest(nil), f.got...), f.tries
}

func (f *fakeCoord) set(err error) {
	f.mu.Lock()
	f.fail = err
	f.mu.Unlock()
}

func start(t *testing.T, f *fakeCoord) (*Reporter, context.CancelFunc) {
	r := New(func(context.Context) (Updater, error) { return f, nil }, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go r.Run(ctx)
	return r, cancel
}

// TestCoalescedWhileFailing: reports made while the coordinator is down go
// out as one request with the latest of each kind once it is back.
func TestCoalescedWhileFailing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeCoord{fail: errors.New("down")}
		r, cancel := start(t, f)
		defer cancel()
		r.Home("nyc")
		synctest.Wait()
		r.Endpoints([]netip.AddrPort{netip.MustParseAddrPort("198.18.0.1:1")})
		r.Endpoints([]netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:1")})
		r.Home("fra")
		f.set(nil)
		time.Sleep(RetryMax)
		got, _ := f.seen()
		if len(got) != 1 {
			t.Fatalf("%d requests, want one coalesced: %+v", len(got), got)
		}
		u := got[0]
		if *u.HomeRelay != "fra" || len(*u.Endpoints) != 1 || (*u.Endpoints)[0].String() != "198.18.0.2:1" || u.Netcheck != nil {
			t.Fatalf("coalesced %+v", u)
		}
		r.Netcheck(netmap.Netcheck{UDP: true})
		synctest.Wait()
		if got, _ = f.seen(); len(got) != 2 || got[1].Netcheck == nil || got[1].HomeRelay != nil {
			t.Fatalf("after recovery: %+v", got)
		}
	})
}

// TestGoneBacksOff: a coordinator that says this node is deleted or
// expired is asked again only after GoneBackoff.
func TestGoneBacksOff(t *testing.T) {
	for _, gone := range []error{coordclient.ErrNodeUnknown, coordclient.ErrNodeExpired} {
		synctest.Test(t, func(t *testing.T) {
			f := &fakeCoord{fail: &coordclient.APIError{Status: 401, Code: codeFor(gone)}}
			r, cancel := start(t, f)
			defer cancel()
			r.Home("nyc")
			time.Sleep(GoneBackoff - time.Second)
			if _, tries := f.seen(); tries != 1 {
				t.Fatalf("%v: %d tries within the gone backoff", gone, tries)
			}
			time.Sleep(2 * time.Second)
			if _, tries := f.seen(); tries != 2 {
				t.Fatalf("%v: %d tries after it", gone, tries)
			}
		})
	}
}

func codeFor(err error) netmap.ErrorCode {
	if err == coordclient.ErrNodeUnknown {
		return netmap.CodeNodeUnknown
	}
	return netmap.CodeNodeExpired
}

// TestRoutesSurviveFailure: an advertisement made while the coordinator is
// down is sent once it is back; an empty one goes out as "[]" (withdraw),
// never as an absent field.
func TestRoutesSurviveFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeCoord{fail: errors.New("down")}
		r, cancel := start(t, f)
		defer cancel()
		r.Routes(nil, false)
		synctest.Wait()
		r.Home("nyc")
		f.set(nil)
		time.Sleep(RetryMax)
		got, _ := f.seen()
		if len(got) != 1 || got[0].AdvertisedRoutes == nil || got[0].ExitNode == nil || *got[0].ExitNode {
			t.Fatalf("requests %+v, want one with the withdrawal", got)
		}
		b, _ := json.Marshal(got[0])
		if !strings.Contains(string(b), `"advertised_routes":[]`) {
			t.Fatalf("withdrawal encoded as %s", b)
		}
		r.Routes([]netip.Prefix{netip.MustParsePrefix("198.19.50.0/24")}, true)
		synctest.Wait()
		if got, _ = f.seen(); len(got) != 2 || len(*got[1].AdvertisedRoutes) != 1 || !*got[1].ExitNode {
			t.Fatalf("after recovery: %+v", got)
		}
	})
}
