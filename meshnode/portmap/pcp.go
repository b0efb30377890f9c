package portmap

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// PCP (RFC 6887), written here: the wire format is small. Every message is
// a 24-byte header, an opcode-specific body and options, at most 1100 bytes
// and a multiple of 4.
//
// Request header:                      Response header:
//
//	0  version (2)                       0  version (2)
//	1  R=0 | opcode                      1  R=1 | opcode
//	2  reserved (2)                      2  reserved
//	                                     3  result code
//	4  requested lifetime (s)            4  lifetime (s)
//	8  client IP (16, v4-mapped)         8  epoch time (s)
//	                                     12 reserved (12)
//
// MAP body (36 bytes), the same in both directions:
//
//	0  mapping nonce (12)
//	12 protocol (17 = UDP)
//	13 reserved (3)
//	16 internal port
//	18 suggested / assigned external port
//	20 suggested / assigned external IP (16, v4-mapped)
//
// ANNOUNCE (opcode 0) has no body; a request for it is how the client asks
// "do you speak PCP, and what is your epoch?".
const (
	pcpVersion     = 2
	pcpPort        = 5351
	pcpHeaderLen   = 24
	pcpMapBodyLen  = 36
	pcpMaxLen      = 1100 // RFC 6887 §7: larger messages are malformed
	pcpOpAnnounce  = 0
	pcpOpMap       = 1
	pcpResponseBit = 0x80
	pcpProtoUDP    = 17

	pcpResultSuccess       = 0
	pcpResultUnsuppVersion = 1
)

// pcpResultNames gives RFC 6887 §7.4's result codes their names for errors.
var pcpResultNames = [...]string{
	"SUCCESS", "UNSUPP_VERSION", "NOT_AUTHORIZED", "MALFORMED_REQUEST", "UNSUPP_OPCODE",
	"UNSUPP_OPTION", "MALFORMED_OPTION", "NETWORK_FAILURE", "NO_RESOURCES", "UNSUPP_PROTOCOL",
	"USER_EX_QUOTA", "CANNOT_PROVIDE_EXTERNAL", "ADDRESS_MISMATCH", "EXCESSIVE_REMOTE_PEERS",
}

// pcpResultError is a PCP response whose result code is not SUCCESS.
type pcpResultError uint8

func (e pcpResultError) Error() string {
	if int(e) < len(pcpResultNames) {
		return "pcp: " + pcpResultNames[e]
	}
	return fmt.Sprintf("pcp: result code %d", uint8(e))
}

// pcpResponse is a parsed PCP response.
type pcpResponse struct {
	opcode   uint8
	result   uint8
	lifetime uint32
	epoch    uint32
	// MAP only:
	nonce    [12]byte
	protocol uint8
	intPort  uint16
	extPort  uint16
	extIP    netip.Addr // unmapped to IPv4 when it is v4-mapped
}

// errPCPMalformed wraps every reason a response is refused.
var errPCPMalformed = errors.New("pcp: malformed response")

