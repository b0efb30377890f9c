package relayproto

import (
	"encoding/binary"
	"fmt"
	"io"
)

// AppendHeader appends a stream frame header for a body of n bytes.
func AppendHeader(b []byte, t FrameType, n int) []byte {
	b = append(b, byte(t))
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

// AppendFrame appends a complete stream frame.
func AppendFrame(b []byte, t FrameType, body []byte) []byte {
	return append(AppendHeader(b, t, len(body)), body...)
}

// ParseHeader decodes a stream frame header. It fails with ErrUnknown for
// an undefined type and ErrOversized for a length above max (which must be
// at most MaxBodyLen).
func ParseHeader(h [HeaderLen]byte, max int) (FrameType, int, error) {
	t := FrameType(h[0])
	n := binary.BigEndian.Uint32(h[1:])
	if !t.Known() {
		return t, 0, fmt.Errorf("%w 0x%02x", ErrUnknown, byte(t))
	}
	if n > uint32(max) || n > MaxBodyLen {
		return t, 0, fmt.Errorf("%w: %s of %d bytes", ErrOversized, t, n)
	}
	return t, int(n), nil
}

// Reader reads stream frames. It holds no buffer of its own between
// frames, so an idle connection costs only the struct.
type Reader struct {
	r   io.Reader
	max int
	h   [HeaderLen]byte
}

// NewReader returns a Reader that refuses bodies longer than max.
func NewReader(r io.Reader, max int) *Reader { return &Reader{r: r, max: min(max, MaxBodyLen)} }

// SetMax changes the largest body accepted (a relay raises it after hello).
func (r *Reader) SetMax(max int) { r.max = min(max, MaxBodyLen) }

// Next reads one frame. The body is read into buf if it is large enough,
// else into a new slice. A clean EOF before a header returns io.EOF; EOF
// inside a frame returns ErrTruncated.
func (r *Reader) Next(buf []byte) (FrameType, []byte, error) {
	if _, err := io.ReadFull(r.r, r.h[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			return 0, nil, fmt.Errorf("%w: header", ErrTruncated)
		}
		return 0, nil, err
	}
	t, n, err := ParseHeader(r.h, r.max)
	if err != nil {
		return t, nil, err
	}
	var body []byte
	if cap(buf) >= n {
		body = buf[:n]
	} else {
		body = make([]byte, n)
	}
	if _, err := io.ReadFull(r.r, body); err != nil {
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			return t, nil, fmt.Errorf("%w: %s body", ErrTruncated, t)
		}
		return t, nil, err
	}
	return t, body, nil
}

// SplitDatagram splits a datagram into its frame type and body, accepting
// only the types allowed in datagrams.
func SplitDatagram(d []byte) (FrameType, []byte, error) {
	if len(d) == 0 {
		return 0, nil, fmt.Errorf("%w: empty datagram", ErrTruncated)
	}
	t := FrameType(d[0])
	switch t {
	case FrameSendPacket, FrameSendHandle, FrameRecvPacket, FramePing, FramePong:
		return t, d[1:], nil
	}
	if !t.Known() {
		return t, nil, fmt.Errorf("%w 0x%02x in datagram", ErrUnknown, d[0])
	}
	return t, nil, fmt.Errorf("%w: %s not allowed in a datagram", ErrMalformed, t)
}
