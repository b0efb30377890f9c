package localapi

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// helperEnv makes the test binary act as a local API client (see
// TestMain): the peer-credential test runs it as another user.
const helperEnv = "WIREMESH_LOCALAPI_HELPER_SOCKET"

func TestMain(m *testing.M) {
	if sock := os.Getenv(helperEnv); sock != "" {
		_, err := NewClient(sock).Status(context.Background())
		fmt.Println(err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestAllowUID(t *testing.T) {
	allow := allowUID(1000)
	for uid, want := range map[uint32]bool{0: true, 1000: true, 1001: false, 65534: false} {
		if allow(uid) != want {
			t.Errorf("allow(%d) = %v", uid, !want)
		}
	}
}

// TestPeerCredentials: a user other than root and the daemon's is refused
// even when the socket's mode lets it connect. The client runs as nobody
// (uid 65534), which needs root; CI runs as root.
func TestPeerCredentials(t *testing.T) {
	if os.Getuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true and not root: cannot run a client as another user")
		}
		t.Skip("needs root to run a client as another user")
	}
	// A directory and socket everyone may open: only the credential check
	// stands between nobody and the API.
	dir, err := os.MkdirTemp("", "wm-localapi-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, SocketName)
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(sock, 0o777)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(&fakeBackend{}, slog.New(slog.DiscardHandler)).Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })

	// The test binary lives in a root-only build directory: copy it where
	// nobody can run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(dst, src)
	src.Close()
	dst.Close()

	run := func(uid uint32) string {
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid %d: %v\n%s", uid, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := run(65534); !strings.Contains(got, "permission denied: uid 65534") {
		t.Fatalf("client as nobody: %q, want permission denied", got)
	}
	if got := run(0); got != "<nil>" {
		t.Fatalf("client as root: %q", got)
	}
}
