//go:build !linux

package loadtest

import "errors"

// lowerPriority is only implemented on Linux.
func lowerPriority(int) error { return errors.New("nice: only supported on Linux") }
