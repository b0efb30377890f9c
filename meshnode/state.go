package meshnode

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
	"golang.org/x/sys/unix"
)

// Files in --state-dir. The node key is the node's identity: losing it
// means registering again as a new node with a new address.
const (
	nodeKeyFile  = "node.key"
	controlFile  = "control.json"
	netmapFile   = "netmap.json"
	lockFile     = "meshnode.lock"
	maxStateFile = 64 << 20 // a netmap of ~100k peers; anything larger is corrupt
)

// stateDir reads and writes the daemon's state directory.
type stateDir string

func (d stateDir) path(name string) string { return filepath.Join(string(d), name) }

func (d stateDir) init() error {
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	return nil
}

// ErrStateDirLocked is returned by Run when another daemon holds the state
// directory.
var ErrStateDirLocked = errors.New("another meshnode is already running on this state directory")

// lock takes the state directory's lock file (an advisory flock, released
// by the kernel if the process dies) for the daemon's lifetime.
func (d stateDir) lock() (unlock func(), err error) {
	f, err := os.OpenFile(d.path(lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s)", ErrStateDirLocked, d)
		}
		return nil, fmt.Errorf("state dir lock: %w", err)
	}
	return func() { f.Close() }, nil
}

func (d stateDir) nodeKey() (key.NodePrivate, error) {
	return key.LoadOrCreate(d.path(nodeKeyFile), key.NewNode)
}

// control is what the node remembers about its coordinator, so that after
// the first run neither the auth key nor its pin is needed again.
type control struct {
	URL        string `json:"url"`
	Pin        string `json:"pin"`
	Registered bool   `json:"registered"`
}

func (d stateDir) loadControl() (control, error) {
	var c control
	err := d.readJSON(controlFile, &c)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	return c, err
}

func (d stateDir) saveControl(c control) error { return d.writeJSON(controlFile, c) }

// loadNetmap returns the cached netmap, or nil if there is none.
func (d stateDir) loadNetmap() (*netmap.NetworkMap, error) {
	var nm netmap.NetworkMap
	err := d.readJSON(netmapFile, &nm)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if nm.Peers == nil {
		nm.Peers = map[netmap.NodeID]netmap.Node{}
	}
	return &nm, nil
}

func (d stateDir) readJSON(name string, v any) error {
	f, err := os.Open(d.path(name))
	if err != nil {
		return err
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > maxStateFile {
		return fmt.Errorf("%s: %d bytes, larger than %d", d.path(name), st.Size(), maxStateFile)
	}
	if err := json.NewDecoder(f).Decode(v); err != nil {
		return fmt.Errorf("%s: %w", d.path(name), err)
	}
	return nil
}

func (d stateDir) writeJSON(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return d.writeFile(name, b)
}

// writeFile replaces a state file atomically, readable by the owner only.
func (d stateDir) writeFile(name string, b []byte) error {
	return key.WriteFileAtomic(d.path(name), b, 0o600)
}
