package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// A router can run a real miniupnpd, the port-mapping daemon of most Linux
// home routers, so port-mapping clients are tested against the real thing
// rather than a fake. It serves NAT-PMP and PCP on UDP 5351 and UPnP IGD
// (SSDP on 1900, SOAP over HTTP) on the router's inside links, and installs
// each mapping as an nftables DNAT rule on the router.
//
// Debian 12's miniupnpd (2.3.1) refuses to map when its WAN address is in a
// reserved range, and the lab's 198.18.0.0/15 is one. Debian 13's
// miniupnpd-nftables 2.3.9 accepts ext_allow_private_ipv4=yes, and its
// binary runs here when started through the loader of Debian 13's libc6.
// scripts/miniupnpd.sh fetches both .debs with a private apt configuration
// and unpacks them into a cache folder; MiniUPnPdRoot finds (or makes) it.
//
// miniupnpd needs its nftables chains to exist before it starts: a table
// inet filter with chains miniupnpd (jumped to from a filter forward hook),
// prerouting_miniupnpd and postrouting_miniupnpd (from the nat prerouting
// and postrouting hooks). The postrouting hook runs one step before the
// router's masquerade so a mapping's own SNAT, when miniupnpd adds one, wins.
// The router's forward chain also lets DNATed packets through its "nothing
// new from the WAN" rule, or no mapping could ever be reached.

// MiniUPnPdConfig chooses what a router's miniupnpd serves.
type MiniUPnPdConfig struct {
	// NATPMP and PCP: miniupnpd serves both on UDP 5351 behind one switch
	// (enable_natpmp) and tells them apart by the version byte. With only
	// one of them set, miniupnpd runs with both and the router drops the
	// other protocol's requests (first payload byte 0 is NAT-PMP, 2 is PCP)
	// before miniupnpd sees them, so clients see only the chosen one.
	NATPMP, PCP bool
	// UPnP enables UPnP IGD (SSDP discovery and the SOAP control URL).
	UPnP bool
	// Log receives miniupnpd's output (nil: discarded).
	Log *os.File
}

// MiniUPnPd is a miniupnpd process running on a router.
type MiniUPnPd struct {
	r    *Router
	cfg  MiniUPnPdConfig
	dir  string
	conf string

	mu      sync.Mutex
	cmd     *exec.Cmd
	started time.Time
}

// miniupnpdStartTimeout bounds the wait for miniupnpd to open its sockets;
// it starts in milliseconds.
const miniupnpdStartTimeout = 10 * time.Second

