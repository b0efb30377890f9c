package dns

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// The resolv.conf configurator, for hosts without systemd-resolved.
//
//	Recover  (at start) a backup left by a run that did not stop cleanly
//	         is put back first, so the file is the OS's own again
//	Set      the file is saved to Backup once, then rewritten to point at
//	         the resolver; rename over it, or write in place when rename
//	         fails (a bind mount: containers, `ip netns exec`)
//	Watch    the file is checked every WatchInterval; a rewrite by another
//	         program is undone, at most maxReapplies times in fightWindow;
//	         past that the node stops and raises a health warning
//	Restore  (at stop) the backup goes back and is removed
//
// Every path is given by the caller, so tests never touch /etc.

// Watch limits. A DHCP client or NetworkManager rewrites the file on each
// lease or link change (minutes apart); two programs fighting rewrite it
// every few seconds. Five rewrites in a minute is a fight.
const (
	DefaultWatchInterval = 2 * time.Second
	maxReapplies         = 5
	fightWindow          = time.Minute
)

// maxResolvConf bounds reading the file (it is a few hundred bytes).
const maxResolvConf = 64 << 10

// backupMarker heads a backup of a file that did not exist, or of a
// symlink (then followed by its target), so Restore can put back exactly
// what was there.
const (
	backupAbsent  = "# wiremesh-backup: absent\n"
	backupSymlink = "# wiremesh-backup: symlink "
)

// OSConfig is what the node asks of the OS resolver.
type OSConfig struct {
	// Nameservers (100.100.100.100).
	Nameservers []netip.Addr
	// SearchDomains, in order (the mesh domain first).
	SearchDomains []string
	// MatchDomains are the suffixes the node answers when it does not take
	// every name (systemd-resolved routing domains).
	MatchDomains []string
	// All is set when every name goes through the node (global
	// nameservers configured).
	All bool
}

// ResolvConf manages a resolv.conf file.
type ResolvConf struct {
	// Path is the file (/etc/resolv.conf).
	Path string
	// Backup is where the original is kept while the node runs; it must
	// survive a crash (the node's state directory).
	Backup string
	// WatchInterval overrides DefaultWatchInterval.
	WatchInterval time.Duration
	Metrics       *OSMetrics
	Log           *slog.Logger

	// rename is os.Rename; tests make it fail as on a bind mount.
	rename func(oldpath, newpath string) error

	mu      sync.Mutex
	want    []byte // what Set wrote; nil when not set
	fights  []time.Time
	warning string
}

// ErrFoughtOver is the health warning's error when another program keeps
// rewriting the file.
var ErrFoughtOver = errors.New("dns: resolv.conf is being rewritten by another program")

func (rc *ResolvConf) log() *slog.Logger {
	if rc.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return rc.Log
}

// Recover puts back a backup a previous run left (it crashed or was
// killed). It reports whether there was one.
func (rc *ResolvConf) Recover() (bool, error) {
	if _, err := os.Lstat(rc.Backup); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	rc.log().Warn("restoring resolv.conf left by a previous run", "path", rc.Path, "backup", rc.Backup)
	return true, rc.restoreBackup()
}

// Previous returns the nameservers of the OS's own configuration (the
// backup while the node has the file, else the file), port 53, to forward
// to when the mesh has no global nameservers. Loopback stubs are included
// (they work from the host).
func (rc *ResolvConf) Previous() ([]netip.AddrPort, error) {
	b, err := readLimited(rc.Backup)
	if errors.Is(err, fs.ErrNotExist) {
		b, err = readLimited(rc.Path)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dns: read previous resolvers: %w", err)
	}
	if bytes.HasPrefix(b, []byte(backupSymlink)) {
		target := strings.TrimSpace(strings.TrimPrefix(firstLine(b), backupSymlink))
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(rc.Path), target)
		}
		if b, err = readLimited(target); err != nil {
			return nil, nil // a dangling link: no resolvers
		}
	}
	ns, _ := parseResolvConf(b)
	out := make([]netip.AddrPort, 0, len(ns))
	for _, a := range ns {
		if a == Address.Addr() {
			continue // the resolver itself: a loop
		}
		out = append(out, netip.AddrPortFrom(a, 53))
	}
	return out, nil
}

