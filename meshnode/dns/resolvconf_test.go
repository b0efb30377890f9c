package dns

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

const original = "# from DHCP\nnameserver 198.18.0.53\nnameserver 198.18.0.54\nsearch lan.test\noptions edns0 trust-ad\n"

var nodeCfg = OSConfig{Nameservers: []netip.Addr{netip.MustParseAddr("100.100.100.100")}, SearchDomains: []string{"mesh.internal", "corp.test"}}

func newRC(t *testing.T, content string) *ResolvConf {
	t.Helper()
	dir := t.TempDir()
	rc := &ResolvConf{Path: filepath.Join(dir, "etc", "resolv.conf"), Backup: filepath.Join(dir, "state", "resolv.conf.backup")}
	os.MkdirAll(filepath.Dir(rc.Path), 0o755)
	os.MkdirAll(filepath.Dir(rc.Backup), 0o700)
	if content != "" {
		if err := os.WriteFile(rc.Path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return rc
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestResolvConfSetRestore(t *testing.T) {
	rc := newRC(t, original)
	if err := rc.Set(context.Background(), nodeCfg); err != nil {
		t.Fatal(err)
	}
	got := readFile(t, rc.Path)
	for _, want := range []string{"nameserver 100.100.100.100\n", "search mesh.internal corp.test\n", "options edns0 trust-ad\n", rc.Backup} {
		if !strings.Contains(got, want) {
			t.Errorf("resolv.conf lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "198.18.0.53") {
		t.Errorf("old nameserver kept:\n%s", got)
	}
	if readFile(t, rc.Backup) != original {
		t.Error("backup differs from the original")
	}
	prev, err := rc.Previous()
	if err != nil || !slices.Equal(prev, []netip.AddrPort{ap("198.18.0.53:53"), ap("198.18.0.54:53")}) {
		t.Errorf("Previous() = %v %v", prev, err)
	}
	// A second Set (new settings) keeps the first backup.
	if err := rc.Set(context.Background(), OSConfig{Nameservers: nodeCfg.Nameservers}); err != nil {
		t.Fatal(err)
	}
	if readFile(t, rc.Backup) != original {
		t.Error("second Set overwrote the backup")
	}
	if err := rc.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	if readFile(t, rc.Path) != original {
		t.Errorf("restored file differs:\n%s", readFile(t, rc.Path))
	}
	if _, err := os.Stat(rc.Backup); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("backup left behind: %v", err)
	}
	if err := rc.Restore(context.Background()); err != nil {
		t.Errorf("second Restore: %v", err)
	}
	if prev, _ := rc.Previous(); len(prev) != 2 {
		t.Errorf("Previous() from the file itself: %v", prev)
	}
	// The resolver's own address is never a previous resolver.
	os.WriteFile(rc.Path, []byte("nameserver 100.100.100.100\nnameserver 198.18.0.9\n"), 0o644)
	if prev, _ := rc.Previous(); !slices.Equal(prev, []netip.AddrPort{ap("198.18.0.9:53")}) {
		t.Errorf("Previous() with the resolver in the file: %v", prev)
	}
}

func TestResolvConfAbsentFile(t *testing.T) {
	rc := newRC(t, "")
	if err := rc.Set(context.Background(), nodeCfg); err != nil {
		t.Fatal(err)
	}
	if prev, err := rc.Previous(); err != nil || len(prev) != 0 {
		t.Errorf("Previous() of no file: %v %v", prev, err)
	}
	if err := rc.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(rc.Path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file that was absent is back as: %v", err)
	}
}

// TestResolvConfSymlink: a resolv.conf that is a link (to resolvconf's or
// resolved's file) is replaced while the node runs, and the link, not a
// copy, comes back; the link's target is never written.
func TestResolvConfSymlink(t *testing.T) {
	rc := newRC(t, "")
	target := filepath.Join(filepath.Dir(rc.Path), "real-resolv.conf")
	os.WriteFile(target, []byte(original), 0o644)
	if err := os.Symlink("real-resolv.conf", rc.Path); err != nil {
		t.Fatal(err)
	}
	if err := rc.Set(context.Background(), nodeCfg); err != nil {
		t.Fatal(err)
	}
	if readFile(t, target) != original {
		t.Fatal("the link's target was written")
	}
	if prev, _ := rc.Previous(); len(prev) != 2 {
		t.Errorf("Previous() through the saved link: %v", prev)
	}
	if err := rc.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	if l, err := os.Readlink(rc.Path); err != nil || l != "real-resolv.conf" {
		t.Fatalf("link not restored: %q %v", l, err)
	}
}

// TestResolvConfCrashRecovery: a run killed while it had the file leaves
// the backup; the next start puts it back before anything else.
func TestResolvConfCrashRecovery(t *testing.T) {
	rc := newRC(t, original)
	if err := rc.Set(context.Background(), nodeCfg); err != nil {
		t.Fatal(err)
	}
	// The process dies here: no Restore. A new one starts.
	next := &ResolvConf{Path: rc.Path, Backup: rc.Backup}
	recovered, err := next.Recover()
	if err != nil || !recovered {
		t.Fatalf("Recover() = %v %v", recovered, err)
	}
	if readFile(t, rc.Path) != original {
		t.Fatalf("after recovery:\n%s", readFile(t, rc.Path))
	}
	if recovered, err := next.Recover(); recovered || err != nil {
		t.Fatalf("second Recover() = %v %v", recovered, err)
	}
	// And the new run takes the file over normally.
	if err := next.Set(context.Background(), nodeCfg); err != nil || readFile(t, next.Backup) != original {
		t.Fatalf("Set after recovery: %v", err)
	}
}

// TestResolvConfBindMount: when rename fails (EBUSY: the file is a bind
// mount) the file is written in place, the same inode, both ways.
func TestResolvConfBindMount(t *testing.T) {
	rc := newRC(t, original)
	var renames int
	rc.rename = func(oldpath, newpath string) error {
		if newpath == rc.Path {
			renames++
			return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: syscall.EBUSY}
		}
		return os.Rename(oldpath, newpath)
	}
	before, _ := os.Stat(rc.Path)
	if err := rc.Set(context.Background(), nodeCfg); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(rc.Path)
	if !os.SameFile(before, after) || !strings.Contains(readFile(t, rc.Path), "nameserver 100.100.100.100") {
		t.Fatal("not written in place")
	}
	if err := rc.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	restored, _ := os.Stat(rc.Path)
	if !os.SameFile(before, restored) || readFile(t, rc.Path) != original {
		t.Fatal("not restored in place")
	}
	if renames != 2 {
		t.Fatalf("%d renames tried, want 2", renames)
	}
	// No temporary files are left beside it.
	ents, _ := os.ReadDir(filepath.Dir(rc.Path))
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries", len(ents))
	}
}

// TestResolvConfWatch: another program's rewrite is undone; a fight (more
// than 5 rewrites within a minute) stops the re-applying and raises the
// health warning and its metric.
func TestResolvConfWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rc := newRC(t, original)
		rc.Metrics = NewOSMetrics(nil)
		if err := rc.Set(context.Background(), nodeCfg); err != nil {
			t.Fatal(err)
		}
		want := readFile(t, rc.Path)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan struct{})
		go func() { rc.Watch(ctx); close(done) }()
		other := []byte("nameserver 198.18.0.1\n")
		clobber := func() {
			os.WriteFile(rc.Path, other, 0o644)
			time.Sleep(DefaultWatchInterval)
			synctest.Wait()
		}
		// A DHCP client rewriting it now and then is undone every time.
		for i := 0; i < 3; i++ {
			clobber()
			if readFile(t, rc.Path) != want {
				t.Fatalf("rewrite %d not undone", i)
			}
			time.Sleep(fightWindow)
		}
		if rc.Health() != nil {
			t.Fatalf("warning after occasional rewrites: %v", rc.Health())
		}
		// A fight: rewritten at every check.
		for i := 0; i < maxReapplies; i++ {
			clobber()
			if readFile(t, rc.Path) != want {
				t.Fatalf("fight rewrite %d not undone", i)
			}
		}
		if rc.Health() != nil {
			t.Fatal("warning before the limit")
		}
		clobber()
		select {
		case <-done:
		default:
			t.Fatal("Watch still running after the fight")
		}
		if err := rc.Health(); !errors.Is(err, ErrFoughtOver) {
			t.Fatalf("Health() = %v", err)
		}
		if !bytes.Equal([]byte(readFile(t, rc.Path)), other) {
			t.Fatal("re-applied past the limit")
		}
		if v := testutil.ToFloat64(rc.Metrics.warning); v != 1 {
			t.Fatalf("warning metric %v", v)
		}
		if v := testutil.ToFloat64(rc.Metrics.reapplies); v != 3+maxReapplies {
			t.Fatalf("reapplied %v times", v)
		}
		// Stopping still restores the original.
		if err := rc.Restore(context.Background()); err != nil || readFile(t, rc.Path) != original {
			t.Fatalf("restore after the fight: %v", err)
		}
	})
}