// MiniUPnPdRoot returns the folder where Debian 13's miniupnpd and libc6
// are unpacked, running scripts/miniupnpd.sh to fetch them when the cache
// is empty (it needs the Debian package archive, once).
func MiniUPnPdRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("lab: cannot locate scripts/miniupnpd.sh")
	}
	script := filepath.Join(filepath.Dir(file), "..", "scripts", "miniupnpd.sh")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	c := exec.CommandContext(ctx, "bash", script)
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return "", fmt.Errorf("lab: %s: %w: %s", script, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// StartMiniUPnPd starts miniupnpd on the router, serving the inside links
// that exist now (add the hosts first). The Lab stops it on Close.
func (r *Router) StartMiniUPnPd(cfg MiniUPnPdConfig) (*MiniUPnPd, error) {
	if !cfg.NATPMP && !cfg.PCP && !cfg.UPnP {
		return nil, errors.New("lab: miniupnpd with no protocol enabled")
	}
	root, err := MiniUPnPdRoot()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	nlans := r.nlans
	r.mu.Unlock()
	if nlans == 0 {
		return nil, errors.New("lab: miniupnpd needs a host behind the router first")
	}
	if err := r.Nft(miniupnpdRuleset(cfg)); err != nil {
		return nil, fmt.Errorf("lab: miniupnpd chains on %s: %w", r.Short, err)
	}
	dir, err := os.MkdirTemp("", r.lab.tag+"-miniupnpd-")
	if err != nil {
		return nil, err
	}
	r.lab.mu.Lock()
	r.lab.dirs = append(r.lab.dirs, dir)
	r.lab.mu.Unlock()
	m := &MiniUPnPd{r: r, cfg: cfg, dir: dir, conf: filepath.Join(dir, "miniupnpd.conf")}
	if err := os.WriteFile(m.conf, []byte(m.config(nlans)), 0o644); err != nil {
		return nil, err
	}
	if err := m.start(root); err != nil {
		return nil, err
	}
	return m, nil
}

// miniupnpdRuleset returns the chains miniupnpd fills, the exception that
// lets DNATed packets past the router's WAN drop rule, and, when only one of
// NAT-PMP and PCP is wanted, the drop of the other's requests.
func miniupnpdRuleset(cfg MiniUPnPdConfig) string {
	var b strings.Builder
	b.WriteString(`table inet filter {
	chain forward {
		type filter hook forward priority filter; policy accept;
		jump miniupnpd
	}
	chain miniupnpd {
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump prerouting_miniupnpd
	}
	chain postrouting {
		type nat hook postrouting priority srcnat - 1; policy accept;
		jump postrouting_miniupnpd
	}
	chain prerouting_miniupnpd {
	}
	chain postrouting_miniupnpd {
	}
}
insert rule inet wmfilter forward ct status dnat counter accept
`)
	if cfg.NATPMP != cfg.PCP {
		// @ih,0,8 is the first byte of the UDP payload: the version.
		version := 2 // drop PCP, keep NAT-PMP
		if cfg.PCP {
			version = 0
		}
		fmt.Fprintf(&b, `table inet wmpcpsplit {
	chain input {
		type filter hook input priority filter - 10; policy accept;
		udp dport 5351 @ih,0,8 %d counter drop
	}
}
`, version)
	}
	return b.String()
}

// config returns miniupnpd.conf for the router's inside links lan1..lanN.
func (m *MiniUPnPd) config(nlans int) string {
	yes := func(v bool) string {
		if v {
			return "yes"
		}
		return "no"
	}
	var u [16]byte
	rand.Read(u[:])
	var b strings.Builder
	// miniupnpd's UPnP GetExternalIPAddress answers "" for the lab's
	// reserved WAN address even with ext_allow_private_ipv4 (which only
	// lets it map), and ignores an ext_ip in a reserved range.
	fmt.Fprintf(&b, "ext_ifname=wan\n")
	for i := 1; i <= nlans; i++ {
		fmt.Fprintf(&b, "listening_ip=lan%d\n", i)
	}
	fmt.Fprintf(&b, `ext_allow_private_ipv4=yes
ext_perform_stun=no
enable_natpmp=%s
enable_upnp=%s
secure_mode=yes
system_uptime=no
http_port=0
uuid=%x-%x-%x-%x-%x
allow 1024-65535 198.19.0.0/16 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
`, yes(m.cfg.NATPMP || m.cfg.PCP), yes(m.cfg.UPnP), u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	return b.String()
}

// start runs miniupnpd in the foreground (-d) through trixie's loader and
// waits until it listens.
func (m *MiniUPnPd) start(root string) error {
	loader := filepath.Join(root, "usr", "lib64", "ld-linux-x86-64.so.2")
	libs := filepath.Join(root, "usr", "lib", "x86_64-linux-gnu") + ":/usr/lib/x86_64-linux-gnu"
	bin := filepath.Join(root, "usr", "sbin", "miniupnpd")
	// The lab's context is the Lab itself: Close kills the process.
	c, err := m.r.StartWith(context.Background(), m.cfg.Log, loader, "--library-path", libs, bin,
		"-d", "-f", m.conf, "-P", filepath.Join(m.dir, "miniupnpd.pid"))
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.cmd, m.started = c, time.Now()
	m.mu.Unlock()
	// Polling is the only signal: miniupnpd says nothing on a pipe when ready.
	deadline := time.Now().Add(miniupnpdStartTimeout)
	for time.Now().Before(deadline) {
		if m.listening() {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("lab: miniupnpd on %s did not start listening within %v", m.r.Short, miniupnpdStartTimeout)
}

// listening reports whether miniupnpd has bound what it serves.
func (m *MiniUPnPd) listening() bool {
	out, err := runOut("ip", "netns", "exec", m.r.Name, "ss", "-Hlnup")
	if err != nil {
		return false
	}
	if (m.cfg.NATPMP || m.cfg.PCP) && !strings.Contains(out, ":5351 ") {
		return false
	}
	if m.cfg.UPnP && !strings.Contains(out, ":1900 ") {
		return false
	}
	return true
}

// Started returns when the running miniupnpd was started. Its NAT-PMP and
// PCP epoch counts from then.
func (m *MiniUPnPd) Started() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.started
}

// Stop kills miniupnpd and, as a router reboot would, forgets every mapping
// it made: its nftables chains are flushed (miniupnpd leaves its rules in
// place when it exits).
func (m *MiniUPnPd) Stop() error {
	m.mu.Lock()
	c := m.cmd
	m.cmd = nil
	m.mu.Unlock()
	if c != nil && c.Process != nil {
		c.Process.Kill()
		c.Wait()
	}
	return m.r.Nft(`flush chain inet filter miniupnpd
flush chain inet filter prerouting_miniupnpd
flush chain inet filter postrouting_miniupnpd
`)
}

// Restart stops miniupnpd (losing its mappings) and starts it again, as a
// router restart does. Its NAT-PMP/PCP epoch starts again from zero and its
// UPnP control URL moves to a new port.
func (m *MiniUPnPd) Restart() error {
	if err := m.Stop(); err != nil {
		return err
	}
	root, err := MiniUPnPdRoot()
	if err != nil {
		return err
	}
	return m.start(root)
}

// Rules returns the DNAT rules miniupnpd has installed, one per line, as
// nft lists them.
func (m *MiniUPnPd) Rules() ([]string, error) {
	out, err := runOut("ip", "netns", "exec", m.r.Name, "nft", "list", "chain", "inet", "filter", "prerouting_miniupnpd")
	if err != nil {
		return nil, fmt.Errorf("lab: list miniupnpd rules on %s: %w", m.r.Short, err)
	}
	var rules []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); strings.Contains(l, "dnat") {
			rules = append(rules, l)
		}
	}
	return rules, nil
}
