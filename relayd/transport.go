package relayd

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"

	"github.com/quic-go/quic-go"
)

// errNoDatagrams is returned by sendDatagram on transports without them.
var errNoDatagrams = errors.New("transport has no datagrams")

// conn is one client connection, QUIC or TLS over TCP, seen through the
// operations the relay needs. The stream carries frames in both directions.
type conn interface {
	io.ReadWriter
	// sendDatagram sends one datagram, blocking while quic-go's send queue
	// is full (that is the backpressure), or returns errNoDatagrams or a
	// *quic.DatagramTooLargeError.
	sendDatagram(b []byte) error
	// receiveDatagram returns the next datagram; TCP returns errNoDatagrams.
	receiveDatagram(ctx context.Context) ([]byte, error)
	// exporter returns the TLS exporter value binding the hello proof.
	exporter(label string) ([]byte, error)
	// setReadDeadline bounds stream reads on every transport: the hello
	// must arrive by t (the zero time clears it).
	setReadDeadline(t time.Time)
	// setIdleDeadline bounds the next stream read after admission: TCP's
	// idle detection. QUIC has its own idle timeout and keep-alives, and a
	// QUIC client's control stream may rightly stay quiet, so it is a no-op
	// there.
	setIdleDeadline(t time.Time)
	// setWriteDeadline bounds stream writes, so a client that stops
	// reading cannot park its writer forever.
	setWriteDeadline(t time.Time)
	close(msg string)
	transport() string
	remoteAddr() net.Addr
}

type quicConn struct {
	c *quic.Conn
	*quic.Stream
}

func (q *quicConn) sendDatagram(b []byte) error { return q.c.SendDatagram(b) }
func (q *quicConn) receiveDatagram(ctx context.Context) ([]byte, error) {
	return q.c.ReceiveDatagram(ctx)
}
func (q *quicConn) exporter(label string) ([]byte, error) {
	cs := q.c.ConnectionState().TLS
	return cs.ExportKeyingMaterial(label, nil, 32)
}
func (q *quicConn) setReadDeadline(t time.Time)  { q.Stream.SetReadDeadline(t) }
func (q *quicConn) setIdleDeadline(time.Time)    {} // QUIC has its own idle timeout
func (q *quicConn) setWriteDeadline(t time.Time) { q.Stream.SetWriteDeadline(t) }
func (q *quicConn) close(msg string)             { q.c.CloseWithError(0, msg) }
func (q *quicConn) transport() string            { return transportQUIC }
func (q *quicConn) remoteAddr() net.Addr         { return q.c.RemoteAddr() }

type tcpConn struct{ *tls.Conn }

func (t *tcpConn) sendDatagram([]byte) error { return errNoDatagrams }
func (t *tcpConn) receiveDatagram(context.Context) ([]byte, error) {
	return nil, errNoDatagrams
}
func (t *tcpConn) exporter(label string) ([]byte, error) {
	cs := t.ConnectionState()
	return cs.ExportKeyingMaterial(label, nil, 32)
}
func (t *tcpConn) setReadDeadline(d time.Time)  { t.SetReadDeadline(d) }
func (t *tcpConn) setIdleDeadline(d time.Time)  { t.SetReadDeadline(d) }
func (t *tcpConn) setWriteDeadline(d time.Time) { t.SetWriteDeadline(d) }
func (t *tcpConn) close(string)                 { t.Close() }
func (t *tcpConn) transport() string            { return transportTCP }
func (t *tcpConn) remoteAddr() net.Addr         { return t.RemoteAddr() }
