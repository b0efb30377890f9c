package netmap

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Stream framing: each MapResponse is a 4-byte big-endian length followed by
// that many bytes of JSON.
const frameHeaderLen = 4

// MaxFrameSize bounds one frame. A full map costs about 400 bytes per peer,
// so 64 MiB holds a full map of more than 100,000 peers; anything larger is
// refused rather than buffered.
const MaxFrameSize = 64 << 20

// ErrFrameTooLarge is returned for a frame longer than MaxFrameSize.
var ErrFrameTooLarge = errors.New("netmap: frame too large")

// AppendFrame appends the frame header for a payload of n bytes to dst.
func AppendFrame(dst []byte, n int) []byte {
	return binary.BigEndian.AppendUint32(dst, uint32(n))
}

// WriteFrame writes v as one frame.
func WriteFrame(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > MaxFrameSize {
		return ErrFrameTooLarge
	}
	buf := AppendFrame(make([]byte, 0, frameHeaderLen+len(b)), len(b))
	_, err = w.Write(append(buf, b...))
	return err
}

// FrameReader reads frames from a stream.
type FrameReader struct {
	r   *bufio.Reader
	buf []byte
}

// NewFrameReader returns a reader of frames from r.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: bufio.NewReaderSize(r, 16<<10)}
}

// Next returns the next frame's payload. The slice is valid until the next
// call. It returns io.EOF at a clean end of stream.
func (f *FrameReader) Next() ([]byte, error) {
	var h [frameHeaderLen]byte
	if _, err := io.ReadFull(f.r, h[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("netmap: truncated frame header: %w", err)
		}
		return nil, err
	}
	n := binary.BigEndian.Uint32(h[:])
	if n > MaxFrameSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	// The claimed length is only a claim: the buffer grows with the bytes
	// that actually arrive (doubling, from frameChunk), so a header
	// claiming 64 MiB followed by nothing costs a chunk, not 64 MiB.
	f.buf = f.buf[:0]
	for len(f.buf) < int(n) {
		want := int(n) - len(f.buf)
		if free := cap(f.buf) - len(f.buf); free < want {
			grow := max(cap(f.buf), frameChunk)
			if grow > want {
				grow = want
			}
			f.buf = slices.Grow(f.buf, grow)
		}
		chunk := min(want, cap(f.buf)-len(f.buf))
		m, err := io.ReadFull(f.r, f.buf[len(f.buf):len(f.buf)+chunk])
		f.buf = f.buf[:len(f.buf)+m]
		if err != nil {
			return nil, fmt.Errorf("netmap: truncated frame: %w", err)
		}
	}
	return f.buf, nil
}

// frameChunk is the first allocation for a frame's payload: a delta fits.
const frameChunk = 16 << 10

// ReadMapResponse reads and decodes the next frame.
func (f *FrameReader) ReadMapResponse() (*MapResponse, error) {
	b, err := f.Next()
	if err != nil {
		return nil, err
	}
	return DecodeMapResponse(b)
}

// DecodeMapResponse decodes one frame's payload.
func DecodeMapResponse(b []byte) (*MapResponse, error) {
	var m MapResponse
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("netmap: decode map response: %w", err)
	}
	return &m, nil
}
