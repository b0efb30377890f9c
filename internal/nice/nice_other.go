//go:build !linux

// Package nice lowers the CPU priority (nice value) of OS threads; only
// Linux keeps one per thread, so elsewhere every call fails.
package nice

import "errors"

const maxNice = 19

var errUnsupported = errors.New("nice: per-thread CPU priority is only supported on Linux")

func LowerThread(int) error             { return errUnsupported }
func LowerProcess(int) error            { return errUnsupported }
func IdleProcess() error                { return errUnsupported }
func Thread() (int, error)              { return 0, errUnsupported }
func Threads(int) (map[int]int, error)  { return nil, errUnsupported }
func Policies(int) (map[int]int, error) { return nil, errUnsupported }
