//go:build lab && tailscale

package e2e

// The side-by-side against Tailscale: it needs Tailscale's binaries, built
// with another Go toolchain, so it has its own build tag and is run by
// bench/relay-vs-tailscale.sh, never by `make test`.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/internal/poll"
	"github.com/wiremesh/wiremesh/lab"
)

// tsBinDir returns the directory holding derper, tailscaled, tailscale and
// testcontrol (bench/tailscale/testcontrol), from WIREMESH_TAILSCALE_BIN.
func tsBinDir(b testing.TB) string {
	b.Helper()
	dir := os.Getenv("WIREMESH_TAILSCALE_BIN")
	if dir == "" {
		b.Fatal("WIREMESH_TAILSCALE_BIN is not set: run bench/relay-vs-tailscale.sh, which builds Tailscale v1.86.5 and sets it")
	}
	for _, name := range []string{"derper", "tailscaled", "tailscale", "testcontrol"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			b.Fatalf("WIREMESH_TAILSCALE_BIN: %v", err)
		}
	}
	return dir
}

// tsNode is a tailscaled in a lab host.
type tsNode struct {
	name string
	host *lab.Host
	dir  string // state directory, socket and HOME
	bin  string
}

// tsProc starts a long-running Tailscale binary in ns with its output in a
// log file printed when the benchmark fails (or WIREMESH_TEST_LOG=1) and
// kept in WIREMESH_TS_LOG_DIR when that is set.
// With privateEtc the command runs through `sh -c` that first mounts
// private, empty tmpfs on /etc, /run and /var/lib in the mount namespace
// `ip netns exec` gives it: tailscaled's DNS handling then sees no
// resolv.conf and can write nothing to the host's /etc, it reaches no D-Bus
// (so no systemd-resolved or NetworkManager of the host), and its default
// /var/lib/tailscale is private too (its state and logs directories are
// given explicitly as well).
func tsProc(b testing.TB, ns *lab.Namespace, name string, privateEtc bool, argv ...string) {
	b.Helper()
	keep := os.Getenv("WIREMESH_TS_LOG_DIR") // keep the logs there, for debugging
	logf, err := os.CreateTemp(keep, "wiremesh-ts-"+ns.Short+"-"+name+"-*.log")
	if err != nil {
		b.Fatal(err)
	}
	script := `exec "$@"`
	if privateEtc {
		script = `for d in /etc /run /var/lib; do mount -t tmpfs -o size=1m,mode=0755 wm-ts "$d" || exit 1; done; exec "$@"`
	}
	args := append([]string{"-c", script, "sh"}, argv...)
	c, err := ns.StartWith(context.Background(), logf, "sh", args...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.Process.Kill()
		c.Wait()
		logf.Close()
		if b.Failed() || os.Getenv("WIREMESH_TEST_LOG") == "1" {
			out, _ := os.ReadFile(logf.Name())
			if len(out) > 20000 {
				out = out[len(out)-20000:]
			}
			b.Logf("--- %s %s log ---\n%s", ns.Short, name, out)
		}
		if keep == "" {
			os.Remove(logf.Name())
		}
	})
}

// tsCLI runs the tailscale CLI inside the node's namespace against its
// tailscaled and returns stdout.
func (n *tsNode) tsCLI(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	argv := append([]string{"HOME=" + n.dir, filepath.Join(n.bin, "tailscale"), "--socket=" + filepath.Join(n.dir, "tailscaled.sock")}, args...)
	out, err := n.host.Command(ctx, "env", argv...).Output()
	if err != nil {
		var stderr string
		if ee, ok := errors.AsType[*exec.ExitError](err); ok {
			stderr = string(ee.Stderr)
		}
		return string(out), fmt.Errorf("%s: tailscale %s: %v %s", n.name, strings.Join(args, " "), err, stderr)
	}
	return string(out), nil
}

// tsStatus is the part of `tailscale status --json` the benchmark reads.
type tsStatus struct {
	BackendState string
	Self         struct{ TailscaleIPs []string }
	Peer         map[string]struct {
		HostName     string
		TailscaleIPs []string
		CurAddr      string // the direct path's address; empty when relayed
		Relay        string // the DERP region code
		Online       bool
	}
}