// parsePCPResponse parses a PCP response. It never reads past b and refuses
// anything that is not a well-formed version-2 response: too short or too
// long, not a multiple of 4, the R bit clear, a MAP without its body, or
// options that overrun the message. Unknown options are skipped.
func parsePCPResponse(b []byte) (pcpResponse, error) {
	var r pcpResponse
	if len(b) < pcpHeaderLen || len(b) > pcpMaxLen || len(b)%4 != 0 {
		return r, fmt.Errorf("%w: length %d", errPCPMalformed, len(b))
	}
	if b[0] != pcpVersion {
		return r, fmt.Errorf("%w: version %d", errPCPMalformed, b[0])
	}
	if b[1]&pcpResponseBit == 0 {
		return r, fmt.Errorf("%w: not a response", errPCPMalformed)
	}
	r.opcode = b[1] &^ pcpResponseBit
	r.result = b[3]
	r.lifetime = binary.BigEndian.Uint32(b[4:8])
	r.epoch = binary.BigEndian.Uint32(b[8:12])
	rest := b[pcpHeaderLen:]
	if r.opcode == pcpOpMap {
		if len(rest) < pcpMapBodyLen {
			return r, fmt.Errorf("%w: MAP body of %d bytes", errPCPMalformed, len(rest))
		}
		copy(r.nonce[:], rest[0:12])
		r.protocol = rest[12]
		r.intPort = binary.BigEndian.Uint16(rest[16:18])
		r.extPort = binary.BigEndian.Uint16(rest[18:20])
		r.extIP = netip.AddrFrom16([16]byte(rest[20:36])).Unmap()
		rest = rest[pcpMapBodyLen:]
	}
	// Options: code (1), reserved (1), length (2), data padded to 4.
	for len(rest) > 0 {
		if len(rest) < 4 {
			return r, fmt.Errorf("%w: truncated option", errPCPMalformed)
		}
		n := int(binary.BigEndian.Uint16(rest[2:4]))
		padded := (n + 3) &^ 3
		if 4+padded > len(rest) {
			return r, fmt.Errorf("%w: option of %d bytes overruns the message", errPCPMalformed, n)
		}
		rest = rest[4+padded:]
	}
	return r, nil
}

// appendPCPRequest appends a request header for opcode from client.
func appendPCPRequest(b []byte, opcode uint8, lifetime uint32, client netip.Addr) []byte {
	b = append(b, pcpVersion, opcode, 0, 0)
	b = binary.BigEndian.AppendUint32(b, lifetime)
	a := client.As16() // IPv4 comes out v4-mapped, as PCP wants
	return append(b, a[:]...)
}

// appendPCPMap appends a MAP request for UDP.
func appendPCPMap(b []byte, nonce [12]byte, lifetime uint32, client netip.Addr, intPort, extPort uint16, extIP netip.Addr) []byte {
	b = appendPCPRequest(b, pcpOpMap, lifetime, client)
	b = append(b, nonce[:]...)
	b = append(b, pcpProtoUDP, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, intPort)
	b = binary.BigEndian.AppendUint16(b, extPort)
	if !extIP.IsValid() {
		extIP = netip.IPv4Unspecified() // "no preference": ::ffff:0.0.0.0
	}
	a := extIP.As16()
	return append(b, a[:]...)
}

// pcpProto speaks PCP to one gateway.
type pcpProto struct {
	gw, self netip.Addr
	server   netip.AddrPort // gw:5351, or a test's
	port     uint16
	lifetime time.Duration
	nonce    [12]byte // identifies our mapping across renewals and delete
}

func newPCP(gw, self netip.Addr, cfg *Config) *pcpProto {
	p := &pcpProto{gw: gw, self: self, server: netip.AddrPortFrom(gw, pcpPort), port: cfg.Port, lifetime: cfg.Lifetime}
	rand.Read(p.nonce[:])
	return p
}

func (p *pcpProto) kind() Kind { return KindPCP }

// pcpRetransmit is the first retransmission delay; it doubles after each
// one. RFC 6887 §8.1.1 starts at 3 s, which is for the Internet; a gateway
// on the LAN answers in milliseconds and the whole call is bounded by ctx.
const pcpRetransmit = 250 * time.Millisecond

