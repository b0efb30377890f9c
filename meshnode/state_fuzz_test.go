package meshnode

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/wiremesh/wiremesh/key"
)

// FuzzStateFiles feeds arbitrary bytes as each state file: loading must
// return a value or an error, never crash, and a bad node key must not be
// replaced silently (that would change the node's identity).
func FuzzStateFiles(f *testing.F) {
	f.Add([]byte(`{"url":"https://198.18.0.1","pin":"sha256/x","registered":true}`))
	f.Add([]byte(`{"Seq":1,"Self":{"id":1,"addresses":["100.64.0.1/32"]},"Peers":{"2":{"id":2}}}`))
	f.Add([]byte(`{"Peers":null}`))
	f.Add([]byte("privkey:" + "00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		d := stateDir(t.TempDir())
		for _, name := range []string{controlFile, netmapFile, nodeKeyFile} {
			if err := os.WriteFile(filepath.Join(string(d), name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := d.loadControl(); err != nil && len(b) == 0 {
			t.Logf("empty control: %v", err)
		}
		if nm, err := d.loadNetmap(); err == nil && nm != nil && nm.Peers == nil {
			t.Fatal("loaded netmap with a nil peer map")
		}
		k, err := d.nodeKey()
		after, _ := os.ReadFile(filepath.Join(string(d), nodeKeyFile))
		if err != nil && string(after) != string(b) {
			t.Fatal("unreadable node key replaced")
		}
		if err == nil && k == (key.NodePrivate{}) {
			t.Fatal("zero node key loaded")
		}
	})
}
