// Package disco defines the discovery messages nodes exchange to find and
// confirm direct paths: ping, pong and call-me-maybe. It parses and seals
// them; it opens no sockets and keeps no state.
//
// Disco packets travel on a node's one UDP socket, beside WireGuard and
// STUN, and through relays. On the wire a packet is:
//
//	magic      6 bytes  "WM💬" (0x57 0x4d 0xf0 0x9f 0x92 0xac)
//	sender    32 bytes  the sender's disco public key
//	nonce     24 bytes  \
//	box        N bytes  / NaCl box (key.SharedKey.Seal) of the plaintext
//
// The magic's first byte, 0x57, can be neither a WireGuard message (types 1
// to 4) nor STUN (top two bits zero), so one byte tells the three apart.
//
// The plaintext is a type byte, a version byte and the message body:
//
//	ping         (1): txid 12 | node key 32 | zero padding (probes path MTU)
//	pong         (2): txid 12 | observed source: IPv6 or IPv4-mapped 16 | port 2
//	call-me-maybe(3): endpoints, each 16-byte address and 2-byte port
//	punch        (4): step 1 | search id 4 | address: IPv6 or IPv4-mapped 16 | port 2
//
// Unknown trailing bytes after a known body are ignored so later versions can
// extend a message; unknown types are an error.
package disco

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/wiremesh/wiremesh/key"
)

// Magic starts every disco packet.
const Magic = "WM💬"

// Sizes.
const (
	headerLen = len(Magic) + key.Len
	// MaxPacket bounds a disco packet: a ping padded to a 1500-byte path
	// MTU probe, less IPv4 and UDP headers. Larger packets are refused
	// before any decryption.
	MaxPacket = 1500 - 20 - 8
	// MaxEndpoints bounds a call-me-maybe. A node rarely has more than a
	// handful of candidates; a peer that sends more is trimmed.
	MaxEndpoints = 32
	txIDLen      = 12
	epLen        = 16 + 2
	msgHdrLen    = 2
	// Overhead is what framing and sealing add to a message body.
	Overhead = headerLen + key.Overhead + msgHdrLen
)

// Version is the message version this package writes.
const Version = 0

// MessageType identifies a disco message.
type MessageType byte

// Message types.
const (
	TypePing        MessageType = 1
	TypePong        MessageType = 2
	TypeCallMeMaybe MessageType = 3
	TypePunch       MessageType = 4
)

func (t MessageType) String() string {
	switch t {
	case TypePing:
		return "ping"
	case TypePong:
		return "pong"
	case TypeCallMeMaybe:
		return "call-me-maybe"
	case TypePunch:
		return "punch"
	}
	return fmt.Sprintf("type(%d)", byte(t))
}

// Errors.
var (
	ErrNotDisco  = errors.New("disco: not a disco packet")
	ErrTooLarge  = errors.New("disco: packet too large")
	ErrMalformed = errors.New("disco: malformed message")
	ErrUnknown   = errors.New("disco: unknown message type")
)

// TxID identifies a ping and its pong.
type TxID [txIDLen]byte

// NewTxID returns a random transaction id.
func NewTxID() TxID {
	var t TxID
	rand.Read(t[:])
	return t
}

// Message is a disco message.
type Message interface {
	// AppendMarshal appends the message's plaintext (type, version, body).
	AppendMarshal([]byte) []byte
	Type() MessageType
}

// Ping asks the receiver to answer with a Pong. NodeKey is the sender's node
// key, so the receiver can tie a new source address to a known peer.
// Padding adds zero bytes to probe whether a packet of that size gets through.
type Ping struct {
	TxID    TxID
	NodeKey key.NodePublic
	Padding int
}

// Pong answers a Ping and tells the pinger where its ping came from.
type Pong struct {
	TxID TxID
	Src  netip.AddrPort
}

// CallMeMaybe, sent through a relay, lists the sender's endpoint candidates
// and asks the receiver to ping them all now: the hole punch.
type CallMeMaybe struct {
	Endpoints []netip.AddrPort
}

// PunchStep is a step of a coordinated punch (see Punch).
type PunchStep byte

// Punch steps. A birthday search (an easy NAT and a hard one) runs
// StepHard, StepEasy, StepProbe; a primed punch (bare Linux NATs) runs
// StepPrime, StepPrimed.
const (
	// StepHard: "my NAT maps a new port per destination; Addr's IP is my
	// public address". Sent by the hard side when it wants a direct path.
	StepHard PunchStep = 1
	// StepEasy: "my NAT keeps one mapping; Addr is my public ip:port:
	// open your sockets towards it". The easy side's answer.
	StepEasy PunchStep = 2
	// StepProbe: "every socket has sent: probe my public IP now".
	StepProbe PunchStep = 3
	// StepPrime: "I primed my NATs towards your endpoints: prime yours,
	// then ping me".
	StepPrime PunchStep = 4
	// StepPrimed: "I primed too, and pinged you: ping me now".
	StepPrimed PunchStep = 5
	maxStep              = StepPrimed
)

func (s PunchStep) String() string {
	switch s {
	case StepHard:
		return "hard"
	case StepEasy:
		return "easy"
	case StepProbe:
		return "probe"
	case StepPrime:
		return "prime"
	case StepPrimed:
		return "primed"
	}
	return fmt.Sprintf("step(%d)", byte(s))
}

// Punch, sent through a relay, coordinates a punch the plain call-me-maybe
// exchange cannot do: who opens sockets, who probes, and when. ID ties the
// steps of one attempt together, so a late step of an old one is ignored.
type Punch struct {
	Step PunchStep
	ID   uint32
	Addr netip.AddrPort
}

// Type implements Message.
func (*Punch) Type() MessageType { return TypePunch }

