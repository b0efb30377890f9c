// Package poll is the one way Wiremesh tests wait for a condition in real
// time (a process, a socket, a lab network): poll it until it holds or a
// deadline passes. The deadline turns a hang into a failure; it is never
// the thing being measured. Logic with timers is tested under
// testing/synctest instead.
package poll

import (
	"testing"
	"time"
)

// Defaults: generous (the machine is shared and lab tests are slow under
// load) and a short interval so a met condition is seen quickly.
const (
	DefaultTimeout = 30 * time.Second
	Interval       = 20 * time.Millisecond
)

// Until polls cond every Interval until it holds, failing tb (Fatal)
// with what after DefaultTimeout.
func Until(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	UntilWithin(tb, DefaultTimeout, what, cond)
}

// UntilWithin is Until with its own deadline.
func UntilWithin(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Wait(timeout, cond) {
		tb.Fatalf("%s: did not happen within %v", what, timeout)
	}
}

// Wait polls cond every Interval until it holds (true) or timeout passes
// (false): for callers that report the failure themselves.
func Wait(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(Interval)
	}
	return true
}
