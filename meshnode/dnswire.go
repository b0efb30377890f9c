package meshnode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"log/slog"

	"github.com/godbus/dbus/v5"
	mdns "github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/wiremesh/wiremesh/meshnode/dns"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/meshnode/netstack"
	"github.com/wiremesh/wiremesh/netmap"
)

// resolvConfBackup is the resolv.conf configurator's backup in the state
// directory: it outlives a crash, so the next start restores the file.
const resolvConfBackup = "resolv.conf.backup"

// osDNSTimeout bounds one OS configuration call (a D-Bus round trip or a
// file write) so a stuck systemd-resolved cannot hold the node.
const osDNSTimeout = 5 * time.Second

// magicDNS is the node's MagicDNS: the resolver it feeds from netmap
// deltas, and in kernel TUN mode the OS configurator pointing the OS at it.
type magicDNS struct {
	res  *dns.Resolver
	mode string // dns.ModeResolved, ModeFile or ModeUserspace

	// os, bus and osMetrics are set in kernel TUN mode only.
	os        dns.OSConfigurator
	bus       *dbus.Conn
	osMetrics *dns.OSMetrics

	mu    sync.Mutex
	osSet bool         // os.Set succeeded at least once: Restore at stop
	last  dns.OSConfig // what the OS was last given
	osErr error        // the last Set error, for status
	// serveErr is why the resolver could not start (port 53 taken): the
	// node runs on without MagicDNS and the OS is left alone.
	serveErr error
	domain   string
}

// dnsBackupPath is the resolv.conf backup in the state directory.
func (n *Node) dnsBackupPath() string { return n.state.path(resolvConfBackup) }

// resolvConfPath is the OS's resolv.conf.
func (n *Node) resolvConfPath() string { return resolvConfPath(n.cfg) }

func resolvConfPath(cfg Config) string {
	if cfg.testResolvConf != "" {
		return cfg.testResolvConf
	}
	return "/etc/resolv.conf"
}

// recoverDNS restores a resolv.conf a killed run left rewritten: its
// backup in the state directory means the file is still ours. It runs at
// every start, whatever --accept-dns says.
func recoverDNS(cfg Config, st stateDir) {
	rc := &dns.ResolvConf{Path: resolvConfPath(cfg), Backup: st.path(resolvConfBackup), Log: cfg.Log}
	if ok, err := rc.Recover(); err != nil {
		cfg.Log.Warn("dns: restoring resolv.conf left by the last run failed", "err", err)
	} else if ok {
		cfg.Log.Info("dns: restored resolv.conf left by the last run", "path", rc.Path)
	}
}

// newMagicDNS builds the resolver (and, in kernel mode, chooses the OS
// configurator) before the first netmap, so status shows the mode at once.
func (n *Node) newMagicDNS() *magicDNS {
	d := &magicDNS{}
	cfg := dns.Config{Registerer: n.reg, Log: n.log.With("component", "dns")}
	if n.cfg.Userspace {
		d.mode = dns.ModeUserspace
		// Mesh nameservers (a Pi-hole on a peer) through the netstack;
		// others through the host network.
		cfg.MeshDialer = stackDialer{n}
		if n.cfg.ExitNode != "" {
			// With an exit node every nameserver is asked from the exit
			// node's side: through the netstack, never the host network.
			cfg.Dialer = stackDialer{n}
		}
	}
	d.res = dns.New(cfg)
	if n.cfg.Userspace {
		// The OS is untouched; its own resolvers are the last resort.
		rc := &dns.ResolvConf{Path: n.resolvConfPath(), Backup: n.dnsBackupPath()}
		if prev, err := rc.Previous(); err != nil {
			n.log.Warn("dns: reading the OS's resolvers failed", "err", err)
		} else {
			d.res.SetOSResolvers(prev)
		}
		return d
	}
	if !n.cfg.testNoBus {
		if bus, err := dbus.ConnectSystemBus(); err == nil {
			d.bus = bus
		} else {
			n.log.Debug("dns: no system bus; systemd-resolved is not used", "err", err)
		}
	}
	d.osMetrics = dns.NewOSMetrics(n.reg)
	ctx, cancel := context.WithTimeout(n.ctx, osDNSTimeout)
	defer cancel()
	d.os = dns.ChooseOS(ctx, dns.OSPaths{ResolvConf: n.resolvConfPath(), Backup: n.dnsBackupPath(),
		Bus: d.bus, Metrics: d.osMetrics, Log: n.log.With("component", "dns")})
	d.mode = d.os.Mode()
	// The OS's previous resolvers, read before taking over: the resolver
	// forwards there when the mesh has no global nameservers.
	rc := &dns.ResolvConf{Path: n.resolvConfPath(), Backup: n.dnsBackupPath()}
	if prev, err := rc.Previous(); err != nil {
		n.log.Warn("dns: reading the OS's resolvers failed", "err", err)
	} else {
		d.res.SetOSResolvers(prev)
	}
	return d
}

