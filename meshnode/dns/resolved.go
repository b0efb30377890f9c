package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/godbus/dbus/v5"
)

// The systemd-resolved configurator: when resolved is the system's
// resolver, the node does not touch /etc/resolv.conf but gives resolved
// per-link settings for its TUN device over D-Bus (as resolvectl does):
//
//	SetLinkDNS      100.100.100.100 on the TUN link
//	SetLinkDomains  the search domains (mesh domain first) as search
//	                domains, and either "~." (routing only) when the node
//	                takes every name (global nameservers are set), or each
//	                split suffix as a routing-only domain
//	SetLinkDefaultRoute  true with "~.", else false (resolved >= 240)
//	RevertLink      at stop: the link's settings go back to none
//
// resolved forgets per-link settings when the link goes away, so a crash
// leaves nothing behind once the TUN device is gone.

// D-Bus names of systemd-resolved's manager.
const (
	resolvedBusName = "org.freedesktop.resolve1"
	resolvedPath    = dbus.ObjectPath("/org/freedesktop/resolve1")
	resolvedManager = "org.freedesktop.resolve1.Manager"
)

// resolvedStubs are the addresses resolved's stub listens on; a
// resolv.conf naming them means resolved is the system's resolver.
var resolvedStubs = []string{"127.0.0.53", "127.0.0.54"}

// ResolvedActive reports whether systemd-resolved is the system's resolver:
// it owns its D-Bus name on conn, and resolvConf (normally
// /etc/resolv.conf) points at it (a link into /run/systemd/resolve/, or a
// file naming its stub).
func ResolvedActive(ctx context.Context, conn *dbus.Conn, resolvConf string) bool {
	var owned bool
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, resolvedBusName).Store(&owned); err != nil || !owned {
		return false
	}
	if target, err := os.Readlink(resolvConf); err == nil && strings.Contains(target, "/run/systemd/resolve/") {
		return true
	}
	b, err := readLimited(resolvConf)
	if err != nil {
		return false
	}
	ns, _ := parseResolvConf(b)
	for _, a := range ns {
		for _, stub := range resolvedStubs {
			if a.String() == stub {
				return true
			}
		}
	}
	return false
}

// Resolved configures systemd-resolved for one network link.
type Resolved struct {
	// Conn is the system bus (dbus.ConnectSystemBus); tests give a
	// private bus.
	Conn *dbus.Conn
	// Link is the interface index of the node's TUN device.
	Link int
	Log  *slog.Logger
}

// linkDNS is resolved's (family, address) pair: D-Bus a(iay).
type linkDNS struct {
	Family  int32
	Address []byte
}

// linkDomain is resolved's (domain, routing only) pair: D-Bus a(sb).
type linkDomain struct {
	Domain      string
	RoutingOnly bool
}

// Address families as resolved takes them (AF_INET, AF_INET6).
const (
	afInet  = 2
	afInet6 = 10
)

// Set gives the link cfg's nameservers and domains.
func (r *Resolved) Set(ctx context.Context, cfg OSConfig) error {
	obj := r.Conn.Object(resolvedBusName, resolvedPath)
	var dns []linkDNS
	for _, a := range cfg.Nameservers {
		fam := int32(afInet)
		if a.Is6() && !a.Is4In6() {
			fam = afInet6
		}
		dns = append(dns, linkDNS{Family: fam, Address: a.Unmap().AsSlice()})
	}
	if err := obj.CallWithContext(ctx, resolvedManager+".SetLinkDNS", 0, int32(r.Link), dns).Err; err != nil {
		return fmt.Errorf("dns: resolved SetLinkDNS: %w", err)
	}
	domains := resolvedDomains(cfg)
	if err := obj.CallWithContext(ctx, resolvedManager+".SetLinkDomains", 0, int32(r.Link), domains).Err; err != nil {
		return fmt.Errorf("dns: resolved SetLinkDomains: %w", err)
	}
	// Only resolved 240 and later have default routes per link; older ones
	// route by "~." alone.
	if err := obj.CallWithContext(ctx, resolvedManager+".SetLinkDefaultRoute", 0, int32(r.Link), cfg.All).Err; err != nil {
		var de dbus.Error
		if !errors.As(err, &de) || de.Name != "org.freedesktop.DBus.Error.UnknownMethod" {
			return fmt.Errorf("dns: resolved SetLinkDefaultRoute: %w", err)
		}
	}
	if r.Log != nil {
		r.Log.Info("dns: systemd-resolved configured", "link", r.Link, "all_names", cfg.All, "domains", len(domains))
	}
	return nil
}

// resolvedDomains: search domains first, then "~." or the split suffixes
// (routing only), each once.
func resolvedDomains(cfg OSConfig) []linkDomain {
	seen := map[string]bool{}
	var out []linkDomain
	for _, d := range cfg.SearchDomains {
		if !seen[d] {
			seen[d] = true
			out = append(out, linkDomain{Domain: d})
		}
	}
	if cfg.All {
		return append(out, linkDomain{Domain: "~.", RoutingOnly: true})
	}
	for _, d := range cfg.MatchDomains {
		if !seen[d] {
			seen[d] = true
			out = append(out, linkDomain{Domain: d, RoutingOnly: true})
		}
	}
	return out
}

// Mode implements OSConfigurator.
func (r *Resolved) Mode() string { return ModeResolved }

// Health implements OSConfigurator: resolved keeps what it is given, so
// there is nothing to fight over.
func (r *Resolved) Health() error { return nil }

// Restore drops the link's settings.
func (r *Resolved) Restore(ctx context.Context) error {
	obj := r.Conn.Object(resolvedBusName, resolvedPath)
	if err := obj.CallWithContext(ctx, resolvedManager+".RevertLink", 0, int32(r.Link)).Err; err != nil {
		return fmt.Errorf("dns: resolved RevertLink: %w", err)
	}
	return nil
}
