package portmap

import (
	"testing"
	"time"
)

func TestEpochValid(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	for _, tc := range []struct {
		name      string
		prev, cur uint32
		elapsed   time.Duration
		want      bool
	}{
		{"same second", 100, 100, 0, true},
		{"in step", 100, 130, 30 * time.Second, true},
		{"server rounding", 100, 131, 30 * time.Second, true},
		{"slow router clock", 1000, 1000 + 3400, time.Hour, true},
		{"went backwards", 100, 3, 30 * time.Second, false},
		{"one second backwards", 100, 99, 0, false},
		{"restarted and caught up partly", 100, 105, 60 * time.Second, false},
		{"jumped ahead", 100, 1000, 30 * time.Second, false},
		{"restart soon after start", 5, 0, 2 * time.Second, false},
		{"wrapped uint32 is backwards", 4294967290, 5, 20 * time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := epochValid(tc.prev, t0, tc.cur, t0.Add(tc.elapsed)); got != tc.want {
				t.Fatalf("epochValid(%d, +%v, %d) = %v, want %v", tc.prev, tc.elapsed, tc.cur, got, tc.want)
			}
		})
	}
}
