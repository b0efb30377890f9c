package portmap

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/huin/goupnp/dcps/internetgateway2"
	natpmp "github.com/jackpal/go-nat-pmp"
)

// The seeds in testdata/miniupnpd are real answers captured from the lab's
// miniupnpd 2.3.9 (NAT-PMP, PCP, SSDP, the root description and SOAP).

func testdata(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "miniupnpd", name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

var (
	seedGW  = netip.MustParseAddr("198.19.1.1")
	seedLoc = &url.URL{Scheme: "http", Host: "198.19.1.1:43507", Path: "/rootDesc.xml"}
)

func TestParsePCPResponse(t *testing.T) {
	r, err := parsePCPResponse(testdata(t, "pcp-map.bin"))
	if err != nil {
		t.Fatal(err)
	}
	want := pcpResponse{opcode: pcpOpMap, lifetime: 7200, epoch: 2, nonce: [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
		protocol: 17, intPort: 41660, extPort: 41660, extIP: netip.MustParseAddr("198.18.1.2")}
	if r != want {
		t.Fatalf("MAP response\n got %+v\nwant %+v", r, want)
	}
	r, err = parsePCPResponse(testdata(t, "pcp-announce.bin"))
	if err != nil || r.opcode != pcpOpAnnounce || r.epoch != 2 || r.result != 0 {
		t.Fatalf("ANNOUNCE response %+v, %v", r, err)
	}
	for name, b := range map[string][]byte{
		"empty":             nil,
		"nat-pmp answer":    testdata(t, "pmp-map.bin"),
		"oversized":         append(testdata(t, "pcp-map.bin"), make([]byte, 1100)...),
		"not multiple of 4": append(testdata(t, "pcp-announce.bin"), 0),
		"request":           appendPCPRequest(nil, pcpOpAnnounce, 0, seedGW),
		"MAP without body":  func() []byte { b := testdata(t, "pcp-announce.bin"); b[1] = 0x81; return b }(),
		"option overruns":   append(testdata(t, "pcp-announce.bin"), 1, 0, 0, 200),
	} {
		if _, err := parsePCPResponse(b); !errors.Is(err, errPCPMalformed) {
			t.Errorf("%s: err %v, want errPCPMalformed", name, err)
		}
	}
	// A well-formed option is skipped.
	if _, err := parsePCPResponse(append(testdata(t, "pcp-announce.bin"), 1, 0, 0, 4, 9, 9, 9, 9)); err != nil {
		t.Fatalf("option: %v", err)
	}
}

func TestPCPRequestEncoding(t *testing.T) {
	var nonce [12]byte
	copy(nonce[:], "0123456789ab")
	b := appendPCPMap(nil, nonce, 7200, netip.MustParseAddr("198.19.1.2"), 41641, 41641, netip.Addr{})
	if len(b) != pcpHeaderLen+pcpMapBodyLen {
		t.Fatalf("MAP request of %d bytes", len(b))
	}
	want := []byte{2, 1, 0, 0, 0, 0, 0x1c, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 19, 1, 2}
	if !bytes.Equal(b[:24], want) {
		t.Fatalf("header % x, want % x", b[:24], want)
	}
	if !bytes.Equal(b[24:36], nonce[:]) || b[36] != 17 || b[40] != 0xa2 || b[41] != 0xa9 {
		t.Fatalf("body % x", b[24:])
	}
	if !bytes.Equal(b[44:60], netip.IPv4Unspecified().AsSlice()) && !bytes.Equal(b[54:60], []byte{0xff, 0xff, 0, 0, 0, 0}) {
		t.Fatalf("suggested external address % x, want ::ffff:0.0.0.0", b[44:60])
	}
}

func FuzzPCPResponse(f *testing.F) {
	f.Add(testdata(f, "pcp-announce.bin"))
	f.Add(testdata(f, "pcp-map.bin"))
	f.Add(testdata(f, "pmp-map.bin"))
	f.Add(append(testdata(f, "pcp-map.bin"), make([]byte, 1200)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		isAnnouncement(b) // the multicast listener's parser
		r, err := parsePCPResponse(b)
		if err != nil {
			return
		}
		if len(b) < pcpHeaderLen || len(b) > pcpMaxLen || len(b)%4 != 0 || b[0] != pcpVersion {
			t.Fatalf("accepted a malformed message of %d bytes", len(b))
		}
		if r.opcode == pcpOpMap && len(b) < pcpHeaderLen+pcpMapBodyLen {
			t.Fatal("accepted a MAP without its body")
		}
	})
}

// replier is a fake gateway on a loopback address: it answers every
// datagram on port with the current payload, sent first in full and then,
// for PCP, after a garbage datagram and an oversized one.
type replier struct {
	addr netip.Addr
	conn *net.UDPConn
	mu   sync.Mutex
	b    []byte
	junk bool
}

func newReplier(tb testing.TB, port int) *replier {
	tb.Helper()
	for try := 0; try < 20; try++ {
		var r [2]byte
		rand.Read(r[:])
		addr := netip.AddrFrom4([4]byte{127, 0, r[0], r[1]%250 + 2})
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, uint16(port))))
		if err != nil {
			continue
		}
		rp := &replier{addr: addr, conn: c}
		tb.Cleanup(func() { c.Close() })
		go rp.serve()
		return rp
	}
	tb.Fatal("no free loopback address for the fake gateway")
	return nil
}