// Mode implements OSConfigurator.
func (rc *ResolvConf) Mode() string { return ModeFile }

// Set points the file at cfg's nameservers, saving the original first.
// Only Nameservers and SearchDomains apply: a resolv.conf sends every name
// to its nameservers.
func (rc *ResolvConf) Set(_ context.Context, cfg OSConfig) error {
	if err := rc.saveBackup(); err != nil {
		return err
	}
	var old []byte
	if b, err := readLimited(rc.Backup); err == nil && !bytes.HasPrefix(b, []byte("# wiremesh-backup:")) {
		old = b
	}
	content := render(cfg, old, rc.Backup)
	if err := rc.write(content); err != nil {
		return err
	}
	rc.mu.Lock()
	rc.want = content
	rc.mu.Unlock()
	return nil
}

// Restore puts the original back and removes the backup. Without a
// backup it does nothing.
func (rc *ResolvConf) Restore(context.Context) error {
	rc.mu.Lock()
	rc.want = nil
	rc.mu.Unlock()
	if _, err := os.Lstat(rc.Backup); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return rc.restoreBackup()
}

// Health returns the watcher's warning, or nil.
func (rc *ResolvConf) Health() error {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.warning == "" {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrFoughtOver, rc.warning)
}

// Watch re-applies the file when another program rewrites it, until ctx
// ends or the file is fought over (then it raises the health warning and
// returns).
func (rc *ResolvConf) Watch(ctx context.Context) {
	every := rc.WatchInterval
	if every <= 0 {
		every = DefaultWatchInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rc.mu.Lock()
		want := rc.want
		rc.mu.Unlock()
		if want == nil {
			continue
		}
		got, err := readLimited(rc.Path)
		if err == nil && bytes.Equal(got, want) {
			continue
		}
		now := time.Now()
		rc.mu.Lock()
		recent := rc.fights[:0]
		for _, f := range rc.fights {
			if now.Sub(f) < fightWindow {
				recent = append(recent, f)
			}
		}
		rc.fights = append(recent, now)
		fought := len(rc.fights) > maxReapplies
		if fought {
			rc.warning = fmt.Sprintf("%s rewritten %d times within %v; no longer re-applied (DNS through the mesh may not work; check NetworkManager, resolvconf or a DHCP client)",
				rc.Path, len(rc.fights), fightWindow)
		}
		rc.mu.Unlock()
		if fought {
			rc.Metrics.setWarning(true)
			rc.log().Warn("dns: giving up on resolv.conf", "path", rc.Path, "err", rc.Health())
			return
		}
		rc.log().Warn("dns: resolv.conf was rewritten by another program; re-applying", "path", rc.Path)
		if err := rc.write(want); err != nil {
			rc.log().Warn("dns: re-apply resolv.conf failed", "path", rc.Path, "err", err)
			continue
		}
		rc.Metrics.reapplied()
	}
}

// saveBackup copies the current file (or notes its absence, or its link
// target) to Backup, unless a backup is already there.
func (rc *ResolvConf) saveBackup() error {
	if _, err := os.Lstat(rc.Backup); err == nil {
		return nil
	}
	var content []byte
	fi, err := os.Lstat(rc.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		content = []byte(backupAbsent)
	case err != nil:
		return fmt.Errorf("dns: stat %s: %w", rc.Path, err)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(rc.Path)
		if err != nil {
			return fmt.Errorf("dns: read link %s: %w", rc.Path, err)
		}
		content = []byte(backupSymlink + target + "\n")
	default:
		if content, err = readLimited(rc.Path); err != nil {
			return fmt.Errorf("dns: read %s: %w", rc.Path, err)
		}
	}
	if err := atomicWrite(rc.Backup, content, 0o600, os.Rename); err != nil {
		return fmt.Errorf("dns: save backup: %w", err)
	}
	return nil
}

