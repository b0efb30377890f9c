//go:build linux

package nice

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// childEnv makes the test binary renice itself as a whole (LowerProcess)
// in a child, so this test process keeps its priority.
const childEnv = "NICE_TEST_CHILD"

func TestMain(m *testing.M) {
	if c := os.Getenv(childEnv); c != "" {
		child := processChild
		if c == "idle" {
			child = idleChild
		}
		if err := child(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func base(t *testing.T, add int) int {
	t.Helper()
	b, err := Thread()
	if err != nil {
		t.Fatal(err)
	}
	if b+add > maxNice {
		t.Skipf("test process already at nice %d", b)
	}
	return b
}

// TestLowerThread: only the calling thread is lowered, and /proc agrees.
func TestLowerThread(t *testing.T) {
	b := base(t, 7)
	type res struct {
		nice, proc int
		err        error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := LowerThread(7); err != nil {
			ch <- res{err: err}
			return
		}
		n, err := Thread()
		th, _ := Threads(os.Getpid())
		ch <- res{n, th[tidOf()], err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.nice != b+7 || r.proc != b+7 {
		t.Fatalf("lowered thread at nice %d (/proc: %d), want %d", r.nice, r.proc, b+7)
	}
	if n, _ := Thread(); n != b {
		t.Fatalf("calling thread moved to nice %d, want %d", n, b)
	}
}

// TestLowerProcess runs LowerProcess in a child process.
func TestLowerProcess(t *testing.T) {
	base(t, 7)
	runChild(t, "1")
}

// TestIdleProcess runs IdleProcess in a child process.
func TestIdleProcess(t *testing.T) {
	base(t, 0)
	runChild(t, "idle")
}

// runChild runs this test binary with childEnv=mode, which runs one of
// the child functions below instead of the tests.
func runChild(t *testing.T, mode string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run", "^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// idleChild moves the whole process to SCHED_IDLE, starts a thread after
// that, and checks every thread's policy, the new one's included.
func idleChild() error {
	if err := IdleProcess(); err != nil {
		return err
	}
	tid := make(chan int)
	go func() {
		runtime.LockOSThread() // never unlocked: a thread of its own, which may be new
		tid <- unix.Gettid()
		select {} // keep it until the process exits
	}()
	newTID := <-tid
	pol, err := Policies(os.Getpid())
	if err != nil {
		return err
	}
	if _, ok := pol[newTID]; !ok {
		return fmt.Errorf("thread %d missing from /proc", newTID)
	}
	for tid, p := range pol {
		if p != unix.SCHED_IDLE {
			return fmt.Errorf("thread %d: policy %d, want SCHED_IDLE (%d)", tid, p, unix.SCHED_IDLE)
		}
	}
	return nil
}

// processChild lowers the whole process by 7 and checks every thread.
func processChild() error {
	b, err := Thread()
	if err != nil {
		return err
	}
	if err := LowerProcess(7); err != nil {
		return err
	}
	th, err := Threads(os.Getpid())
	if err != nil {
		return err
	}
	for tid, n := range th {
		if n != b+7 {
			return fmt.Errorf("thread %d: nice %d, want %d", tid, n, b+7)
		}
	}
	return nil
}
