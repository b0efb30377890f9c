// Package nice lowers the CPU priority of OS threads: their nice value, or
// their scheduling policy to SCHED_IDLE. Linux keeps both per thread, and
// a new thread inherits its creator's. Lowering a priority needs no
// privilege; raising it again needs CAP_SYS_NICE, so nothing here raises
// one.
package nice

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// maxNice is the lowest priority.
const maxNice = 19

// LowerThread raises the calling OS thread's nice value by n, to at most
// 19. Callers lock the goroutine to its thread first
// (runtime.LockOSThread), or the runtime may hand the thread to others.
func LowerThread(n int) error {
	cur, err := Thread()
	if err != nil {
		return err
	}
	return set(unix.Gettid(), min(cur+n, maxNice))
}

// LowerProcess sets every thread's nice value to the calling thread's
// plus n (to at most 19), leaving threads already lower where they are.
// Threads started later inherit the value from their creator.
func LowerProcess(n int) error {
	cur, err := Thread()
	if err != nil {
		return err
	}
	target := min(cur+n, maxNice)
	return eachThread(func(tid int) error { return set(tid, target) })
}

// IdleProcess moves every thread of the process to the SCHED_IDLE
// policy: it then runs only on CPU time no ordinary thread on the machine
// wants, and an ordinary thread that wakes preempts it at once. Threads
// started later inherit the policy from their creator. Like a nice value,
// it needs no privilege to take and CAP_SYS_NICE to leave.
func IdleProcess() error {
	return eachThread(func(tid int) error {
		a, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			return fmt.Errorf("nice: thread %d: %w", tid, err)
		}
		if a.Policy == unix.SCHED_IDLE {
			return nil
		}
		a.Policy = unix.SCHED_IDLE
		a.Priority = 0
		if err := unix.SchedSetAttr(tid, a, 0); err != nil {
			return fmt.Errorf("nice: thread %d: SCHED_IDLE: %w", tid, err)
		}
		return nil
	})
}

// eachThread calls fn for every thread of the process, ignoring threads
// that end meanwhile. The thread list is walked twice, to catch threads
// started during the first pass.
func eachThread(fn func(tid int) error) error {
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
			if err := fn(tid); err != nil && !errors.Is(err, unix.ESRCH) {
				return err
			}
		}
	}
	return nil
}

// set gives thread tid nice value target unless it is already lower.
func set(tid, target int) error {
	cur, err := get(tid)
	if err != nil {
		return err
	}
	if cur >= target {
		return nil
	}
	if err := unix.Setpriority(unix.PRIO_PROCESS, tid, target); err != nil {
		return fmt.Errorf("nice: thread %d: %w", tid, err)
	}
	return nil
}

// Thread returns the calling OS thread's nice value.
func Thread() (int, error) { return get(unix.Gettid()) }

// get is thread tid's nice value. The system call returns 20 - nice, and
// x/sys/unix passes it on as is.
func get(tid int) (int, error) {
	p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return 0, fmt.Errorf("nice: thread %d: %w", tid, err)
	}
	return 20 - p, nil
}

// Threads returns the nice value of every thread of process pid, by
// thread ID, from /proc/PID/task/*/stat (field 19).
func Threads(pid int) (map[int]int, error) { return statField(pid, 19) }

// Policies returns the scheduling policy (unix.SCHED_*) of every thread
// of process pid, by thread ID, from /proc/PID/task/*/stat (field 41).
func Policies(pid int) (map[int]int, error) { return statField(pid, 41) }

// statField reads numeric field f of every thread's stat file of pid.
func statField(pid, field int) (map[int]int, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("nice: %w", err)
	}
	out := make(map[int]int, len(ents))
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(dir + "/" + e.Name() + "/stat")
		if err != nil {
			continue // the thread ended
		}
		// Fields after the parenthesised command name start at field 3.
		f := bytes.Fields(st[bytes.LastIndexByte(st, ')')+1:])
		if len(f) < field-2 {
			return nil, fmt.Errorf("nice: thread %d: short stat %q", tid, st)
		}
		n, err := strconv.Atoi(string(f[field-3]))
		if err != nil {
			return nil, fmt.Errorf("nice: thread %d: %w", tid, err)
		}
		out[tid] = n
	}
	return out, nil
}