func (rc *ResolvConf) restoreBackup() error {
	b, err := readLimited(rc.Backup)
	if err != nil {
		return fmt.Errorf("dns: read backup: %w", err)
	}
	switch {
	case bytes.Equal(b, []byte(backupAbsent)):
		if err := os.Remove(rc.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("dns: remove %s: %w", rc.Path, err)
		}
	case bytes.HasPrefix(b, []byte(backupSymlink)):
		target := strings.TrimSpace(strings.TrimPrefix(firstLine(b), backupSymlink))
		tmp := rc.Path + ".wiremesh-link"
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			return fmt.Errorf("dns: restore link %s: %w", rc.Path, err)
		}
		if err := os.Rename(tmp, rc.Path); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("dns: restore link %s: %w", rc.Path, err)
		}
	default:
		if err := rc.write(b); err != nil {
			return err
		}
	}
	if err := os.Remove(rc.Backup); err != nil {
		return fmt.Errorf("dns: remove backup: %w", err)
	}
	rc.log().Info("dns: resolv.conf restored", "path", rc.Path)
	return nil
}

// write replaces the file: by rename, or in place when rename fails.
func (rc *ResolvConf) write(content []byte) error {
	rename := rc.rename
	if rename == nil {
		rename = os.Rename
	}
	err := atomicWrite(rc.Path, content, 0o644, rename)
	if err == nil {
		return nil
	}
	var re *renameError
	if !errors.As(err, &re) {
		return fmt.Errorf("dns: write %s: %w", rc.Path, err)
	}
	// A bind-mounted file cannot be replaced, only rewritten.
	rc.log().Debug("dns: rename failed; writing resolv.conf in place", "path", rc.Path, "err", re.err)
	f, err := os.OpenFile(rc.Path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("dns: write %s in place: %w", rc.Path, err)
	}
	if _, err := f.Write(content); err != nil {
		f.Close()
		return fmt.Errorf("dns: write %s in place: %w", rc.Path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("dns: write %s in place: %w", rc.Path, err)
	}
	return nil
}

type renameError struct{ err error }

func (e *renameError) Error() string { return "rename: " + e.err.Error() }

// atomicWrite writes content to a temporary file beside path and renames
// it over path. A rename failure is a *renameError.
func atomicWrite(path string, content []byte, mode fs.FileMode, rename func(string, string) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".wiremesh-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(content)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := rename(tmp, path); err != nil {
		os.Remove(tmp)
		return &renameError{err}
	}
	return nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxResolvConf+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxResolvConf {
		return nil, fmt.Errorf("dns: %s is larger than %d bytes", path, maxResolvConf)
	}
	return b, nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s
}

// parseResolvConf returns the nameserver addresses and the other option
// lines worth keeping (options) of a resolv.conf.
func parseResolvConf(b []byte) (ns []netip.Addr, options []string) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			if a, err := netip.ParseAddr(f[1]); err == nil {
				ns = append(ns, a.WithZone(""))
			}
		case "options":
			options = append(options, sc.Text())
		}
	}
	return ns, options
}

// render writes the node's resolv.conf, keeping the original's options.
func render(cfg OSConfig, old []byte, backup string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# resolv.conf(5) written by meshnode (Wiremesh MagicDNS).\n")
	fmt.Fprintf(&b, "# The original is kept in %s and comes back when meshnode stops.\n", backup)
	for _, a := range cfg.Nameservers {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	if len(cfg.SearchDomains) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(cfg.SearchDomains, " "))
	}
	_, options := parseResolvConf(old)
	for _, o := range options {
		fmt.Fprintln(&b, o)
	}
	return b.Bytes()
}
