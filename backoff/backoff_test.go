package backoff

import (
	"testing"
	"time"
)

func TestSchedule(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	for i, ceil := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		ceil *= time.Millisecond
		if w := b.Next(); w < ceil/2 || w > ceil {
			t.Fatalf("try %d: wait %v outside [%v, %v]", i, w, ceil/2, ceil)
		}
	}
	b.Reset()
	if w := b.Next(); w > 100*time.Millisecond {
		t.Fatalf("after Reset: %v", w)
	}
	for range 100 {
		if j := Jitter(time.Second); j < time.Second || j > 1500*time.Millisecond {
			t.Fatalf("jitter %v", j)
		}
	}
}
