// Package lab builds real network topologies for Wiremesh's tests and
// benchmarks: one Linux network namespace per host, veth links between them,
// nftables masquerade for NAT, and a userspace UDP delay stage (the kernel
// here has no netem).
//
// A Lab starts with an "internet" core: a namespace that routes between every
// public attachment. Routers and hosts attach to the core or to a router:
//
//	core (198.18.0.0/16 links, one /24 per attachment)
//	 ├── host s1            198.18.1.2
//	 ├── router cgnat       198.18.2.2   (WAN) ── NAT ── 198.19.x.0/24 links
//	 │    └── router home   198.19.3.2   (WAN) ── NAT ── 198.19.y.0/24 links
//	 │         └── host a   198.19.4.2
//	 └── ...
//
// Every link is a veth pair with its own /24: the upstream end is .1 and the
// downstream end .2. Public links come from 198.18.0.0/16 and links behind a
// router from 198.19.0.0/16, so the lab never uses an address outside
// 198.18.0.0/15.
//
// Routers NAT with plain masquerade (Easy: endpoint-independent mapping) or
// masquerade random,fully-random (Hard: a new port per destination). Chaining
// two routers makes double NAT. Each router's firewall is either Home, which
// drops unsolicited new packets addressed to the router itself as home routers
// do, or Bare, a Linux NAT box with no input rule. On a Bare router an early
// hole-punch probe from outside creates a conntrack entry to the router
// itself, and masquerade then gives the inside host's own flow a different
// port (the case hard-NAT traversal must survive). A router can also drop all
// UDP it forwards.
//
// Namespace names carry the creating process's PID and a random tag, so
// parallel test binaries never collide, and Sweep removes what a killed run
// left behind. Close removes everything the Lab made; New registers Close
// with t.Cleanup, which also runs when a test fails or panics.
//
// The package needs root, /dev/net/tun, iproute2 and nftables. Use Require in
// tests: it skips without them, or fails when CI=true.
package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Address plan. Each link takes one /24 from its pool; 254 links per pool is
// far beyond any topology a test builds.
var (
	publicPool  = netip.MustParsePrefix("198.18.0.0/16")
	privatePool = netip.MustParsePrefix("198.19.0.0/16")
)

// namePrefix starts every namespace the lab makes; Sweep looks for it.
const namePrefix = "wm-"

// cmdTimeout bounds every ip/nft invocation; they normally take milliseconds.
const cmdTimeout = 10 * time.Second

// ErrClosed is returned by operations on a closed Lab.
var ErrClosed = errors.New("lab: closed")

// Lab is one topology. Its methods are safe for concurrent use.
type Lab struct {
	tag  string // unique per Lab: "wm-<pid>-<rand>"
	Core *Namespace

	mu      sync.Mutex
	closed  bool
	nss     []*Namespace
	names   map[string]bool
	nextPub int // next /24 index in publicPool
	nextPri int // next /24 index in privatePool
	ncore   int // links made on the core, for interface names
	procs   []*exec.Cmd
	delays  []*Delay
	dirs    []string // temporary folders (miniupnpd configs), removed on Close
}

