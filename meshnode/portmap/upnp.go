package portmap

import (
	"bufio"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"github.com/huin/goupnp"
	"github.com/huin/goupnp/dcps/internetgateway2"
	"github.com/huin/goupnp/soap"
)

// UPnP IGD through github.com/huin/goupnp, with discovery and the
// description fetch done here so that both are bounded:
//
//	discover  an SSDP M-SEARCH sent by unicast to gateway:1900 (routers
//	          answer unicast searches; nothing is sent to the multicast
//	          group), answered by an HTTP-like reply whose LOCATION header
//	          names the device description
//	describe  GET the description (at most upnpMaxBody bytes), parse it
//	          into goupnp's RootDevice and pick the first WANIPConnection:2,
//	          WANIPConnection:1 or WANPPPConnection:1 service
//	map       AddPortMapping(external = our port, UDP, internal = self:port,
//	          lease 7200 s), then GetExternalIPAddress
//	check     GetSpecificPortMappingEntry: gone, or an error, means the
//	          router restarted (UPnP has no epoch)
//	delete    DeletePortMapping
//
// Every URL (LOCATION, URLBase, control URLs) must point at the gateway's
// own address, or it is refused: a hostile answer cannot point the node at a
// third host. Redirects are not followed, no proxy is used, and every HTTP
// body read is capped.
const (
	ssdpPort = 1900
	// upnpMaxBody caps a description or SOAP response. miniupnpd's
	// description is about 4 KiB; routers with many services stay far
	// below 64 KiB.
	upnpMaxBody = 64 << 10
	// ssdpMaxReply caps one SSDP answer (a few hundred bytes in practice).
	ssdpMaxReply = 2048
	// ssdpRetransmit is the gap between the two M-SEARCH copies, for one
	// lost datagram.
	ssdpRetransmit = 300 * time.Millisecond
	// upnpDescription names the mapping in the router's UI.
	upnpDescription = "wiremesh"
	// upnpConflictTries bounds the ports tried when ours is taken.
	upnpConflictTries = 4
)

// UPnP error codes (IGD WANIPConnection spec) the client reacts to.
const (
	upnpErrConflict          = 718 // ConflictInMappingEntry
	upnpErrOnlyPermanent     = 725 // OnlyPermanentLeasesSupported
	upnpErrNoSuchEntry       = 714 // NoSuchEntryInArray
	upnpErrExternalPortWild  = 716
	upnpErrSamePortRequired  = 724
	upnpErrConflictWithOther = 729
)

// igdClient is what the client uses of goupnp's WANIPConnection1/2 and
// WANPPPConnection1 clients (all three have these methods).
type igdClient interface {
	AddPortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, protocol string, intPort uint16, intClient string, enabled bool, desc string, lease uint32) error
	DeletePortMappingCtx(ctx context.Context, remoteHost string, extPort uint16, protocol string) error
	GetExternalIPAddressCtx(ctx context.Context) (string, error)
	GetSpecificPortMappingEntryCtx(ctx context.Context, remoteHost string, extPort uint16, protocol string) (uint16, string, bool, string, uint32, error)
}

// upnpProto speaks UPnP IGD to one gateway.
type upnpProto struct {
	gw, self netip.Addr
	ssdp     netip.AddrPort // gw:1900, or a test's
	port     uint16
	lifetime time.Duration
	httpc    *http.Client
	igd      igdClient // found by probe
	// publicAddr is Config.PublicAddr: the fallback external address.
	publicAddr func() netip.Addr
}

func newUPnP(gw, self netip.Addr, cfg *Config) *upnpProto {
	return &upnpProto{
		gw: gw, self: self, ssdp: netip.AddrPortFrom(gw, ssdpPort),
		port: cfg.Port, lifetime: cfg.Lifetime, httpc: boundedHTTPClient(gw),
		publicAddr: cfg.PublicAddr,
	}
}

func (p *upnpProto) kind() Kind { return KindUPnP }