// AppendMarshal implements Message.
func (m *Punch) AppendMarshal(b []byte) []byte {
	b = append(b, byte(TypePunch), Version, byte(m.Step))
	b = binary.BigEndian.AppendUint32(b, m.ID)
	return appendAddrPort(b, m.Addr)
}

// Type implements Message.
func (*Ping) Type() MessageType { return TypePing }

// Type implements Message.
func (*Pong) Type() MessageType { return TypePong }

// Type implements Message.
func (*CallMeMaybe) Type() MessageType { return TypeCallMeMaybe }

// AppendMarshal implements Message.
func (m *Ping) AppendMarshal(b []byte) []byte {
	b = append(b, byte(TypePing), Version)
	b = append(b, m.TxID[:]...)
	raw := m.NodeKey.Raw()
	b = append(b, raw[:]...)
	if m.Padding > 0 {
		b = append(b, make([]byte, m.Padding)...)
	}
	return b
}

// AppendMarshal implements Message.
func (m *Pong) AppendMarshal(b []byte) []byte {
	b = append(b, byte(TypePong), Version)
	b = append(b, m.TxID[:]...)
	return appendAddrPort(b, m.Src)
}

// AppendMarshal implements Message.
func (m *CallMeMaybe) AppendMarshal(b []byte) []byte {
	b = append(b, byte(TypeCallMeMaybe), Version)
	for i, ep := range m.Endpoints {
		if i == MaxEndpoints {
			break
		}
		b = appendAddrPort(b, ep)
	}
	return b
}

func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr().As16() // IPv4 becomes IPv4-mapped IPv6
	b = append(b, a[:]...)
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

func parseAddrPort(b []byte) netip.AddrPort {
	a := netip.AddrFrom16([16]byte(b[:16])).Unmap()
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(b[16:]))
}

// Parse decodes a message's plaintext.
func Parse(p []byte) (Message, error) {
	if len(p) < msgHdrLen {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(p))
	}
	t, body := MessageType(p[0]), p[msgHdrLen:]
	switch t {
	case TypePing:
		if len(body) < txIDLen+key.Len {
			return nil, fmt.Errorf("%w: ping of %d bytes", ErrMalformed, len(body))
		}
		m := &Ping{Padding: len(body) - txIDLen - key.Len}
		copy(m.TxID[:], body)
		m.NodeKey = key.PublicFromRaw[key.Node]([key.Len]byte(body[txIDLen:]))
		return m, nil
	case TypePong:
		if len(body) < txIDLen+epLen {
			return nil, fmt.Errorf("%w: pong of %d bytes", ErrMalformed, len(body))
		}
		m := &Pong{}
		copy(m.TxID[:], body)
		m.Src = parseAddrPort(body[txIDLen:])
		return m, nil
	case TypeCallMeMaybe:
		if len(body)%epLen != 0 {
			return nil, fmt.Errorf("%w: call-me-maybe of %d bytes", ErrMalformed, len(body))
		}
		n := min(len(body)/epLen, MaxEndpoints)
		m := &CallMeMaybe{Endpoints: make([]netip.AddrPort, 0, n)}
		for i := 0; i < n; i++ {
			ep := parseAddrPort(body[i*epLen:])
			if ep.Addr().IsUnspecified() || ep.Port() == 0 {
				continue // useless candidate; skip rather than reject all
			}
			m.Endpoints = append(m.Endpoints, ep)
		}
		return m, nil
	case TypePunch:
		if len(body) < 1+4+epLen {
			return nil, fmt.Errorf("%w: punch of %d bytes", ErrMalformed, len(body))
		}
		step := PunchStep(body[0])
		if step == 0 || step > maxStep {
			return nil, fmt.Errorf("%w: punch step %d", ErrMalformed, body[0])
		}
		return &Punch{Step: step, ID: binary.BigEndian.Uint32(body[1:]), Addr: parseAddrPort(body[5:])}, nil
	}
	return nil, fmt.Errorf("%w: %d", ErrUnknown, p[0])
}

// LooksLikeDisco reports whether pkt starts with the disco magic and is long
// enough to hold a header and a sealed message.
func LooksLikeDisco(pkt []byte) bool {
	return len(pkt) >= headerLen+key.Overhead+msgHdrLen && string(pkt[:len(Magic)]) == Magic
}

// Sender returns the sender's disco key from a packet's clear header, so the
// receiver can find the shared key to open it with. It does not
// authenticate anything.
func Sender(pkt []byte) (key.DiscoPublic, error) {
	if !LooksLikeDisco(pkt) {
		return key.DiscoPublic{}, ErrNotDisco
	}
	if len(pkt) > MaxPacket {
		return key.DiscoPublic{}, ErrTooLarge
	}
	return key.PublicFromRaw[key.Disco]([key.Len]byte(pkt[len(Magic):headerLen])), nil
}

// Seal appends a sealed packet carrying m from sender to dst. shared is the
// key between the sender's disco private key and the receiver's public key.
func Seal(dst []byte, sender key.DiscoPublic, shared *key.SharedKey, m Message) []byte {
	dst = append(dst, Magic...)
	raw := sender.Raw()
	dst = append(dst, raw[:]...)
	plain := m.AppendMarshal(make([]byte, 0, 64))
	return shared.Seal(dst, plain)
}

// Open authenticates and decodes a disco packet. shared must be the key
// between the receiver's disco private key and Sender(pkt).
func Open(pkt []byte, shared *key.SharedKey) (Message, error) {
	if _, err := Sender(pkt); err != nil {
		return nil, err
	}
	plain, err := shared.Open(nil, pkt[headerLen:])
	if err != nil {
		return nil, fmt.Errorf("disco: %w", err)
	}
	return Parse(plain)
}