// call sends req to the server until an answer for want arrives (matching
// opcode and, for MAP, nonce) or ctx ends. Answers from anyone but the
// server, malformed answers and answers to other requests are ignored.
func (p *pcpProto) call(ctx context.Context, req []byte, want func(pcpResponse) bool) (pcpResponse, error) {
	var laddr *net.UDPAddr
	if p.self.IsValid() {
		laddr = &net.UDPAddr{IP: p.self.AsSlice()}
	}
	conn, err := net.ListenUDP("udp4", laddr)
	if err != nil {
		return pcpResponse{}, fmt.Errorf("pcp: listen: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, pcpMaxLen+1) // one byte more shows an oversized answer
	delay := pcpRetransmit
	var lastErr error
	for {
		if _, err := conn.WriteToUDPAddrPort(req, p.server); err != nil {
			return pcpResponse{}, fmt.Errorf("pcp: send: %w", err)
		}
		dl := time.Now().Add(delay)
		if cdl, ok := ctx.Deadline(); ok && cdl.Before(dl) {
			dl = cdl
		}
		conn.SetReadDeadline(dl)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if ctx.Err() != nil {
					if lastErr != nil {
						return pcpResponse{}, fmt.Errorf("%w (last answer: %v)", ctx.Err(), lastErr)
					}
					return pcpResponse{}, fmt.Errorf("pcp: no answer from %v: %w", p.server, ctx.Err())
				}
				break // retransmit
			}
			if from.Addr().Unmap() != p.server.Addr() || from.Port() != p.server.Port() {
				continue
			}
			r, err := parsePCPResponse(buf[:n])
			if err != nil {
				lastErr = err
				continue
			}
			if r.result == pcpResultUnsuppVersion || (want(r) && r.result != pcpResultSuccess) {
				return r, pcpResultError(r.result)
			}
			if want(r) {
				return r, nil
			}
		}
		delay *= 2
	}
}

// probe sends an ANNOUNCE request; a PCP server answers with its epoch.
func (p *pcpProto) probe(ctx context.Context) (status, error) {
	req := appendPCPRequest(make([]byte, 0, pcpHeaderLen), pcpOpAnnounce, 0, p.self)
	r, err := p.call(ctx, req, func(r pcpResponse) bool { return r.opcode == pcpOpAnnounce })
	if err != nil {
		return status{}, err
	}
	return status{epoch: r.epoch, hasEpoch: true}, nil
}

// mapPort sends MAP with our nonce, suggesting prev's address.
func (p *pcpProto) mapPort(ctx context.Context, prev netip.AddrPort) (mapping, error) {
	want := p.port
	var wantIP netip.Addr
	if prev.IsValid() {
		want, wantIP = prev.Port(), prev.Addr()
	}
	r, err := p.mapRequest(ctx, uint32(p.lifetime/time.Second), want, wantIP)
	if err != nil {
		return mapping{}, err
	}
	if r.extPort == 0 || r.lifetime == 0 || !r.extIP.Is4() || r.extIP.IsUnspecified() {
		return mapping{}, fmt.Errorf("pcp: gateway granted no usable mapping (%v:%d for %d s)", r.extIP, r.extPort, r.lifetime)
	}
	return mapping{
		external: netip.AddrPortFrom(r.extIP, r.extPort),
		lifetime: time.Duration(r.lifetime) * time.Second,
		st:       status{epoch: r.epoch, hasEpoch: true},
	}, nil
}

func (p *pcpProto) mapRequest(ctx context.Context, lifetime uint32, extPort uint16, extIP netip.Addr) (pcpResponse, error) {
	req := appendPCPMap(make([]byte, 0, pcpHeaderLen+pcpMapBodyLen), p.nonce, lifetime, p.self, p.port, extPort, extIP)
	return p.call(ctx, req, func(r pcpResponse) bool {
		return r.opcode == pcpOpMap && r.nonce == p.nonce && r.protocol == pcpProtoUDP && r.intPort == p.port
	})
}

// check sends ANNOUNCE for the epoch.
func (p *pcpProto) check(ctx context.Context, m mapping) (status, error) { return p.probe(ctx) }

// unmap sends MAP with lifetime 0 (RFC 6887 §15).
func (p *pcpProto) unmap(ctx context.Context, m mapping) error {
	if _, err := p.mapRequest(ctx, 0, 0, netip.Addr{}); err != nil {
		return fmt.Errorf("pcp delete: %w", err)
	}
	return nil
}
