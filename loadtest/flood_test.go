package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wiremesh/wiremesh/key"
)

// childEnv makes the test binary act as the loadtest command: relay --flood
// re-executes os.Executable(), which in a test is this binary.
const childEnv = "LOADTEST_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "1":
		if err := Command(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	case "nice":
		os.Exit(niceChild())
	}
	os.Exit(m.Run())
}

// externalRelay starts an in-process relay and returns the flags that
// address it as an external one, its signing key written to a file.
func externalRelay(t *testing.T) []string {
	t.Helper()
	var errOut bytes.Buffer
	tgt, err := startLocalRelay(context.Background(), &errOut)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tgt.stop)
	kf := filepath.Join(t.TempDir(), "signing.key")
	if err := key.WriteKeyFile(kf, tgt.signer); err != nil {
		t.Fatal(err)
	}
	return []string{"--relay", tgt.relay.Addr, "--pin", tgt.relay.Pin, "--relay-key", tgt.relay.Key.String(), "--signing-key-file", kf, "--region", tgt.region}
}

func TestFloodMode(t *testing.T) {
	flags := externalRelay(t)
	var out, errOut bytes.Buffer
	if err := Command(context.Background(), append([]string{"flood", "--duration", "300ms", "--json"}, flags...), &out, &errOut); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	var r RunResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out.String())
	}
	if r.FloodPairs != 1 || r.FloodGbitS <= 0 || r.Received == 0 || r.Received > r.Sent || r.Delivery != "fastpath" {
		t.Errorf("flood run %+v", r)
	}
	if err := Command(context.Background(), []string{"flood", "--duration", "100ms"}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "--relay") {
		t.Errorf("flood without --relay: %v", err)
	}
}

func TestRelayFloodChildProcess(t *testing.T) {
	t.Setenv(childEnv, "1")
	flags := externalRelay(t)
	var out, errOut bytes.Buffer
	args := append([]string{"relay", "--pairs", "2", "--duration", "300ms", "--delivery", "fastpath", "--flood", "--probe-rate", "200", "--json", "--progress", "0"}, flags...)
	if err := Command(context.Background(), args, &out, &errOut); err != nil {
		t.Fatalf("%v\n%s", err, errOut.String())
	}
	var rep RelayReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("output is not one JSON object: %v\n%s", err, out.String())
	}
	if len(rep.Flood) != 1 {
		t.Fatalf("flood %+v", rep.Flood)
	}
	f := rep.Flood[0]
	if !f.FloodProcess || f.FloodNice != 19 || f.Loaded.FloodPairs != 1 || f.Loaded.FloodGbitS <= 0 || f.Unloaded.Received == 0 || f.Loaded.Received == 0 {
		t.Errorf("flood result %+v", f)
	}
}

// TestLowerPriority checks lowerPriority in a child process, so this test
// process keeps its priority.
func TestLowerPriority(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"=nice")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// niceChild renices this process by 7 and checks every thread's nice
// value in /proc (field 19 of stat); it returns the exit status.
func niceChild() int {
	if err := lowerPriority(7); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		st, err := os.ReadFile("/proc/self/task/" + e.Name() + "/stat")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		// Fields after the parenthesised command name start at field 3.
		f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
		if f[19-3] != "7" {
			fmt.Fprintf(os.Stderr, "thread %d: nice %s, want 7\n", tid, f[19-3])
			return 1
		}
		// getpriority returns 20-nice for PRIO_PROCESS.
		if p, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err != nil || p != 20-7 {
			fmt.Fprintf(os.Stderr, "thread %d: getpriority %d %v\n", tid, p, err)
			return 1
		}
	}
	return 0
}