func (n *tsNode) status(b testing.TB) tsStatus {
	b.Helper()
	out, err := n.tsCLI(10*time.Second, "status", "--json")
	if err != nil {
		b.Fatal(err)
	}
	var st tsStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		b.Fatalf("%s: tailscale status: %v: %s", n.name, err, out)
	}
	return st
}

// startTailscale starts tailscaled in h (kernel TUN tailscale0, state in a
// temporary directory, no log upload) and brings it up against the lab's
// test control server, with DNS left alone.
func startTailscale(b testing.TB, w *world, bin, name string, h *lab.Host, control string) *tsNode {
	b.Helper()
	n := &tsNode{name: name, host: h, dir: b.TempDir(), bin: bin}
	tsProc(b, h.Namespace, "tailscaled", true, "env", "TS_NO_LOGS_NO_SUPPORT=true", "HOME="+n.dir, "TS_LOGS_DIR="+n.dir,
		filepath.Join(bin, "tailscaled"), "--no-logs-no-support", "--tun=tailscale0", "--port=41641",
		"--statedir="+n.dir, "--socket="+filepath.Join(n.dir, "tailscaled.sock"))
	if !poll.Wait(poll.DefaultTimeout, func() bool {
		_, err := os.Stat(filepath.Join(n.dir, "tailscaled.sock"))
		return err == nil
	}) {
		b.Fatalf("%s: tailscaled did not open its socket", name)
	}
	if _, err := n.tsCLI(60*time.Second, "up", "--login-server="+control, "--authkey=anything",
		"--hostname="+name, "--accept-dns=false", "--accept-routes=false", "--timeout=50s"); err != nil {
		b.Fatal(err)
	}
	return n
}

// procCPUSeconds returns the user plus system CPU seconds of the process
// whose command name is comm in ns (from /proc/PID/stat), for a process
// that exports no metrics (derper).
func procCPUSeconds(b testing.TB, ns *lab.Namespace, comm string) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "sh", "-c", "cat /proc/$(pgrep -n -x "+comm+")/stat").Output()
	if err != nil {
		b.Fatalf("%s CPU: %v", comm, err)
	}
	s := string(out)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		b.Fatalf("%s: short /proc stat: %q", comm, s)
	}
	// Fields after the command: state is 3, utime 14 and stime 15 in
	// proc(5)'s numbering, so indexes 11 and 12 here. Clock ticks are 100
	// per second on Linux.
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}

