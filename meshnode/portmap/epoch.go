package portmap

import "time"

// epochValid reports whether a gateway's epoch (seconds since it started,
// in every NAT-PMP and PCP answer) is consistent with the last one seen,
// following RFC 6887 §8.5 (RFC 6886 §3.6 is the same idea): between two
// answers the client's clock advanced Cdelta and the server's Sdelta; the
// server lost its state (restarted) when its epoch went backwards, or when
// the two deltas differ by more than 2 s plus 1/16 of the larger, a
// tolerance for cheap router clocks.
func epochValid(prev uint32, prevAt time.Time, cur uint32, now time.Time) bool {
	if cur < prev {
		return false
	}
	cdelta := now.Sub(prevAt).Seconds()
	if cdelta < 0 {
		cdelta = 0
	}
	sdelta := float64(cur - prev)
	if cdelta+2 < sdelta-sdelta/16 {
		return false
	}
	if sdelta+2 < cdelta-cdelta/16 {
		return false
	}
	return true
}