// boundedHTTPClient returns an HTTP client that talks only to gw, follows no
// redirect, uses no proxy, caps every body at upnpMaxBody and every request
// at requestTimeout.
func boundedHTTPClient(gw netip.Addr) *http.Client {
	tr := &http.Transport{
		Proxy:                  nil,
		DialContext:            (&net.Dialer{Timeout: requestTimeout}).DialContext,
		MaxResponseHeaderBytes: 8 << 10,
		ResponseHeaderTimeout:  requestTimeout,
		DisableKeepAlives:      true,
	}
	return &http.Client{
		Transport:     &limitTransport{gw: gw, rt: tr},
		Timeout:       requestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return errors.New("upnp: redirect refused") },
	}
}

// limitTransport refuses requests to any host but the gateway and caps
// response bodies.
type limitTransport struct {
	gw netip.Addr
	rt http.RoundTripper
}

func (t *limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := hostIsGateway(req.URL, t.gw); err != nil {
		return nil, err
	}
	resp, err := t.rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitBody{r: io.LimitReader(resp.Body, upnpMaxBody+1), c: resp.Body}
	return resp, nil
}

// errTooLarge is returned when a gateway's HTTP body exceeds upnpMaxBody.
var errTooLarge = errors.New("upnp: response body too large")

type limitBody struct {
	r io.Reader
	c io.Closer
	n int
}

func (b *limitBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += n
	if b.n > upnpMaxBody {
		return n, errTooLarge
	}
	return n, err
}

func (b *limitBody) Close() error { return b.c.Close() }

// hostIsGateway checks that u is http to the gateway's address.
func hostIsGateway(u *url.URL, gw netip.Addr) error {
	if u == nil || u.Scheme != "http" {
		return fmt.Errorf("upnp: refusing URL %v: not http", u)
	}
	h, err := netip.ParseAddr(u.Hostname())
	if err != nil || h.Unmap() != gw {
		return fmt.Errorf("upnp: refusing URL %v: not the gateway %v", u, gw)
	}
	return nil
}

// ssdpSearch is the M-SEARCH request. HOST names the multicast group as the
// spec says, even though the datagram goes to the gateway by unicast.
const ssdpSearch = "M-SEARCH * HTTP/1.1\r\n" +
	"HOST: 239.255.255.250:1900\r\n" +
	"MAN: \"ssdp:discover\"\r\n" +
	"MX: 1\r\n" +
	"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"

// parseSSDPReply parses an SSDP search answer and returns its LOCATION. It
// wants an HTTP/1.x 200 status line and a LOCATION header that parses as a
// URL; everything else is an error.
func parseSSDPReply(b []byte) (*url.URL, error) {
	if len(b) > ssdpMaxReply {
		return nil, fmt.Errorf("upnp: ssdp reply of %d bytes", len(b))
	}
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(b)))
	line, err := tp.ReadLine()
	if err != nil {
		return nil, fmt.Errorf("upnp: ssdp reply: %w", err)
	}
	proto, code, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(proto, "HTTP/1.") || !strings.HasPrefix(code, "200") {
		return nil, fmt.Errorf("upnp: ssdp reply status %q", line)
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("upnp: ssdp reply headers: %w", err)
	}
	loc := hdr.Get("Location")
	if loc == "" {
		return nil, errors.New("upnp: ssdp reply without LOCATION")
	}
	u, err := url.Parse(loc)
	if err != nil {
		return nil, fmt.Errorf("upnp: ssdp LOCATION: %w", err)
	}
	return u, nil
}

