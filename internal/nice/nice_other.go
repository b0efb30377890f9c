//go:build !linux

// Package nice lowers the CPU priority (nice value) of OS threads; only
// Linux keeps one per thread, so elsewhere every call fails.
package nice

import "errors"

var errUnsupported = errors.New("nice: per-thread CPU priority is only supported on Linux")

func LowerThread(int) error         { return errUnsupported }
func LowerProcess(int) error        { return errUnsupported }
func Thread() (int, error)          { return 0, errUnsupported }
func Threads() (map[int]int, error) { return nil, errUnsupported }
