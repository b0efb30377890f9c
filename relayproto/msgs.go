package relayproto

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/wiremesh/wiremesh/key"
)

// ClientHello is the first frame a client sends.
type ClientHello struct {
	Version byte
	Flags   byte
	Node    key.NodePublic
	Proof   [ProofLen]byte
	Token   []byte // binary admission token (admit package); may be empty
}

// Append appends the hello's body.
func (h *ClientHello) Append(b []byte) []byte {
	b = append(b, h.Version, h.Flags)
	k := h.Node.Raw()
	b = append(b, k[:]...)
	b = append(b, h.Proof[:]...)
	return append(b, h.Token...)
}

// ParseClientHello decodes a ClientHello body. Token aliases body.
func ParseClientHello(body []byte) (ClientHello, error) {
	var h ClientHello
	const fixed = 2 + KeyLen + ProofLen
	if len(body) < fixed {
		return h, fmt.Errorf("%w: client hello of %d bytes", ErrTruncated, len(body))
	}
	if len(body) > MaxHelloLen {
		return h, fmt.Errorf("%w: client hello of %d bytes", ErrOversized, len(body))
	}
	h.Version, h.Flags = body[0], body[1]
	h.Node = key.PublicFromRaw[key.Node]([KeyLen]byte(body[2 : 2+KeyLen]))
	copy(h.Proof[:], body[2+KeyLen:fixed])
	h.Token = body[fixed:]
	return h, nil
}

// ServerHello is the relay's answer to an accepted hello.
type ServerHello struct {
	Version byte
	Handle  uint32 // unused since handles are per sender (PeerPresent); relays send 0
	Region  string
}

// Append appends the body.
func (h *ServerHello) Append(b []byte) []byte {
	b = append(b, h.Version)
	b = binary.BigEndian.AppendUint32(b, h.Handle)
	return append(b, h.Region...)
}

// ParseServerHello decodes a ServerHello body.
func ParseServerHello(body []byte) (ServerHello, error) {
	var h ServerHello
	if len(body) < 5 {
		return h, fmt.Errorf("%w: server hello", ErrTruncated)
	}
	if len(body) > 5+MaxRegionLen {
		return h, fmt.Errorf("%w: server hello", ErrOversized)
	}
	h.Version = body[0]
	h.Handle = binary.BigEndian.Uint32(body[1:])
	h.Region = string(body[5:])
	return h, nil
}

// Reject is the relay's refusal of a hello.
type Reject struct {
	Reason  Reason
	Message string
}

// Append appends the body, cutting Message to MaxMessageLen.
func (r *Reject) Append(b []byte) []byte {
	m := r.Message
	if len(m) > MaxMessageLen {
		m = m[:MaxMessageLen]
	}
	return append(append(b, byte(r.Reason)), m...)
}

// ParseReject decodes a Reject body.
func ParseReject(body []byte) (Reject, error) {
	if len(body) < 1 {
		return Reject{}, fmt.Errorf("%w: reject", ErrTruncated)
	}
	if len(body) > 1+MaxMessageLen {
		return Reject{}, fmt.Errorf("%w: reject", ErrOversized)
	}
	return Reject{Reason: Reason(body[0]), Message: string(body[1:])}, nil
}

// Error makes a Reject usable as an error on the client side.
func (r Reject) Error() string {
	return fmt.Sprintf("relay rejected hello: %s: %s", r.Reason, r.Message)
}

// AppendKeyPacket appends the body of a SendPacket, RecvPacket, SendDisco or
// RecvDisco frame: a node key and the payload.
func AppendKeyPacket(b []byte, k key.NodePublic, payload []byte) []byte {
	raw := k.Raw()
	return append(append(b, raw[:]...), payload...)
}

// ParseKeyPacket decodes a key-addressed packet body. payload aliases body.
func ParseKeyPacket(body []byte) (key.NodePublic, []byte, error) {
	if len(body) < KeyLen {
		return key.NodePublic{}, nil, fmt.Errorf("%w: packet of %d bytes", ErrTruncated, len(body))
	}
	if len(body)-KeyLen > MaxPayloadLen {
		return key.NodePublic{}, nil, fmt.Errorf("%w: packet", ErrOversized)
	}
	return key.PublicFromRaw[key.Node]([KeyLen]byte(body[:KeyLen])), body[KeyLen:], nil
}

// AppendHandlePacket appends a SendHandle body.
func AppendHandlePacket(b []byte, h uint32, payload []byte) []byte {
	return append(binary.BigEndian.AppendUint32(b, h), payload...)
}

// ParseHandlePacket decodes a SendHandle body. payload aliases body.
func ParseHandlePacket(body []byte) (uint32, []byte, error) {
	if len(body) < HandleLen {
		return 0, nil, fmt.Errorf("%w: handle packet", ErrTruncated)
	}
	if len(body)-HandleLen > MaxPayloadLen {
		return 0, nil, fmt.Errorf("%w: handle packet", ErrOversized)
	}
	return binary.BigEndian.Uint32(body), body[HandleLen:], nil
}

// AppendPeerPresent appends a PeerPresent body.
func AppendPeerPresent(b []byte, k key.NodePublic, handle uint32) []byte {
	raw := k.Raw()
	return binary.BigEndian.AppendUint32(append(b, raw[:]...), handle)
}

