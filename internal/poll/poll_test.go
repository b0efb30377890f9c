package poll

import (
	"testing"
	"time"
)

func TestWait(t *testing.T) {
	n := 0
	if !Wait(time.Second, func() bool { n++; return n == 3 }) || n != 3 {
		t.Fatalf("Wait stopped after %d tries", n)
	}
	if Wait(3*Interval, func() bool { return false }) {
		t.Fatal("Wait reported a condition that never held")
	}
}