func (rp *replier) set(b []byte, junk bool) {
	rp.mu.Lock()
	rp.b, rp.junk = append([]byte(nil), b...), junk
	rp.mu.Unlock()
}

func (rp *replier) serve() {
	buf := make([]byte, 2048)
	for {
		_, from, err := rp.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		rp.mu.Lock()
		b, junk := rp.b, rp.junk
		rp.mu.Unlock()
		if junk {
			rp.conn.WriteToUDPAddrPort([]byte("garbage"), from)
			rp.conn.WriteToUDPAddrPort(bytes.Repeat([]byte{2}, 4000), from)
		}
		rp.conn.WriteToUDPAddrPort(b, from)
	}
}

func FuzzNATPMPReply(f *testing.F) {
	f.Add(testdata(f, "pmp-ext.bin"))
	f.Add(testdata(f, "pmp-map.bin"))
	f.Add(testdata(f, "pcp-map.bin"))
	f.Add(bytes.Repeat([]byte{0x00, 0x81}, 1000))
	rp := newReplier(f, 5351) // go-nat-pmp always talks to port 5351
	f.Fuzz(func(t *testing.T, b []byte) {
		rp.set(b, false)
		p := &natpmpProto{gw: rp.addr, port: 41641, lifetime: DefaultLifetime,
			newClient: func(time.Duration) *natpmp.Client {
				return natpmp.NewClientWithTimeout(rp.addr.AsSlice(), 200*time.Millisecond)
			}}
		ctx := context.Background()
		if _, err := p.probe(ctx); err == nil && !p.ext.Is4() {
			t.Fatalf("probe accepted external address %v", p.ext)
		}
		p.ext = netip.MustParseAddr("198.18.1.2")
		if m, err := p.mapPort(ctx, netip.AddrPort{}); err == nil {
			if m.external.Port() == 0 || m.lifetime <= 0 || !m.st.hasEpoch {
				t.Fatalf("accepted an unusable mapping %+v", m)
			}
		}
	})
}

