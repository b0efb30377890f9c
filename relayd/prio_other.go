//go:build !linux

package relayd

import "errors"

func lowerThreadPriority(int) error {
	return errors.New("per-thread CPU priority is only supported on Linux")
}

func threadNice() (int, error) {
	return 0, errors.New("per-thread CPU priority is only supported on Linux")
}
