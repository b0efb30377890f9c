package relayd

import "golang.org/x/sys/unix"

// lowerThreadPriority raises the calling OS thread's nice value by n (a
// lower CPU priority). Any process may do this to its own threads; undoing
// it needs CAP_SYS_NICE, so callers give the thread up instead (a goroutine
// that ends while locked to its thread takes the thread with it).
func lowerThreadPriority(n int) error {
	tid := unix.Gettid()
	// getpriority's system call returns 20-nice; x/sys/unix returns it as is.
	cur, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return err
	}
	return unix.Setpriority(unix.PRIO_PROCESS, tid, min(20-cur+n, 19))
}

// threadNice is the calling OS thread's nice value.
func threadNice() (int, error) {
	cur, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid())
	return 20 - cur, err
}
