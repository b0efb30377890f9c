package key

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// FileMode is the permission every key file is written with.
const FileMode fs.FileMode = 0o600

// maxKeyFile bounds what ReadKeyFile reads: every key text is under 100 bytes.
const maxKeyFile = 4 << 10

// WriteFileAtomic writes data to path so that a crash leaves either the old
// file or the new one, never a mix: it writes a temporary file in the same
// directory, syncs it, renames it over path and syncs the directory.
func WriteFileAtomic(path string, data []byte, perm fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, derr := os.Open(dir); derr == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// ErrInsecureFile is returned by ReadKeyFile for a key file that group or
// others may read or write.
var ErrInsecureFile = errors.New("key file is accessible to group or others")

// WriteKeyFile stores k's text form at path with mode 0600, atomically.
func WriteKeyFile(path string, k encoding.TextMarshaler) error {
	b, err := k.MarshalText()
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, append(b, '\n'), FileMode)
}

// ReadKeyFile parses the key stored at path into k. It refuses files whose
// permissions let group or others in, as ssh does.
func ReadKeyFile(path string, k encoding.TextUnmarshaler) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("read key %s: %w", path, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("read key %s: mode %#o: %w", path, st.Mode().Perm(), ErrInsecureFile)
	}
	buf := make([]byte, maxKeyFile+1)
	n, _ := f.Read(buf)
	if n > maxKeyFile {
		return fmt.Errorf("read key %s: %w: file too large", path, ErrBadKey)
	}
	if err := k.UnmarshalText(bytes.TrimSpace(buf[:n])); err != nil {
		return fmt.Errorf("read key %s: %w", path, err)
	}
	return nil
}

// LoadOrCreate reads the key at path, or, if there is no file, makes one with
// gen and stores it. Any other read error (bad permissions, corrupt text) is
// returned rather than silently replacing the node's identity.
func LoadOrCreate[T any, PT interface {
	*T
	encoding.TextMarshaler
	encoding.TextUnmarshaler
}](path string, gen func() T) (T, error) {
	var k T
	err := ReadKeyFile(path, PT(&k))
	if err == nil {
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	k = gen()
	if err := WriteKeyFile(path, PT(&k)); err != nil {
		return k, err
	}
	return k, nil
}
