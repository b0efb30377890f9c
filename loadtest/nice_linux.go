package loadtest

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// lowerPriority sets the nice value of every thread of this process to n.
// Linux applies nice per thread and a new thread inherits its creator's,
// so the list is walked twice to catch threads started during the first
// pass.
func lowerPriority(n int) error {
	for range 2 {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("nice: %w", err)
		}
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil && err != unix.ESRCH {
				return fmt.Errorf("nice: thread %d: %w", tid, err)
			}
		}
	}
	return nil
}