// TestPCPCallSurvivesGarbage: a gateway that sends garbage and a 4000-byte
// datagram before its real answer is still understood.
func TestPCPCallSurvivesGarbage(t *testing.T) {
	rp := newReplier(t, 0)
	la := rp.conn.LocalAddr().(*net.UDPAddr).AddrPort()
	b := testdata(t, "pcp-map.bin")
	p := &pcpProto{gw: rp.addr, server: la, port: 41660, lifetime: DefaultLifetime}
	copy(p.nonce[:], b[24:36])
	rp.set(b, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := p.mapPort(ctx, netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	if m.external != netip.MustParseAddrPort("198.18.1.2:41660") || m.lifetime != 7200*time.Second {
		t.Fatalf("mapping %+v", m)
	}
	// An answer for another nonce is not ours: the call times out.
	p.nonce[0]++
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := p.mapPort(ctx, netip.AddrPort{}); err == nil {
		t.Fatal("accepted an answer for another nonce")
	}
}

func FuzzSSDPReply(f *testing.F) {
	f.Add(testdata(f, "ssdp.txt"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nLOCATION: http://8.8.8.8/x\r\n\r\n"))
	f.Add(append([]byte("HTTP/1.1 200 OK\r\nLOCATION: "), bytes.Repeat([]byte("a"), 3000)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := parseSSDPReply(b)
		if err != nil {
			return
		}
		if len(b) > ssdpMaxReply || u == nil {
			t.Fatalf("accepted %d bytes as %v", len(b), u)
		}
		if hostIsGateway(u, seedGW) == nil {
			h, _ := netip.ParseAddr(u.Hostname())
			if h.Unmap() != seedGW || u.Scheme != "http" {
				t.Fatalf("%v passed as the gateway", u)
			}
		}
	})
}

func TestParseSSDPReply(t *testing.T) {
	u, err := parseSSDPReply(testdata(t, "ssdp.txt"))
	if err != nil || u.String() != "http://198.19.1.1:43507/rootDesc.xml" {
		t.Fatalf("%v, %v", u, err)
	}
	if err := hostIsGateway(u, seedGW); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"http://8.8.8.8/x", "https://198.19.1.1/x", "http://gateway.local/x", "file:///etc/passwd"} {
		u, _ := url.Parse(bad)
		if hostIsGateway(u, seedGW) == nil {
			t.Errorf("%s accepted as the gateway", bad)
		}
	}
}

// endpoint returns the control URL of an IGD client.
func endpoint(igd igdClient) url.URL {
	switch c := igd.(type) {
	case *internetgateway2.WANIPConnection2:
		return c.SOAPClient.EndpointURL
	case *internetgateway2.WANIPConnection1:
		return c.SOAPClient.EndpointURL
	case *internetgateway2.WANPPPConnection1:
		return c.SOAPClient.EndpointURL
	}
	return url.URL{}
}

func TestParseDescription(t *testing.T) {
	igd, err := parseDescription(testdata(t, "rootDesc.xml"), seedLoc, seedGW, &http.Client{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := igd.(*internetgateway2.WANIPConnection2); !ok {
		t.Fatalf("client %T, want WANIPConnection2", igd)
	}
	if u := endpoint(igd); u.String() != "http://198.19.1.1:43507/ctl/IPConn" {
		t.Fatalf("control URL %v", u.String())
	}
	// A description pointing elsewhere is refused.
	evil := bytes.ReplaceAll(testdata(t, "rootDesc.xml"), []byte("<controlURL>/ctl/IPConn"), []byte("<controlURL>http://8.8.8.8/ctl/IPConn"))
	if _, err := parseDescription(evil, seedLoc, seedGW, &http.Client{}); err == nil {
		t.Fatal("accepted a control URL on another host")
	}
}

func FuzzUPnPDescription(f *testing.F) {
	f.Add(testdata(f, "rootDesc.xml"))
	f.Add([]byte(`<root xmlns="urn:schemas-upnp-org:device-1-0"><URLBase>http://8.8.8.8/</URLBase></root>`))
	f.Fuzz(func(t *testing.T, b []byte) {
		igd, err := parseDescription(b, seedLoc, seedGW, &http.Client{})
		if err != nil {
			return
		}
		u := endpoint(igd)
		if err := hostIsGateway(&u, seedGW); err != nil {
			t.Fatalf("accepted control URL %v: %v", u.String(), err)
		}
	})
}

// fakeRT answers every request with status and body, without a network.
type fakeRT struct {
	status int
	body   func(action string) []byte
}

func (rt fakeRT) RoundTrip(req *http.Request) (*http.Response, error) {
	var action string
	for k, v := range req.Header { // goupnp's "SOAPACTION" key is not canonical
		if strings.EqualFold(k, "SOAPAction") {
			action = strings.Join(v, "")
		}
	}
	b := rt.body(action)
	return &http.Response{StatusCode: rt.status, Status: http.StatusText(rt.status), Body: io.NopCloser(bytes.NewReader(b)),
		ContentLength: int64(len(b)), Header: http.Header{}, Request: req}, nil
}

// soapProto returns a UPnP client on the captured description whose HTTP
// goes to rt through the real size and host limits.
func soapProto(t testing.TB, rt http.RoundTripper) *upnpProto {
	httpc := &http.Client{Transport: &limitTransport{gw: seedGW, rt: rt}}
	igd, err := parseDescription(testdata(t, "rootDesc.xml"), seedLoc, seedGW, httpc)
	if err != nil {
		t.Fatal(err)
	}
	return &upnpProto{gw: seedGW, self: netip.MustParseAddr("198.19.1.2"), port: 41641, lifetime: DefaultLifetime, httpc: httpc, igd: igd}
}

func TestUPnPSOAP(t *testing.T) {
	ext := []byte(strings.Replace(string(testdata(t, "soap-getexternalip.xml")), "<NewExternalIPAddress></NewExternalIPAddress>", "<NewExternalIPAddress>198.18.1.2</NewExternalIPAddress>", 1))
	answers := func(action string) []byte {
		switch {
		case strings.Contains(action, "GetExternalIPAddress"):
			return ext
		case strings.Contains(action, "AddPortMapping"):
			return testdata(t, "soap-addportmapping.xml")
		case strings.Contains(action, "GetSpecificPortMappingEntry"):
			return testdata(t, "soap-getspecific.xml")
		}
		return nil
	}
	p := soapProto(t, fakeRT{status: 200, body: answers})
	ctx := context.Background()
	m, err := p.mapPort(ctx, netip.AddrPort{})
	if err != nil {
		t.Fatal(err)
	}
	if m.external != netip.MustParseAddrPort("198.18.1.2:41641") {
		t.Fatalf("mapping %+v", m)
	}
	if _, err := p.check(ctx, m); err != nil {
		t.Fatalf("check: %v", err)
	}
	// miniupnpd's answer for a reserved WAN address is empty: without a
	// public address from elsewhere there is no usable mapping...
	p = soapProto(t, fakeRT{status: 200, body: func(string) []byte { return testdata(t, "soap-getexternalip.xml") }})
	if _, err := p.mapPort(ctx, netip.AddrPort{}); err == nil {
		t.Fatal("mapped without an external address")
	}
	// ...and with one, the mapping uses it.
	p = soapProto(t, fakeRT{status: 200, body: func(a string) []byte {
		if strings.Contains(a, "GetExternalIPAddress") {
			return testdata(t, "soap-getexternalip.xml")
		}
		return answers(a)
	}})
	p.publicAddr = func() netip.Addr { return netip.MustParseAddr("198.18.1.2") }
	if m, err := p.mapPort(ctx, netip.AddrPort{}); err != nil || m.external.Addr() != p.publicAddr() {
		t.Fatalf("with a public address: %+v, %v", m, err)
	}
	// A lost mapping is a failed check.
	p = soapProto(t, fakeRT{status: 500, body: func(string) []byte { return testdata(t, "soap-getspecific-fault.xml") }})
	if _, err := p.check(ctx, m); err == nil || !strings.Contains(err.Error(), "lost") {
		t.Fatalf("check of a lost mapping: %v", err)
	}
	// An oversized body is cut off.
	huge := append([]byte(`<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><u:R>`), bytes.Repeat([]byte("<a>1</a>"), upnpMaxBody)...)
	p = soapProto(t, fakeRT{status: 200, body: func(string) []byte { return huge }})
	if _, err := p.mapPort(ctx, netip.AddrPort{}); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("oversized answer: %v", err)
	}
}

func FuzzUPnPSOAP(f *testing.F) {
	for _, n := range []string{"soap-getexternalip.xml", "soap-addportmapping.xml", "soap-getspecific.xml", "soap-getspecific-fault.xml"} {
		f.Add(testdata(f, n), uint16(200))
	}
	f.Add(bytes.Repeat([]byte("<s:Envelope>"), 10000), uint16(200))
	f.Fuzz(func(t *testing.T, b []byte, status uint16) {
		code := int(status)%500 + 100
		p := soapProto(t, fakeRT{status: code, body: func(string) []byte { return b }})
		ctx := context.Background()
		m, err := p.mapPort(ctx, netip.AddrPort{})
		if err == nil && (!m.external.Addr().Is4() || m.external.Port() == 0) {
			t.Fatalf("accepted an unusable mapping %+v", m)
		}
		p = soapProto(t, fakeRT{status: code, body: func(string) []byte { return b }})
		p.check(ctx, mapping{external: netip.MustParseAddrPort("198.18.1.2:41641")})
		p.unmap(ctx, mapping{external: netip.MustParseAddrPort("198.18.1.2:41641")})
	})
}
