package coordinator_test

import (
	"bytes"
	"context"
	"fmt"
	"github.com/wiremesh/wiremesh/cli"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wiremesh/wiremesh/coordinator"
)

// TestServeBadPolicy: a --policy that does not compile (here one whose
// groups expand past the bound) stops `serve` at once with exit status 1
// and one line on stderr naming the flag and the file.
func TestServeBadPolicy(t *testing.T) {
	var refs []string
	for range 2000 {
		refs = append(refs, `"group:g"`)
	}
	var members []string
	for i := range 100 {
		members = append(members, fmt.Sprintf(`"n%d"`, i))
	}
	bad := `{"groups": {"group:g": [` + strings.Join(members, ",") + `]},
		"acls": [{"action": "accept", "src": [` + strings.Join(refs, ",") + `], "dst": ["*:*"]}]}`
	cases := map[string]string{"expands too far": bad, "not json": "{", "unknown tag": `{"acls": [{"action": "accept", "src": ["tag:x"], "dst": ["*:*"]}]}`}
	for name, text := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "policy.hujson")
			if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr bytes.Buffer
			err := coordinator.Command(context.Background(), []string{"serve", "--listen", "127.0.0.1:0",
				"--state-dir", filepath.Join(dir, "state"), "--policy", file}, &stdout, &stderr)
			code := cli.ExitCode(err)
			msg := "coordinator: <nil>\n"
			if err != nil {
				msg = "coordinator: " + cli.OneLine(err.Error()) + "\n" // as cli.Main prints it
			}
			if code != 1 || strings.Count(msg, "\n") != 1 || !strings.Contains(msg, "--policy "+file) {
				t.Fatalf("exit %d, stderr %q: want 1 and one line naming --policy %s", code, msg, file)
			}
		})
	}
}
