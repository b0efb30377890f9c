package lab

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Namespace is one network namespace of a Lab: a host, a router or the core.
type Namespace struct {
	Name  string // full name, as `ip netns` lists it
	Short string // the name given to the Lab
	lab   *Lab
}

// ip runs `ip -n NS -batch -` with the given commands.
func (n *Namespace) ip(cmds ...string) error {
	return run(strings.NewReader(strings.Join(cmds, "\n")+"\n"), "ip", "-n", n.Name, "-batch", "-")
}

// IP runs `ip` subcommands inside the namespace, one per argument, such as
// "link set wan down".
func (n *Namespace) IP(cmds ...string) error { return n.ip(cmds...) }

// Nft loads an nftables ruleset (nft -f syntax) inside the namespace.
func (n *Namespace) Nft(ruleset string) error {
	return run(strings.NewReader(ruleset), "ip", "netns", "exec", n.Name, "nft", "-f", "-")
}

// Command returns a command that runs inside the namespace. The caller runs
// it; use Start for long-running processes the Lab should stop on Close.
func (n *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Start starts a long-running command inside the namespace; Close kills it
// if it is still running.
func (n *Namespace) Start(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	return n.StartWith(ctx, nil, name, args...)
}

// Do runs fn on an OS thread that has entered the namespace. Sockets and
// devices that fn creates stay in the namespace after Do returns, so a test
// can listen inside a namespace and use the socket from any goroutine.
func (n *Namespace) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: when this goroutine exits the
		// runtime destroys it instead of reusing a thread in a foreign
		// namespace.
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+n.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("lab: open netns %s: %w", n.Short, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("lab: setns %s: %w", n.Short, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// ListenUDP opens a UDP socket inside the namespace.
func (n *Namespace) ListenUDP(addr string) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := n.Do(func() error {
		ua, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp4", ua)
		return err
	})
	return c, err
}

// Listen opens a TCP listener inside the namespace.
func (n *Namespace) Listen(addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	return ln, err
}

// Dial dials from inside the namespace ("udp4" or "tcp4").
func (n *Namespace) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// sysctls writes sysctl values (paths relative to /proc/sys) in the namespace.
func (n *Namespace) sysctls(kv map[string]string) error {
	return n.Do(func() error {
		for k, v := range kv {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
				return fmt.Errorf("lab: sysctl %s in %s: %w", k, n.Short, err)
			}
		}
		return nil
	})
}

// StartWith is Start with the command's stdout and stderr going to out
// (nil: discarded).
func (n *Namespace) StartWith(ctx context.Context, out *os.File, name string, args ...string) (*exec.Cmd, error) {
	c := n.Command(ctx, name, args...)
	if out != nil {
		c.Stdout, c.Stderr = out, out
	}
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("lab: start %s in %s: %w", name, n.Short, err)
	}
	if err := n.lab.track(c); err != nil {
		c.Process.Kill()
		c.Wait()
		return nil, err
	}
	return c, nil
}
