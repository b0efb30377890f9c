package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/wiremesh/wiremesh/coordinator/dnsconf"
	"github.com/wiremesh/wiremesh/netmap"
)

// DNS settings: what `coordinator dns get` prints and `dns set` replaces.
// They live in the store once set; until then `serve --dns-domain` and
// `--dns-nameservers` are the settings. A change is written through the
// store, then put in force under the state lock, marking every stream: each
// node gets one delta frame carrying the new settings. Other replicas hear
// the store's change notification and read the settings back (replica.go).

// initDNS puts the start-up settings in force: the stored ones, else the
// flags. It runs in New, before anything streams.
func (srv *Server) initDNS(stored string) error {
	if stored == "" {
		d, err := dnsconf.Check(netmap.DNS{Domain: srv.cfg.DNSDomain, MagicDNS: true, Nameservers: srv.cfg.Nameservers})
		if err != nil {
			return fmt.Errorf("--dns-domain/--dns-nameservers: %w", err)
		}
		if err := dnsconf.CheckCoordinator(d, srv.cfg.ServerURL); err != nil {
			return fmt.Errorf("--dns-domain %s and --server-url %s: %w", d.Domain, srv.cfg.ServerURL, err)
		}
		srv.dns = d
		return nil
	}
	d, err := decodeStoredDNS(stored)
	if err != nil {
		return err
	}
	if err := dnsconf.CheckCoordinator(d, srv.cfg.ServerURL); err != nil {
		// Valid when it was stored, against another --server-url (or on
		// another replica): refusing to start would leave no way to fix it.
		srv.log.Error("stored DNS settings clash with --server-url; fix them with `coordinator dns set`", "err", err)
	}
	srv.dns = d
	return nil
}

func decodeStoredDNS(text string) (netmap.DNS, error) {
	var d netmap.DNS
	if err := json.Unmarshal([]byte(text), &d); err != nil {
		return d, fmt.Errorf("stored DNS settings: %w", err)
	}
	d, err := dnsconf.Check(d)
	if err != nil {
		return d, fmt.Errorf("stored DNS settings: %w", err)
	}
	return d, nil
}

// DNS returns the DNS settings in force (a copy).
func (srv *Server) DNS() netmap.DNS {
	srv.st.mu.RLock()
	defer srv.st.mu.RUnlock()
	return cloneDNS(srv.dns)
}

// SetDNSText parses a HuJSON settings document (dnsconf.Parse) and puts it
// in force as SetDNS does. A bad document changes nothing; its error, one
// line, names the bad field and wraps dnsconf.ErrInvalid.
func (srv *Server) SetDNSText(ctx context.Context, text []byte) error {
	d, err := dnsconf.Parse(text)
	if err != nil {
		return err
	}
	return srv.SetDNS(ctx, d)
}

// SetDNS checks d (dnsconf.Check, and dnsconf.CheckCoordinator against
// this coordinator's URL), stores it and puts it in force: every node with
// a stream gets a delta with the new settings, on every replica. Invalid
// settings change nothing; the error names the bad field and wraps
// dnsconf.ErrInvalid.
func (srv *Server) SetDNS(ctx context.Context, d netmap.DNS) error {
	d, err := dnsconf.Check(d)
	if err != nil {
		return err
	}
	if err := dnsconf.CheckCoordinator(d, srv.URL()); err != nil {
		return err
	}
	text, err := json.Marshal(d)
	if err != nil {
		return err
	}
	srv.dnsMu.Lock()
	defer srv.dnsMu.Unlock()
	if err := srv.store.SetDNS(ctx, string(text), srv.now()); err != nil {
		return err
	}
	srv.installDNS(d)
	srv.audit(ctx, "dns set", "domain "+d.Domain)
	return nil
}

// syncDNS reads the settings another replica stored and puts them in
// force. It reads under dnsMu, so a local SetDNS cannot slip between the
// read and the install and be overwritten by an older value.
func (srv *Server) syncDNS(ctx context.Context) {
	srv.dnsMu.Lock()
	defer srv.dnsMu.Unlock()
	text, err := srv.store.DNS(ctx)
	if err != nil {
		srv.log.Warn("read DNS settings changed by another replica", "err", err)
		return
	}
	if text == "" {
		return // nothing stored: the flags stay in force
	}
	d, err := decodeStoredDNS(text)
	if err != nil {
		srv.log.Error("DNS settings stored by another replica do not check here; keeping the old ones", "err", err)
		return
	}
	srv.installDNS(d)
}

// installDNS puts d in force and marks every stream, unless d is what is
// in force already. The caller holds dnsMu.
func (srv *Server) installDNS(d netmap.DNS) {
	now := srv.now()
	st := srv.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if sameDNS(srv.dns, d) {
		return
	}
	srv.dns = d
	for _, n := range st.nodes {
		if n.sess != nil {
			n.sess.mark(func(p *pending) { p.dns = true }, now)
		}
	}
}

func sameDNS(a, b netmap.DNS) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func cloneDNS(d netmap.DNS) netmap.DNS {
	d.Nameservers = slices.Clone(d.Nameservers)
	d.SearchDomains = slices.Clone(d.SearchDomains)
	d.ExtraRecords = slices.Clone(d.ExtraRecords)
	if d.Split != nil {
		split := maps.Clone(d.Split)
		for k, v := range split {
			split[k] = slices.Clone(v)
		}
		d.Split = split
	}
	return d
}
