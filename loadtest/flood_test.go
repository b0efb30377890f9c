package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/internal/nice"
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
	if !f.FloodProcess || f.FloodNice != 19 || !f.FloodIdle || f.Loaded.FloodPairs != 1 || f.Loaded.FloodGbitS <= 0 || f.Unloaded.Received == 0 || f.Loaded.Received == 0 {
		t.Errorf("flood result %+v", f)
	}
}

// TestFloodNice: `loadtest flood --nice 7` runs every thread of its
// process 7 nice levels lower (read from /proc while it waits on stdin).
func TestFloodNice(t *testing.T) {
	base, err := nice.Thread()
	if err != nil {
		t.Skipf("no per-thread priority here: %v", err)
	}
	if base+7 > 19 {
		t.Skipf("test process already at nice %d", base)
	}
	floodChild(t, []string{"--nice", "7"}, func(pid int) {
		th, err := nice.Threads(pid)
		if err != nil {
			t.Fatal(err)
		}
		for tid, n := range th {
			if n != base+7 {
				t.Errorf("child thread %d at nice %d, want %d", tid, n, base+7)
			}
		}
	})
}

// TestFloodIdle: `loadtest flood --idle` runs every thread of its process
// under SCHED_IDLE.
func TestFloodIdle(t *testing.T) {
	if _, err := nice.Thread(); err != nil {
		t.Skipf("no per-thread priority here: %v", err)
	}
	floodChild(t, []string{"--idle"}, func(pid int) {
		pol, err := nice.Policies(pid)
		if err != nil {
			t.Fatal(err)
		}
		for tid, p := range pol {
			if p != schedIdle {
				t.Errorf("child thread %d under policy %d, want SCHED_IDLE (%d)", tid, p, schedIdle)
			}
		}
	})
}

// floodChild runs `loadtest flood` with extra args against a test relay,
// calls check with its PID once it is ready (dialled, waiting on stdin),
// then lets it flood and checks that it reports a flood.
func floodChild(t *testing.T, extra []string, check func(pid int)) {
	t.Helper()
	flags := externalRelay(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"flood", "--duration", "200ms", "--wait-stdin", "--json"}, extra...)
	cmd := exec.Command(exe, append(args, flags...)...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	rd := bufio.NewReader(stdout)
	if line, err := rd.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		t.Fatalf("child said %q, %v; stderr: %s", line, err, stderr.String())
	}
	check(cmd.Process.Pid)
	io.WriteString(stdin, "go\n")
	rest, _ := io.ReadAll(rd)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v; stderr: %s", err, stderr.String())
	}
	var r RunResult
	if err := json.Unmarshal(rest, &r); err != nil || r.FloodGbitS <= 0 {
		t.Fatalf("child result %q: %v", rest, err)
	}
}

// schedIdle is Linux's SCHED_IDLE policy number, as /proc reports it.
const schedIdle = 5
