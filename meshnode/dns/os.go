package dns

import (
	"context"
	"log/slog"

	"github.com/godbus/dbus/v5"
)

// DNS modes, as `meshnode status` will show them.
const (
	ModeResolved  = "resolved"  // systemd-resolved over D-Bus
	ModeFile      = "file"      // /etc/resolv.conf rewritten
	ModeUserspace = "userspace" // the OS is left alone
	ModeOff       = "off"       // --accept-dns=false
)

// OSConfigurator points the OS's resolver at the node's.
type OSConfigurator interface {
	// Set applies cfg; it may be called again with new settings.
	Set(ctx context.Context, cfg OSConfig) error
	// Restore puts back what the OS had.
	Restore(ctx context.Context) error
	// Health is non-nil while the configuration is not in force (the file
	// is fought over).
	Health() error
	// Mode is ModeResolved or ModeFile.
	Mode() string
}

var (
	_ OSConfigurator = (*ResolvConf)(nil)
	_ OSConfigurator = (*Resolved)(nil)
)

// OSPaths are the inputs of ChooseOS.
type OSPaths struct {
	// ResolvConf is the OS's resolv.conf (/etc/resolv.conf).
	ResolvConf string
	// Backup is where the resolv.conf configurator keeps the original
	// (in the node's state directory).
	Backup string
	// Bus is the system bus, or nil when there is none (no D-Bus: not
	// resolved).
	Bus *dbus.Conn
	// Link is the TUN device's interface index.
	Link    int
	Metrics *OSMetrics
	Log     *slog.Logger
}

// ChooseOS returns the configurator for this host: systemd-resolved when
// it is the system's resolver, else the resolv.conf file.
func ChooseOS(ctx context.Context, p OSPaths) OSConfigurator {
	if p.Bus != nil && ResolvedActive(ctx, p.Bus, p.ResolvConf) {
		return &Resolved{Conn: p.Bus, Link: p.Link, Log: p.Log}
	}
	return &ResolvConf{Path: p.ResolvConf, Backup: p.Backup, Metrics: p.Metrics, Log: p.Log}
}