// ParsePeerPresent decodes a PeerPresent body.
func ParsePeerPresent(body []byte) (key.NodePublic, uint32, error) {
	if len(body) != KeyLen+HandleLen {
		return key.NodePublic{}, 0, fmt.Errorf("%w: peer present of %d bytes", ErrMalformed, len(body))
	}
	return key.PublicFromRaw[key.Node]([KeyLen]byte(body[:KeyLen])), binary.BigEndian.Uint32(body[KeyLen:]), nil
}

// AppendPeerGone appends a PeerGone body.
func AppendPeerGone(b []byte, k key.NodePublic, r PeerGoneReason) []byte {
	raw := k.Raw()
	return append(append(b, raw[:]...), byte(r))
}

// ParsePeerGone decodes a PeerGone body.
func ParsePeerGone(body []byte) (key.NodePublic, PeerGoneReason, error) {
	if len(body) != KeyLen+1 {
		return key.NodePublic{}, 0, fmt.Errorf("%w: peer gone of %d bytes", ErrMalformed, len(body))
	}
	return key.PublicFromRaw[key.Node]([KeyLen]byte(body[:KeyLen])), PeerGoneReason(body[KeyLen]), nil
}

// ParseKey decodes a body that is exactly one node key (MeshPresent,
// MeshGone).
func ParseKey(body []byte) (key.NodePublic, error) {
	if len(body) != KeyLen {
		return key.NodePublic{}, fmt.Errorf("%w: key body of %d bytes", ErrMalformed, len(body))
	}
	return key.PublicFromRaw[key.Node]([KeyLen]byte(body)), nil
}

// AppendKey appends a key body.
func AppendKey(b []byte, k key.NodePublic) []byte {
	raw := k.Raw()
	return append(b, raw[:]...)
}

// PingLen is the length of ping and pong data.
const PingLen = 8

// ParsePing decodes a Ping or Pong body.
func ParsePing(body []byte) ([PingLen]byte, error) {
	if len(body) != PingLen {
		return [PingLen]byte{}, fmt.Errorf("%w: ping of %d bytes", ErrMalformed, len(body))
	}
	return [PingLen]byte(body), nil
}

// Restarting tells clients the relay is going away.
type Restarting struct {
	ReconnectIn time.Duration // wait this long before reconnecting
	TryFor      time.Duration // keep trying this relay this long, then move on
}

// Append appends the body.
func (r *Restarting) Append(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(r.ReconnectIn.Milliseconds()))
	return binary.BigEndian.AppendUint32(b, uint32(r.TryFor.Milliseconds()))
}

// ParseRestarting decodes a Restarting body.
func ParseRestarting(body []byte) (Restarting, error) {
	if len(body) != 8 {
		return Restarting{}, fmt.Errorf("%w: restarting of %d bytes", ErrMalformed, len(body))
	}
	return Restarting{
		ReconnectIn: time.Duration(binary.BigEndian.Uint32(body)) * time.Millisecond,
		TryFor:      time.Duration(binary.BigEndian.Uint32(body[4:])) * time.Millisecond,
	}, nil
}

// ParseHealth decodes a Health body.
func ParseHealth(body []byte) (string, error) {
	if len(body) > MaxMessageLen {
		return "", fmt.Errorf("%w: health", ErrOversized)
	}
	return string(body), nil
}

// MACLen is the length of the mesh hello MAC (HMAC-SHA256).
const MACLen = 32

// MeshHello authenticates one relay to another with the mesh secret.
type MeshHello struct {
	Relay  key.RelayPublic
	MAC    [MACLen]byte
	Region string // empty in MeshHelloOK
}

// Append appends the body.
func (h *MeshHello) Append(b []byte) []byte {
	k := h.Relay.Raw()
	b = append(append(b, k[:]...), h.MAC[:]...)
	return append(b, h.Region...)
}

// ParseMeshHello decodes a MeshHello or MeshHelloOK body.
func ParseMeshHello(body []byte) (MeshHello, error) {
	var h MeshHello
	if len(body) < KeyLen+MACLen {
		return h, fmt.Errorf("%w: mesh hello", ErrTruncated)
	}
	if len(body) > KeyLen+MACLen+MaxRegionLen {
		return h, fmt.Errorf("%w: mesh hello", ErrOversized)
	}
	h.Relay = key.PublicFromRaw[key.Relay]([KeyLen]byte(body[:KeyLen]))
	copy(h.MAC[:], body[KeyLen:])
	h.Region = string(body[KeyLen+MACLen:])
	return h, nil
}

// AppendMeshForward appends a MeshForward body.
func AppendMeshForward(b []byte, src, dst key.NodePublic, flags byte, payload []byte) []byte {
	s, d := src.Raw(), dst.Raw()
	b = append(append(b, s[:]...), d[:]...)
	return append(append(b, flags), payload...)
}

// ParseMeshForward decodes a MeshForward body. payload aliases body.
func ParseMeshForward(body []byte) (src, dst key.NodePublic, flags byte, payload []byte, err error) {
	if len(body) < 2*KeyLen+1 {
		return src, dst, 0, nil, fmt.Errorf("%w: mesh forward", ErrTruncated)
	}
	if len(body) > MaxBodyLen {
		return src, dst, 0, nil, fmt.Errorf("%w: mesh forward", ErrOversized)
	}
	src = key.PublicFromRaw[key.Node]([KeyLen]byte(body[:KeyLen]))
	dst = key.PublicFromRaw[key.Node]([KeyLen]byte(body[KeyLen : 2*KeyLen]))
	return src, dst, body[2*KeyLen], body[2*KeyLen+1:], nil
}