// discover sends M-SEARCH to the gateway and returns the first valid
// LOCATION that points at it.
func (p *upnpProto) discover(ctx context.Context) (*url.URL, error) {
	var laddr *net.UDPAddr
	if p.self.IsValid() {
		laddr = &net.UDPAddr{IP: p.self.AsSlice()}
	}
	conn, err := net.ListenUDP("udp4", laddr)
	if err != nil {
		return nil, fmt.Errorf("upnp: listen: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, ssdpMaxReply+1)
	var lastErr error
	for try := 0; try < 2; try++ {
		if _, err := conn.WriteToUDPAddrPort([]byte(ssdpSearch), p.ssdp); err != nil {
			return nil, fmt.Errorf("upnp: send search: %w", err)
		}
		dl := time.Now().Add(ssdpRetransmit)
		if try == 1 {
			dl = time.Now().Add(requestTimeout)
		}
		if cdl, ok := ctx.Deadline(); ok && cdl.Before(dl) {
			dl = cdl
		}
		conn.SetReadDeadline(dl)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if from.Addr().Unmap() != p.gw {
				continue
			}
			u, err := parseSSDPReply(buf[:n])
			if err == nil {
				err = hostIsGateway(u, p.gw)
			}
			if err != nil {
				lastErr = err
				continue
			}
			return u, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	if lastErr != nil {
		return nil, lastErr
	}
	return nil, fmt.Errorf("upnp: no ssdp answer from %v", p.ssdp)
}

// parseDescription parses a root device description fetched from loc and
// returns an IGD client for its first WAN connection service, whose control
// URL must point at gw. The SOAP client uses httpc.
func parseDescription(body []byte, loc *url.URL, gw netip.Addr, httpc *http.Client) (igdClient, error) {
	root := new(goupnp.RootDevice)
	dec := xml.NewDecoder(bytes.NewReader(body))
	dec.DefaultSpace = goupnp.DeviceXMLNamespace
	if err := dec.Decode(root); err != nil {
		return nil, fmt.Errorf("upnp: description: %w", err)
	}
	base := loc
	if root.URLBaseStr != "" {
		u, err := url.Parse(root.URLBaseStr)
		if err != nil {
			return nil, fmt.Errorf("upnp: URLBase: %w", err)
		}
		base = u
	}
	if err := hostIsGateway(base, gw); err != nil {
		return nil, err
	}
	root.SetURLBase(base)
	for _, urn := range []string{internetgateway2.URN_WANIPConnection_2, internetgateway2.URN_WANIPConnection_1, internetgateway2.URN_WANPPPConnection_1} {
		scs, err := goupnp.NewServiceClientsFromRootDevice(root, loc, urn)
		if err != nil {
			continue
		}
		for _, sc := range scs {
			if err := hostIsGateway(&sc.SOAPClient.EndpointURL, gw); err != nil {
				continue
			}
			sc.SOAPClient.HTTPClient = *httpc
			switch urn {
			case internetgateway2.URN_WANIPConnection_2:
				return &internetgateway2.WANIPConnection2{ServiceClient: sc}, nil
			case internetgateway2.URN_WANIPConnection_1:
				return &internetgateway2.WANIPConnection1{ServiceClient: sc}, nil
			default:
				return &internetgateway2.WANPPPConnection1{ServiceClient: sc}, nil
			}
		}
	}
	return nil, errors.New("upnp: no WAN connection service on the gateway")
}

// describe fetches and parses the description at loc.
func (p *upnpProto) describe(ctx context.Context, loc *url.URL) (igdClient, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("upnp: %w", err)
	}
	resp, err := p.httpc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("upnp: description: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("upnp: description: HTTP %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("upnp: description: %w", err)
	}
	return parseDescription(body, loc, p.gw, p.httpc)
}

// probe discovers the gateway's IGD and keeps its client.
func (p *upnpProto) probe(ctx context.Context) (status, error) {
	loc, err := p.discover(ctx)
	if err != nil {
		return status{}, err
	}
	igd, err := p.describe(ctx, loc)
	if err != nil {
		return status{}, err
	}
	p.igd = igd
	return status{}, nil
}

// upnpCode returns the UPnP error code in a SOAP fault, or 0.
func upnpCode(err error) int {
	var fault *soap.SOAPFaultError
	if !errors.As(err, &fault) {
		return 0
	}
	return fault.Detail.UPnPError.Errorcode
}

func (p *upnpProto) mapPort(ctx context.Context, prev netip.AddrPort) (mapping, error) {
	if p.igd == nil {
		// A renewal after a restart may need the new control URL.
		if _, err := p.probe(ctx); err != nil {
			return mapping{}, err
		}
	}
	// The external address first, so a mapping is never made that could
	// not be used (and would be left behind).
	ip, err := p.externalIP(ctx)
	if err != nil {
		return mapping{}, err
	}
	ext := p.port
	if prev.IsValid() {
		ext = prev.Port()
	}
	lease := uint32(p.lifetime / time.Second)
	for try := 0; try < upnpConflictTries; try++ {
		err = p.igd.AddPortMappingCtx(ctx, "", ext, "UDP", p.port, p.self.String(), true, upnpDescription, lease)
		switch code := upnpCode(err); {
		case err == nil:
		case code == upnpErrOnlyPermanent && lease != 0:
			lease = 0 // the router only does permanent leases; renewals still refresh it
			try--
			continue
		case code == upnpErrConflict || code == upnpErrConflictWithOther || code == upnpErrExternalPortWild || code == upnpErrSamePortRequired:
			ext = uint16(1024 + rand.IntN(65535-1024))
			continue
		default:
			p.igd = nil // rediscover next time: the control URL may have moved
			return mapping{}, fmt.Errorf("upnp map: %w", err)
		}
		break
	}
	if err != nil {
		return mapping{}, fmt.Errorf("upnp map: %w", err)
	}
	return mapping{external: netip.AddrPortFrom(ip, ext), lifetime: p.lifetime}, nil
}

// externalIP asks the gateway for its external address. A gateway may
// answer with nothing usable: miniupnpd, for one, answers "" when its WAN
// address is private or reserved (CGNAT, or the lab's 198.18.0.0/15). Then
// the node's public address from its other probes (Config.PublicAddr) is
// used if it has one; the mapping's port is the gateway's either way.
func (p *upnpProto) externalIP(ctx context.Context) (netip.Addr, error) {
	ipStr, err := p.igd.GetExternalIPAddressCtx(ctx)
	if err != nil {
		p.igd = nil
		return netip.Addr{}, fmt.Errorf("upnp external address: %w", err)
	}
	ip, err := netip.ParseAddr(strings.TrimSpace(ipStr))
	if err == nil && ip.Is4() && !ip.IsUnspecified() {
		return ip, nil
	}
	if p.publicAddr != nil {
		if pub := p.publicAddr(); pub.Is4() && !pub.IsUnspecified() {
			return pub, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("upnp: gateway has no usable external address (%q) and the node knows no public address", ipStr)
}

// check asks whether the gateway still has our mapping.
func (p *upnpProto) check(ctx context.Context, m mapping) (status, error) {
	if p.igd == nil {
		return status{}, errors.New("upnp: no gateway client")
	}
	intPort, client, enabled, _, _, err := p.igd.GetSpecificPortMappingEntryCtx(ctx, "", m.external.Port(), "UDP")
	if err != nil {
		p.igd = nil
		if upnpCode(err) == upnpErrNoSuchEntry {
			return status{}, errors.New("upnp: the gateway lost the mapping")
		}
		return status{}, fmt.Errorf("upnp check: %w", err)
	}
	if intPort != p.port || !enabled || strings.TrimSpace(client) != p.self.String() {
		return status{}, fmt.Errorf("upnp: the mapping now points at %s:%d", client, intPort)
	}
	return status{}, nil
}

func (p *upnpProto) unmap(ctx context.Context, m mapping) error {
	if p.igd == nil {
		return errors.New("upnp: no gateway client")
	}
	if err := p.igd.DeletePortMappingCtx(ctx, "", m.external.Port(), "UDP"); err != nil {
		return fmt.Errorf("upnp delete: %w", err)
	}
	return nil
}

// realProtos returns the protocols to try, most preferred first.
func realProtos(gw, self netip.Addr, cfg *Config) []proto {
	var ps []proto
	for _, k := range kinds {
		if len(cfg.Protocols) > 0 && !containsKind(cfg.Protocols, k) {
			continue
		}
		switch k {
		case KindNATPMP:
			ps = append(ps, newNATPMP(gw, self, cfg))
		case KindPCP:
			ps = append(ps, newPCP(gw, self, cfg))
		case KindUPnP:
			ps = append(ps, newUPnP(gw, self, cfg))
		}
	}
	return ps
}

func containsKind(ks []Kind, k Kind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}
