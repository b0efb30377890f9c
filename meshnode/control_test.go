package meshnode

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/backoff"
	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/meshnode/reporter"
	"github.com/wiremesh/wiremesh/netmap"
)

// TestControlRetryNodeGone: a coordinator that says this node is deleted
// or expired is asked again only after minutes, and the log says why; any
// other failure retries at the usual backoff.
func TestControlRetryNodeGone(t *testing.T) {
	for _, tc := range []struct {
		err      error
		wantGone bool
		why      string
	}{
		{fmt.Errorf("map stream: %w", &coordclient.APIError{Status: 401, Code: netmap.CodeNodeUnknown}), true, "does not know this node"},
		{fmt.Errorf("map stream: %w", &coordclient.APIError{Status: 401, Code: netmap.CodeNodeExpired}), true, "expired"},
		{&coordclient.APIError{Status: 401, Message: "bad proof"}, false, "refused"},
		{errors.New("connection refused"), false, ""},
	} {
		bo := backoff.Backoff{Min: coordBackoffMin, Max: coordBackoffMax}
		wait, why := controlRetry(tc.err, &bo)
		if gone := wait == reporter.GoneBackoff; gone != tc.wantGone || wait < time.Duration(0) {
			t.Errorf("%v: wait %v", tc.err, wait)
		}
		if tc.wantGone && wait < time.Minute {
			t.Errorf("%v: wait %v, want minutes", tc.err, wait)
		}
		if !strings.Contains(why, tc.why) || (tc.why == "") != (why == "") {
			t.Errorf("%v: log says %q, want %q", tc.err, why, tc.why)
		}
	}
}
