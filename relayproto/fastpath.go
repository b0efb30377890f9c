package relayproto

import (
	"encoding/binary"
	"fmt"

	"github.com/wiremesh/wiremesh/key"
)

// UDP fast path.
//
// WireGuard packets are already end-to-end encrypted, so QUIC's crypto is
// paid twice on a relay. A client may ask for a fast path: plain UDP
// between its own socket and the relay's fast-path port, keyed by a secret
// session id handed out over the authenticated QUIC (or TCP) session, as
// TURN does with channels. QUIC stays the control channel and the fallback.
//
//  1. client → relay, stream: FastPathRequest (empty).
//  2. relay → client, stream: FastPathOffer port(2) session(8).
//  3. client → relay, UDP:    Bind: kind(1)=FastBind session(8), repeated
//     until answered; the relay records the source address.
//  4. relay → that address, UDP: Challenge: kind(1)=FastChallenge
//     session(8) challenge(8). Only a client that receives at the address
//     can know the challenge (return-address validation: the relay never
//     sends data to an address that did not prove it wants it).
//  5. client → relay, stream: FastPathConfirm challenge(8).
//  6. relay → client, stream: FastPathReady (empty). From now on
//     packets to and from this client may use UDP:
//     client → relay: kind(1)=FastSend session(8) dst nodeKey(32) payload
//     relay → client: kind(1)=FastRecv src nodeKey(32) payload
//
// Every fast-path datagram's first byte has its two top bits clear, so it
// can never be mistaken for QUIC; the kinds also differ from STUN's
// message-type first byte (0x00 or 0x01).
const (
	FastBind      byte = 0x21
	FastChallenge byte = 0x22
	FastSend      byte = 0x23
	FastRecv      byte = 0x24

	SessionLen   = 8
	ChallengeLen = 8
	// FastSendOverhead is what a FastSend datagram adds to a packet.
	FastSendOverhead = 1 + SessionLen + KeyLen
	// FastRecvOverhead is what a FastRecv datagram adds to a packet.
	FastRecvOverhead = 1 + KeyLen
	// MaxFastDatagram is the largest fast-path datagram a relay reads: it
	// reads in batches into buffers of this size. A full-size WireGuard
	// packet on a 1500-byte path is well under it; larger packets go over
	// QUIC or TCP instead (relayclient does that by itself).
	MaxFastDatagram = 2048
)

// Fast-path control frame types (on the stream).
const (
	FrameFastPathRequest FrameType = 0x40
	FrameFastPathOffer   FrameType = 0x41
	FrameFastPathConfirm FrameType = 0x42
	FrameFastPathReady   FrameType = 0x43
)

func init() {
	frameNames[FrameFastPathRequest] = "fastpath_request"
	frameNames[FrameFastPathOffer] = "fastpath_offer"
	frameNames[FrameFastPathConfirm] = "fastpath_confirm"
	frameNames[FrameFastPathReady] = "fastpath_ready"
}

// FastPathOffer is the relay's answer to a fast-path request.
type FastPathOffer struct {
	Port    uint16
	Session [SessionLen]byte
}

// Append appends the body.
func (o *FastPathOffer) Append(b []byte) []byte {
	return append(binary.BigEndian.AppendUint16(b, o.Port), o.Session[:]...)
}

// ParseFastPathOffer decodes a FastPathOffer body.
func ParseFastPathOffer(body []byte) (FastPathOffer, error) {
	if len(body) != 2+SessionLen {
		return FastPathOffer{}, fmt.Errorf("%w: fast path offer of %d bytes", ErrMalformed, len(body))
	}
	return FastPathOffer{Port: binary.BigEndian.Uint16(body), Session: [SessionLen]byte(body[2:])}, nil
}

// ParseChallenge decodes a FastPathConfirm body.
func ParseChallenge(body []byte) ([ChallengeLen]byte, error) {
	if len(body) != ChallengeLen {
		return [ChallengeLen]byte{}, fmt.Errorf("%w: challenge of %d bytes", ErrMalformed, len(body))
	}
	return [ChallengeLen]byte(body), nil
}

// FastDatagram is a decoded fast-path UDP datagram.
type FastDatagram struct {
	Kind      byte
	Session   [SessionLen]byte   // Bind, Challenge, Send
	Challenge [ChallengeLen]byte // Challenge
	Key       key.NodePublic     // Send: destination; Recv: source
	Payload   []byte             // Send, Recv; aliases the input
}

// ParseFast decodes a fast-path datagram.
func ParseFast(d []byte) (FastDatagram, error) {
	var f FastDatagram
	if len(d) == 0 {
		return f, fmt.Errorf("%w: empty fast-path datagram", ErrTruncated)
	}
	f.Kind = d[0]
	p := d[1:]
	need := func(n int) error {
		if len(p) < n {
			return fmt.Errorf("%w: fast-path datagram 0x%02x of %d bytes", ErrTruncated, f.Kind, len(d))
		}
		return nil
	}
	switch f.Kind {
	case FastBind:
		if len(p) != SessionLen {
			return f, fmt.Errorf("%w: bind of %d bytes", ErrMalformed, len(d))
		}
		f.Session = [SessionLen]byte(p)
	case FastChallenge:
		if len(p) != SessionLen+ChallengeLen {
			return f, fmt.Errorf("%w: challenge of %d bytes", ErrMalformed, len(d))
		}
		f.Session = [SessionLen]byte(p)
		f.Challenge = [ChallengeLen]byte(p[SessionLen:])
	case FastSend:
		if err := need(SessionLen + KeyLen); err != nil {
			return f, err
		}
		f.Session = [SessionLen]byte(p)
		f.Key = key.PublicFromRaw[key.Node]([KeyLen]byte(p[SessionLen:]))
		f.Payload = p[SessionLen+KeyLen:]
	case FastRecv:
		if err := need(KeyLen); err != nil {
			return f, err
		}
		f.Key = key.PublicFromRaw[key.Node]([KeyLen]byte(p))
		f.Payload = p[KeyLen:]
	default:
		return f, fmt.Errorf("%w: fast-path kind 0x%02x", ErrUnknown, f.Kind)
	}
	if len(f.Payload) > MaxPayloadLen {
		return f, fmt.Errorf("%w: fast-path payload", ErrOversized)
	}
	return f, nil
}

// AppendFastSend appends a FastSend datagram.
func AppendFastSend(b []byte, session [SessionLen]byte, dst key.NodePublic, payload []byte) []byte {
	k := dst.Raw()
	b = append(append(append(b, FastSend), session[:]...), k[:]...)
	return append(b, payload...)
}

// FastRecvInPlace turns the FastSend datagram d (already validated by
// ParseFast) into the FastRecv datagram for the same payload from src, in
// place, and returns it: the header shrinks from 41 to 33 bytes, so the
// FastRecv starts SessionLen bytes into d and the payload is not copied.
func FastRecvInPlace(d []byte, src key.NodePublic) []byte {
	r := d[SessionLen:]
	r[0] = FastRecv
	k := src.Raw()
	copy(r[1:], k[:])
	return r
}

// AppendFastRecv appends a FastRecv datagram.
func AppendFastRecv(b []byte, src key.NodePublic, payload []byte) []byte {
	k := src.Raw()
	return append(append(append(b, FastRecv), k[:]...), payload...)
}