// serveFailed records a resolver that could not start. The mesh still
// works; the DNS health warning says why names do not.
func (d *magicDNS) serveFailed(log *slog.Logger, err error) {
	if err == nil {
		return
	}
	log.Error("dns: the resolver could not start; MagicDNS is off and the OS is left alone", "err", err)
	d.mu.Lock()
	d.serveErr = err
	d.mu.Unlock()
}

// stackDialer dials through the userspace netstack once the engine exists.
type stackDialer struct{ n *Node }

func (s stackDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	select {
	case <-s.n.engineReady:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s.n.mu.Lock()
	eng := s.n.mu.engine
	s.n.mu.Unlock()
	if eng == nil || eng.stack == nil {
		return nil, errors.New("dns: no netstack")
	}
	return eng.stack.DialContext(ctx, network, addr)
}

// serveDNSKernel gives the TUN device 100.100.100.100 (so local programs
// reach it: the kernel delivers it locally) and serves the resolver there.
func (n *Node) serveDNSKernel(tunName string) error {
	link, err := netlink.LinkByName(tunName)
	if err != nil {
		return fmt.Errorf("dns: tun %s: %w", tunName, err)
	}
	a := dns.Address.Addr()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("dns: tun %s: add address %v: %w", tunName, a, err)
	}
	if r, ok := n.dns.os.(*dns.Resolved); ok {
		r.Link = link.Attrs().Index
	}
	pc, err := net.ListenPacket("udp4", dns.Address.String())
	if err != nil {
		return fmt.Errorf("dns: listen udp %s: %w", dns.Address, err)
	}
	ln, err := net.Listen("tcp4", dns.Address.String())
	if err != nil {
		pc.Close()
		return fmt.Errorf("dns: listen tcp %s: %w", dns.Address, err)
	}
	n.goDNS(pc, ln)
	if rc, ok := n.dns.os.(*dns.ResolvConf); ok {
		n.goAsync(rc.Watch)
	}
	return nil
}

// serveDNSUserspace serves the resolver inside the netstack.
func (n *Node) serveDNSUserspace(st *netstack.Stack) error {
	if err := st.AddAddress(dns.Address.Addr()); err != nil {
		return err
	}
	pc, err := st.ListenUDP(dns.Address)
	if err != nil {
		return err
	}
	ln, err := st.ListenTCPAddr(dns.Address)
	if err != nil {
		pc.Close()
		return fmt.Errorf("dns: listen tcp %s: %w", dns.Address, err)
	}
	n.goDNS(pc, ln)
	return nil
}

func (n *Node) goDNS(pc net.PacketConn, ln net.Listener) {
	n.log.Info("dns: resolver serving", "addr", dns.Address.String(), "mode", n.dns.mode)
	n.goAsync(func(ctx context.Context) {
		if err := n.dns.res.Serve(ctx, pc, ln); err != nil {
			n.log.Error("dns: resolver stopped", "err", err)
		}
	})
}

