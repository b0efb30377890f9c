// Package relayproto defines the Wiremesh relay protocol: the frames that
// nodes and relays exchange over QUIC (a control stream plus RFC 9221
// datagrams) or over the TLS-over-TCP fallback (the same frames on one
// stream), and the frames relays of one region exchange over their mesh.
//
// # Framing
//
// On a stream (QUIC control stream or TLS over TCP) every frame is
//
//	type    1 byte  (FrameType)
//	length  4 bytes big-endian length of body, at most MaxBodyLen
//	body    length bytes
//
// In a QUIC datagram the frame is the type byte followed directly by the
// body; the datagram's own length bounds it. Only packet frames
// (FrameSendPacket, FrameSendHandle, FrameRecvPacket) and ping/pong travel
// as datagrams.
//
// # Session
//
// The client opens one bidirectional stream and sends FrameClientHello.
// The relay answers FrameServerHello or FrameReject (and then closes). After
// that either side may send any frame its role allows. Unknown frame types,
// truncated or oversized frames close the connection.
//
// # Frame bodies
//
//	ClientHello   version(1) flags(1) nodeKey(32) proof(ProofLen) token(rest, ≤ admit.MaxLen)
//	ServerHello   version(1) handle(4) region(rest, ≤ MaxRegionLen)
//	Reject        reason(1) message(rest, ≤ MaxMessageLen)
//	SendPacket    dst nodeKey(32) payload
//	SendHandle    dst handle(4) payload
//	RecvPacket    src nodeKey(32) payload
//	SendDisco     dst nodeKey(32) payload   (disco: own small queue at the relay)
//	RecvDisco     src nodeKey(32) payload
//	PeerPresent   nodeKey(32) handle(4)
//	PeerGone      nodeKey(32) reason(1)
//	Ping, Pong    data(8)
//	KeepAlive     empty
//	Restarting    reconnectIn ms(4) tryFor ms(4)
//	Health        message(rest, ≤ MaxMessageLen; empty means healthy)
//	MeshHello     relayKey(32) mac(32) region(rest)   (dialing relay → accepting relay)
//	MeshHelloOK   relayKey(32) mac(32)                (accepting relay → dialing relay)
//	MeshPresent   nodeKey(32)
//	MeshGone      nodeKey(32)
//	MeshForward   src(32) dst(32) flags(1) payload
//
// Handles are per sender: the relay gives a client a handle for a peer in
// PeerPresent only after the client addressed that peer by key, and a
// handle means something only in that client's own SendHandle frames.
// ServerHello's handle is 0.
//
// The proof in ClientHello is a NaCl box (key.SharedKey.Seal) from the
// node key to the relay key over the session's TLS exporter value
// (ExporterLabel, ExporterLen bytes), so it cannot be replayed on another
// TLS session.
package relayproto

import "errors"

// Version is the protocol version carried in hellos. A relay rejects any
// other version with ReasonVersion.
const Version = 1

// ALPN protocol identifiers. Clients and mesh peers use different ones so a
// relay can tell them apart before reading a byte.
const (
	ALPN     = "wiremesh-relay/1"
	MeshALPN = "wiremesh-mesh/1"
)

// TLS exporter parameters for the proof of possession (RFC 8446 §7.5).
// The mesh uses its own label so a client proof is never a mesh proof.
const (
	ExporterLabel     = "EXPORTER-wiremesh-relay-proof"
	MeshExporterLabel = "EXPORTER-wiremesh-mesh-proof"
	ExporterLen       = 32
)

// Sizes.
const (
	// KeyLen is the length of a node or relay public key.
	KeyLen = 32
	// HandleLen is the length of a short peer handle.
	HandleLen = 4
	// HeaderLen is the stream frame header: type plus 4-byte length.
	HeaderLen = 5
	// ProofLen is the sealed exporter value: 24-byte nonce, 16-byte tag
	// and ExporterLen bytes of ciphertext (key.Overhead + ExporterLen).
	ProofLen = 24 + 16 + ExporterLen
	// MaxPayloadLen bounds one relayed packet. WireGuard never sends more
	// than its MTU (≤ 65535 minus IP and UDP headers) plus 32 bytes of
	// its own header; 64 KiB covers any MTU.
	MaxPayloadLen = 65535
	// MaxBodyLen bounds any frame body: the largest is MeshForward with a
	// full payload. Anything larger is an oversized frame.
	MaxBodyLen = 2*KeyLen + 1 + MaxPayloadLen
	// MaxRegionLen matches admit.MaxRegionLen.
	MaxRegionLen = 32
	// MaxMessageLen bounds human-readable strings in Reject and Health.
	MaxMessageLen = 256
	// MaxTokenLen matches admit.MaxLen: a version 2 token with the most
	// regions, 1+8+32+8+8+1+16*(1+32)+64 (admit's tests check).
	MaxTokenLen = 650
	// MaxHelloLen bounds what a relay reads before a client is admitted.
	MaxHelloLen = 2 + KeyLen + ProofLen + MaxTokenLen
	// PacketOverhead is what a RecvPacket datagram adds to a packet: type
	// byte plus source key. A 1280-byte packet needs a 1313-byte datagram
	// payload, which quic-go can send right after the handshake on a
	// path with a 1500-byte MTU (see docs/relayd.md for the arithmetic).
	PacketOverhead = 1 + KeyLen
)

