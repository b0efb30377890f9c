package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Sweep deletes namespaces left by lab runs whose process no longer exists
// (a test binary killed by a timeout or a signal cannot run its cleanups),
// and their temporary folders (miniupnpd configurations) and /etc/netns files. Namespaces of live
// processes, including this one, are left alone. It returns the namespace
// names it deleted.
func Sweep() ([]string, error) {
	sweepDirs()
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var stale []string
	for _, e := range ents {
		pid, ok := ownerPID(e.Name())
		if !ok || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue
		}
		stale = append(stale, e.Name())
	}
	if len(stale) == 0 {
		return nil, nil
	}
	// Processes still inside a stale namespace would keep it alive; kill
	// them first (`ip netns pids`), then delete.
	for _, ns := range stale {
		out, _ := runOut("ip", "netns", "pids", ns)
		for _, f := range strings.Fields(out) {
			if p, err := strconv.Atoi(f); err == nil && p != os.Getpid() {
				if proc, err := os.FindProcess(p); err == nil {
					proc.Kill()
				}
			}
		}
	}
	var b strings.Builder
	for _, ns := range stale {
		fmt.Fprintf(&b, "netns del %s\n", ns)
	}
	return stale, run(strings.NewReader(b.String()), "ip", "-force", "-batch", "-")
}

// sweepDirs removes the lab's temporary folders and namespaces' /etc
// folders whose owner is gone.
func sweepDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), namePrefix+"*"))
	etc, _ := filepath.Glob(filepath.Join(netnsEtc, namePrefix+"*"))
	for _, d := range append(dirs, etc...) {
		pid, ok := ownerPID(filepath.Base(d))
		if !ok || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			os.RemoveAll(d)
		}
	}
}

// ownerPID extracts the PID from a lab namespace name, "wm-<pid>-<tag>-<name>".
func ownerPID(name string) (int, bool) {
	if !strings.HasPrefix(name, namePrefix) {
		return 0, false
	}
	rest := name[len(namePrefix):]
	i := strings.IndexByte(rest, '-')
	if i <= 0 {
		return 0, false
	}
	pid, err := strconv.Atoi(rest[:i])
	return pid, err == nil && pid > 0
}