// BenchmarkLabRelayVsTailscale measures, in one lab, iperf3 TCP (5 s)
// between two Tailscale v1.86.5 nodes behind hard NATs, relayed by
// Tailscale's derper, and then between two Wiremesh nodes behind hard NATs
// relayed by relayd's fast path, back to back each iteration. derper and
// relayd run on the same public host; Tailscale's control is its own
// testcontrol on the coordinator's host. It reports both throughputs,
// their ratio, both retransmit counts and both relays' CPU seconds per
// gigabit relayed. Every Tailscale process runs inside the lab's
// namespaces (see tsProc).
func BenchmarkLabRelayVsTailscale(b *testing.B) {
	bin := tsBinDir(b)
	w := newWorld(b, "nyc")
	relay := w.relays[0].Host

	// Tailscale: derper next to relayd, control next to the coordinator.
	derpDir := b.TempDir()
	tsProc(b, relay.Namespace, "derper", false, filepath.Join(bin, "derper"),
		"-a", netip.AddrPortFrom(relay.Addr, 8443).String(), "-http-port", "-1", "-stun-port", "3478",
		"-certmode", "manual", "-certdir", derpDir, "-hostname", relay.Addr.String(),
		"-c", filepath.Join(derpDir, "derper.json"))
	control := netip.AddrPortFrom(w.coord.Addr, 9911)
	tsProc(b, w.coord.Namespace, "testcontrol", false, filepath.Join(bin, "testcontrol"),
		"-listen", control.String(), "-derp", relay.Addr.String(), "-derp-port", "8443", "-stun-port", "3478")
	for _, hp := range []struct {
		ns   *lab.Namespace
		port string
	}{{relay.Namespace, ":8443"}, {w.coord.Namespace, ":9911"}} {
		if !poll.Wait(poll.DefaultTimeout, func() bool {
			out, _ := hp.ns.Command(context.Background(), "ss", "-Hltn", "sport", "= "+hp.port).Output()
			return len(out) > 0
		}) {
			b.Fatalf("nothing listens on %s in %s", hp.port, hp.ns.Short)
		}
	}
	ta := startTailscale(b, w, bin, "ta", hardNATHost(b, w, "ta"), "http://"+control.String())
	tb := startTailscale(b, w, bin, "tb", hardNATHost(b, w, "tb"), "http://"+control.String())
	var tbIP netip.Addr
	if !poll.Wait(30*time.Second, func() bool {
		st := ta.status(b)
		for _, p := range st.Peer {
			if p.HostName == "tb" && len(p.TailscaleIPs) > 0 {
				tbIP, _ = netip.ParseAddr(p.TailscaleIPs[0])
				return true
			}
		}
		return false
	}) {
		b.Fatalf("ta never saw tb: %+v", ta.status(b))
	}
	tsPing := &node{w: w, name: "ta", host: ta.host}
	if err := tsPing.ping(tbIP, 3); err != nil {
		b.Fatal(err)
	}
	tsPath := func() string {
		for _, p := range ta.status(b).Peer {
			if p.HostName == "tb" {
				if p.CurAddr != "" {
					return "direct " + p.CurAddr
				}
				return "DERP " + p.Relay
			}
		}
		return "no peer"
	}

	// Wiremesh: two nodes behind hard NATs, relayed by relayd's fast path.
	a, bn, bIP := relayedPair(b, w)

	const dur = 5 * time.Second
	var tsBps, wmBps, ratios, tsCPU, wmCPU []float64
	var tsRetr, wmRetr []int
	for i := 0; i < b.N; i++ {
		d0 := procCPUSeconds(b, relay.Namespace, "derper")
		tr := iperf3Run(b, ta.host.Namespace, tb.host.Namespace, tbIP, dur)
		dcpu := procCPUSeconds(b, relay.Namespace, "derper") - d0
		if p := tsPath(); !strings.HasPrefix(p, "DERP") {
			b.Fatalf("Tailscale's path ta→tb is %s, want DERP", p)
		}
		r0 := relayCPUSeconds(b, w)
		wr := iperf3Run(b, a.host.Namespace, bn.host.Namespace, bIP, dur)
		rcpu := relayCPUSeconds(b, w) - r0
		st, _ := a.status()
		if p, _ := peerOf(st, "b"); p.Path != "relay" {
			b.Fatalf("a's path to b is %q, want relay", p.Path)
		}
		tg, wg := tr.bps*dur.Seconds()/1e9, wr.bps*dur.Seconds()/1e9
		tsBps, wmBps, ratios = append(tsBps, tr.bps), append(wmBps, wr.bps), append(ratios, wr.bps/tr.bps)
		tsRetr, wmRetr = append(tsRetr, tr.retransmits), append(wmRetr, wr.retransmits)
		tsCPU, wmCPU = append(tsCPU, dcpu/tg), append(wmCPU, rcpu/wg)
		b.Logf("run %d: Tailscale over DERP %.0f Mbit/s (%d retr, %.2f%% of segments; derper %.2f CPU-s/Gbit), "+
			"Wiremesh relay %.0f Mbit/s (%d retr, %.2f%% of segments; relayd %.2f CPU-s/Gbit), ratio %.2f",
			i, tr.bps/1e6, tr.retransmits, 100*float64(tr.retransmits)/(tr.sentBytes/relayMSS), dcpu/tg,
			wr.bps/1e6, wr.retransmits, 100*float64(wr.retransmits)/(wr.sentBytes/relayMSS), rcpu/wg, wr.bps/tr.bps)
	}
	b.ReportMetric(median(tsBps)/1e6, "tailscale-Mbit/s")
	b.ReportMetric(median(wmBps)/1e6, "wiremesh-Mbit/s")
	b.ReportMetric(median(ratios), "ratio")
	b.ReportMetric(float64(medianInt(tsRetr)), "tailscale-retr")
	b.ReportMetric(float64(medianInt(wmRetr)), "wiremesh-retr")
	b.ReportMetric(median(tsCPU), "derper-CPU-s/Gbit")
	b.ReportMetric(median(wmCPU), "relayd-CPU-s/Gbit")
}

func medianInt(v []int) int {
	f := make([]float64, len(v))
	for i, x := range v {
		f[i] = float64(x)
	}
	return int(median(f))
}