// FrameType identifies a frame.
type FrameType byte

// Frame types. Values are part of the wire format: never renumber.
const (
	FrameClientHello FrameType = 0x01
	FrameServerHello FrameType = 0x02
	FrameReject      FrameType = 0x03

	FrameSendPacket FrameType = 0x10
	FrameSendHandle FrameType = 0x11
	FrameRecvPacket FrameType = 0x12
	FrameSendDisco  FrameType = 0x13
	FrameRecvDisco  FrameType = 0x14

	FramePeerPresent FrameType = 0x20
	FramePeerGone    FrameType = 0x21
	FramePing        FrameType = 0x22
	FramePong        FrameType = 0x23
	FrameKeepAlive   FrameType = 0x24
	FrameRestarting  FrameType = 0x25
	FrameHealth      FrameType = 0x26

	FrameMeshHello   FrameType = 0x30
	FrameMeshHelloOK FrameType = 0x31
	FrameMeshPresent FrameType = 0x32
	FrameMeshGone    FrameType = 0x33
	FrameMeshForward FrameType = 0x34
)

var frameNames = map[FrameType]string{
	FrameClientHello: "client_hello", FrameServerHello: "server_hello", FrameReject: "reject",
	FrameSendPacket: "send_packet", FrameSendHandle: "send_handle", FrameRecvPacket: "recv_packet",
	FrameSendDisco: "send_disco", FrameRecvDisco: "recv_disco",
	FramePeerPresent: "peer_present", FramePeerGone: "peer_gone", FramePing: "ping", FramePong: "pong",
	FrameKeepAlive: "keepalive", FrameRestarting: "restarting", FrameHealth: "health",
	FrameMeshHello: "mesh_hello", FrameMeshHelloOK: "mesh_hello_ok", FrameMeshPresent: "mesh_present",
	FrameMeshGone: "mesh_gone", FrameMeshForward: "mesh_forward",
}

// Known reports whether t is a defined frame type.
func (t FrameType) Known() bool { _, ok := frameNames[t]; return ok }

// String returns a stable lowercase name, "unknown" for undefined types.
func (t FrameType) String() string {
	if n, ok := frameNames[t]; ok {
		return n
	}
	return "unknown"
}

// Errors returned by the parsers. Each is a reason a relay counts before
// closing the connection (see BadFrameReason).
var (
	ErrTruncated = errors.New("relayproto: truncated frame")
	ErrOversized = errors.New("relayproto: oversized frame")
	ErrUnknown   = errors.New("relayproto: unknown frame type")
	ErrMalformed = errors.New("relayproto: malformed frame")
)

// BadFrameReason returns a metric label for a parse error.
func BadFrameReason(err error) string {
	switch {
	case errors.Is(err, ErrTruncated):
		return "truncated"
	case errors.Is(err, ErrOversized):
		return "oversized"
	case errors.Is(err, ErrUnknown):
		return "unknown"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	}
	return "other"
}

// Hello flags (ClientHello flags byte).
const (
	// FlagDatagrams asks the relay to deliver packets as QUIC datagrams
	// when they fit; without it packets arrive on the stream.
	FlagDatagrams byte = 1 << 0
)

// MeshForward flags.
const (
	// MeshFlagDisco marks a forwarded disco packet.
	MeshFlagDisco byte = 1 << 0
)

// PeerGoneReason says why a PeerGone notice was sent.
type PeerGoneReason byte

// PeerGone reasons.
const (
	PeerGoneDisconnected PeerGoneReason = 0 // the peer was here and left
	PeerGoneNotHere      PeerGoneReason = 1 // a packet was sent to a peer this relay does not know
)
