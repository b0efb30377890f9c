package portmap

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// Restart announcements. A NAT-PMP gateway that restarts (or whose external
// address changes) multicasts an external-address answer to 224.0.0.1:5350
// (RFC 6886 §3.2.1), and a PCP server an unsolicited ANNOUNCE to the same
// group and port (RFC 6887 §14.1.3); miniupnpd sends both when it starts.
// The client listens for them so a restart is noticed at once rather than
// at the next check. An announcement only triggers that check: its content
// is not trusted, it counts only when it comes from the current gateway's
// port 5351, and at most one per announceGap (a spoofing LAN host cannot
// make the client hammer its gateway).
const (
	announcePort = 5350
	announceGap  = time.Second
)

// allHosts is the group announcements go to.
var allHosts = &net.UDPAddr{IP: net.IPv4(224, 0, 0, 1)}

// isAnnouncement reports whether b is a NAT-PMP external-address answer or
// a PCP ANNOUNCE response.
func isAnnouncement(b []byte) bool {
	if len(b) == 12 && b[0] == 0 && b[1] == 0x80 {
		return true
	}
	r, err := parsePCPResponse(b)
	return err == nil && r.opcode == pcpOpAnnounce
}

// listenAnnouncements listens on 0.0.0.0:5350 in the all-hosts group until
// ctx ends, and signals c.announced for each announcement from the current
// gateway. Several processes may listen at once (SO_REUSEPORT). When the
// socket cannot be opened the client still works, on its periodic checks.
func (c *Client) listenAnnouncements(ctx context.Context) {
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(announcePort)))
	if err != nil {
		c.log.Debug("no restart announcements", "err", err)
		return
	}
	defer pc.Close()
	p := ipv4.NewPacketConn(pc)
	// nil: the interface the route to 224.0.0.1 uses (the default route's).
	// Hosts are members of 224.0.0.1 anyway; joining just makes sure.
	if err := p.JoinGroup(nil, allHosts); err != nil {
		c.log.Debug("join 224.0.0.1", "err", err)
	}
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	buf := make([]byte, pcpMaxLen+1)
	var last time.Time
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		src := ua.AddrPort()
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		gw := c.gateway.Load()
		if gw == nil || src != netip.AddrPortFrom(*gw, pcpPort) || !isAnnouncement(buf[:n]) {
			continue
		}
		if now := time.Now(); now.Sub(last) < announceGap {
			continue
		} else {
			last = now
		}
		c.log.Debug("gateway announcement", "gateway", src)
		select {
		case c.announced <- struct{}{}:
		default:
		}
	}
}