// Open makes a new Lab with its internet core. Callers must Close it; tests
// should use New instead.
func Open() (*Lab, error) {
	var r [3]byte
	rand.Read(r[:])
	l := &Lab{
		tag:     fmt.Sprintf("%s%d-%s", namePrefix, os.Getpid(), hex.EncodeToString(r[:])),
		names:   map[string]bool{},
		nextPub: 1,
		nextPri: 1,
	}
	core, err := l.newNamespace("core")
	if err != nil {
		l.Close()
		return nil, err
	}
	l.Core = core
	if err := core.sysctls(map[string]string{
		"net/ipv4/ip_forward": "1",
		// The delay stage re-injects packets through a TUN device; reverse
		// path filtering would drop them as arriving on the wrong interface.
		"net/ipv4/conf/all/rp_filter":     "0",
		"net/ipv4/conf/default/rp_filter": "0",
	}); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Tag returns the unique prefix of this Lab's namespace names.
func (l *Lab) Tag() string { return l.tag }

// newNamespace creates a namespace with loopback up.
func (l *Lab) newNamespace(name string) (*Namespace, error) {
	if strings.ContainsAny(name, "/ \t") || name == "" {
		return nil, fmt.Errorf("lab: bad name %q", name)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, ErrClosed
	}
	if l.names[name] {
		l.mu.Unlock()
		return nil, fmt.Errorf("lab: name %q already used", name)
	}
	l.names[name] = true
	ns := &Namespace{Name: l.tag + "-" + name, Short: name, lab: l}
	l.nss = append(l.nss, ns)
	l.mu.Unlock()
	if err := run(nil, "ip", "netns", "add", ns.Name); err != nil {
		return nil, err
	}
	if err := l.ownResolvConf(ns.Name); err != nil {
		return nil, err
	}
	if err := ns.ip("link set lo up"); err != nil {
		return nil, err
	}
	return ns, nil
}

// ownResolvConf gives the namespace its own /etc/resolv.conf, which
// `ip netns exec` bind-mounts over the host's for everything the lab runs
// there. A daemon under test that manages DNS (meshnode's MagicDNS) then
// rewrites the namespace's file, never the host's, even when it is killed
// before it can restore what it found. A test may overwrite the file with
// the content it needs; Close (or Sweep, after a killed run) removes it.
func (l *Lab) ownResolvConf(ns string) error {
	dir := filepath.Join(netnsEtc, ns)
	l.mu.Lock()
	l.dirs = append(l.dirs, dir)
	l.mu.Unlock()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	body := "# lab namespace " + ns + ": its own resolv.conf, so nothing run here changes the host's\n"
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(body), 0o644); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

// netnsEtc is where `ip netns exec` looks for a namespace's own /etc files.
const netnsEtc = "/etc/netns"

// allocLink returns the next /24 of the public or private pool as
// (upstream .1, downstream .2, prefix length).
func (l *Lab) allocLink(public bool) (up, down netip.Addr, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pool, idx := privatePool, &l.nextPri
	if public {
		pool, idx = publicPool, &l.nextPub
	}
	if *idx > 255 {
		return up, down, fmt.Errorf("lab: address pool %s exhausted", pool)
	}
	b := pool.Addr().As4()
	b[2] = byte(*idx)
	*idx++
	b[3] = 1
	up = netip.AddrFrom4(b)
	b[3] = 2
	down = netip.AddrFrom4(b)
	return up, down, nil
}

// link connects upper and lower with a veth pair named upName/downName, and
// gives them .1 and .2 of a fresh /24. It returns the lower address.
func (l *Lab) link(upper, lower *Namespace, upName, downName string, public bool) (upAddr, downAddr netip.Addr, err error) {
	upAddr, downAddr, err = l.allocLink(public)
	if err != nil {
		return
	}
	if err = run(nil, "ip", "link", "add", downName, "netns", lower.Name, "type", "veth", "peer", "name", upName, "netns", upper.Name); err != nil {
		return
	}
	if err = upper.ip(fmt.Sprintf("addr add %s/24 dev %s", upAddr, upName), "link set "+upName+" up"); err != nil {
		return
	}
	err = lower.ip(fmt.Sprintf("addr add %s/24 dev %s", downAddr, downName), "link set "+downName+" up",
		fmt.Sprintf("route add default via %s", upAddr))
	return
}

// Close stops every process and delay stage the Lab started and deletes its
// namespaces (which deletes their links). It is safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs, delays, nss, dirs := l.procs, l.delays, l.nss, l.dirs
	l.procs, l.delays, l.nss, l.dirs = nil, nil, nil, nil
	l.mu.Unlock()
	defer func() {
		for _, d := range dirs {
			os.RemoveAll(d)
		}
	}()

	for _, d := range delays {
		d.Close()
	}
	for _, p := range procs {
		if p.Process != nil {
			p.Process.Kill()
		}
	}
	for _, p := range procs {
		if p.Process != nil {
			p.Wait()
		}
	}
	var b strings.Builder
	for _, ns := range nss {
		fmt.Fprintf(&b, "netns del %s\n", ns.Name)
	}
	if b.Len() == 0 {
		return nil
	}
	// -force keeps going past a namespace that was never fully created.
	return run(strings.NewReader(b.String()), "ip", "-force", "-batch", "-")
}

// track registers a started process for Close to kill.
func (l *Lab) track(c *exec.Cmd) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	l.procs = append(l.procs, c)
	return nil
}

// run executes a short system command with a timeout and returns an error
// carrying its output.
func run(stdin *strings.Reader, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	c := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		c.Stdin = stdin
	}
	var out bytes.Buffer
	c.Stdout, c.Stderr = &out, &out
	if err := c.Run(); err != nil {
		return fmt.Errorf("lab: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// runOut is run that returns stdout.
func runOut(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).Output()
	return string(out), err
}