// dnsFrame is what the resolver needs from one frame: captured under n.mu
// because frames change the map in place.
type dnsFrame struct {
	settings *netmap.DNS // nil: unchanged
	self     *netmap.Node
}

// feedDNS gives the resolver one frame's changes, one at a time, then
// re-points the OS if the search list or routes changed.
func (n *Node) feedDNS(df dnsFrame, changes []peerChange) {
	if n.dns == nil {
		return
	}
	res := n.dns.res
	if df.settings != nil {
		if err := res.SetSettings(dns.SettingsFromNetmap(*df.settings)); err != nil {
			n.log.Warn("dns: the coordinator's settings were refused; keeping the old ones", "err", err)
		} else {
			n.dns.mu.Lock()
			n.dns.domain = ""
			if df.settings.MagicDNS {
				n.dns.domain = df.settings.Domain
			}
			n.dns.mu.Unlock()
		}
	}
	if df.self != nil {
		if err := res.SetSelf(df.self.Name, prefixAddrs(df.self.Addresses)); err != nil {
			n.log.Warn("dns: this node's name is not a DNS name", "name", df.self.Name, "err", err)
		}
	}
	for _, c := range changes {
		id := c.key.String()
		if !c.has {
			res.PeerRemove(id)
			continue
		}
		if c.had && c.old.Name == c.next.Name && slices.Equal(c.old.Addresses, c.next.Addresses) {
			continue
		}
		if err := res.PeerUpsert(id, c.next.Name, prefixAddrs(c.next.Addresses)); err != nil {
			n.log.Warn("dns: a peer's name is not a DNS name; it does not resolve", "name", c.next.Name, "err", err)
			res.PeerRemove(id)
		}
	}
	n.applyOSDNS()
}

// applyOSDNS points the OS at the resolver (kernel TUN mode), when what
// it should be told changed.
func (n *Node) applyOSDNS() {
	d := n.dns
	if d == nil || d.os == nil {
		return
	}
	select {
	case <-n.engineReady: // the TUN device and the resolver exist
	default:
		return
	}
	all, suffixes := d.res.Routes()
	cfg := dns.OSConfig{Nameservers: []netip.Addr{dns.Address.Addr()}, SearchDomains: d.res.SearchDomains(),
		MatchDomains: suffixes, All: all}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.serveErr != nil || d.osSet && d.osErr == nil && osConfigEqual(d.last, cfg) {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, osDNSTimeout)
	defer cancel()
	d.osErr = d.os.Set(ctx, cfg)
	if d.osErr != nil {
		n.log.Warn("dns: configuring the OS failed", "mode", d.mode, "err", d.osErr)
		return
	}
	d.osSet, d.last = true, cfg
	n.log.Info("dns: OS points at the resolver", "mode", d.mode, "search", cfg.SearchDomains, "all_names", all)
}

func osConfigEqual(a, b dns.OSConfig) bool {
	return a.All == b.All && slices.Equal(a.Nameservers, b.Nameservers) &&
		slices.Equal(a.SearchDomains, b.SearchDomains) && slices.Equal(a.MatchDomains, b.MatchDomains)
}

// stopDNS gives the OS its configuration back and closes the bus. Run's
// stop calls it after every goroutine has ended and before the TUN device
// goes (systemd-resolved reverts the link by index).
func (n *Node) stopDNS() {
	d := n.dns
	if d == nil || d.os == nil {
		return
	}
	d.mu.Lock()
	set := d.osSet
	d.mu.Unlock()
	if set {
		ctx, cancel := context.WithTimeout(context.Background(), osDNSTimeout)
		if err := d.os.Restore(ctx); err != nil {
			n.log.Warn("dns: restoring the OS's configuration failed", "mode", d.mode, "err", err)
		} else {
			n.log.Info("dns: OS configuration restored", "mode", d.mode)
		}
		cancel()
	}
	if d.bus != nil {
		d.bus.Close()
	}
}

// dnsHealth is the DNS health warning, or nil.
func (n *Node) dnsHealth() error {
	d := n.dns
	if d == nil {
		return nil
	}
	d.mu.Lock()
	serveErr, osErr := d.serveErr, d.osErr
	d.mu.Unlock()
	if serveErr != nil {
		return serveErr
	}
	if d.os == nil {
		return nil
	}
	if err := d.os.Health(); err != nil {
		return err
	}
	return osErr
}

// dnsStatus is status's dns object.
func (n *Node) dnsStatus() *localapi.DNSStatus {
	if n.dns == nil {
		return &localapi.DNSStatus{Mode: dns.ModeOff}
	}
	n.dns.mu.Lock()
	st := &localapi.DNSStatus{Mode: n.dns.mode, Domain: n.dns.domain, Resolver: dns.Address.Addr().String()}
	n.dns.mu.Unlock()
	if err := n.dnsHealth(); err != nil {
		st.Health = err.Error()
	}
	return st
}

// DNSQuery implements localapi.DNSBackend: one query through the
// resolver, as a program on this node would send it.
func (n *Node) DNSQuery(ctx context.Context, name, qtype string) (localapi.DNSAnswer, error) {
	if n.dns == nil {
		return localapi.DNSAnswer{}, errors.New("dns: the resolver is off (--accept-dns=false)")
	}
	t, ok := mdns.StringToType[qtype]
	if !ok {
		return localapi.DNSAnswer{}, fmt.Errorf("%w: unknown type %q", localapi.ErrBadRequest, qtype)
	}
	fqdn := mdns.Fqdn(name)
	if _, ok := mdns.IsDomainName(fqdn); !ok {
		return localapi.DNSAnswer{}, fmt.Errorf("%w: %q is not a DNS name", localapi.ErrBadRequest, name)
	}
	// A single label goes through the search list, as a stub resolver
	// would send it (the mesh domain first).
	candidates := []string{fqdn}
	if mdns.CountLabel(fqdn) == 1 {
		candidates = nil
		for _, s := range n.dns.res.SearchDomains() {
			candidates = append(candidates, mdns.Fqdn(name+"."+s))
		}
		candidates = append(candidates, fqdn)
	}
	var ans localapi.DNSAnswer
	for _, c := range candidates {
		m := new(mdns.Msg)
		m.SetQuestion(c, t)
		m.RecursionDesired = true
		resp, source := n.dns.res.Query(ctx, m)
		if resp == nil {
			return ans, errors.New("dns: no answer")
		}
		ans = localapi.DNSAnswer{Name: c, Type: mdns.TypeToString[t], Source: source,
			Rcode: mdns.RcodeToString[resp.Rcode], Answers: []string{}}
		for _, rr := range resp.Answer {
			ans.Answers = append(ans.Answers, rr.String())
		}
		if resp.Rcode == mdns.RcodeSuccess && len(resp.Answer) > 0 {
			break
		}
	}
	return ans, nil
}

var _ localapi.DNSBackend = (*Node)(nil)

func prefixAddrs(ps []netip.Prefix) []netip.Addr {
	out := make([]netip.Addr, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Addr())
	}
	return out
}

// resolveName is the SOCKS5 proxy's resolver: every name through
// MagicDNS (mesh names, split routes, global nameservers), the first IPv4
// address. With --accept-dns=false the proxy knows no names.
func (n *Node) resolveName(name string) (netip.Addr, bool) {
	if n.dns == nil {
		return netip.Addr{}, false
	}
	ctx, cancel := context.WithTimeout(n.ctx, socksResolveTimeout)
	defer cancel()
	addrs, _, err := n.dns.res.LookupHost(ctx, name)
	if err != nil {
		n.log.Debug("socks5: name did not resolve", "name", name, "err", err)
		return netip.Addr{}, false
	}
	for _, a := range addrs {
		if a.Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// socksResolveTimeout bounds a SOCKS5 name lookup: the resolver's own
// forwarding limit (10 s), so a dead upstream fails the CONNECT instead of
// holding it.
const socksResolveTimeout = 10 * time.Second
