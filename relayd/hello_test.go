package relayd_test

import (
	"context"
	"errors"
	"io"
	"testing"

	"github.com/quic-go/quic-go"

	"github.com/wiremesh/wiremesh/relayd/relaytest"
	"github.com/wiremesh/wiremesh/relayproto"
	"github.com/wiremesh/wiremesh/tlspin"
)

// helloStream dials the relay over QUIC by hand and sends the hello that
// build returns for this session's exporter value.
func helloStream(t *testing.T, r *relaytest.Relay, build func(exporter []byte) relayproto.ClientHello) (io.ReadWriter, func(), error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testWait)
	defer cancel()
	tc := tlspin.ClientConfig(r.Server.Pin(), "relay", relayproto.ALPN)
	qc, err := quic.DialAddr(ctx, r.Server.Addr().String(), tc, &quic.Config{EnableDatagrams: true})
	if err != nil {
		return nil, nil, err
	}
	st, err := qc.OpenStream()
	if err != nil {
		return nil, nil, err
	}
	cs := qc.ConnectionState().TLS
	exp, err := cs.ExportKeyingMaterial(relayproto.ExporterLabel, nil, relayproto.ExporterLen)
	if err != nil {
		return nil, nil, err
	}
	h := build(exp)
	if _, err := st.Write(relayproto.AppendFrame(nil, relayproto.FrameClientHello, h.Append(nil))); err != nil {
		return nil, nil, err
	}
	return st, func() { qc.CloseWithError(0, "") }, nil
}

// rawHello sends a hand-built hello and returns the relay's Reject.
func rawHello(t *testing.T, r *relaytest.Relay, build func(exporter []byte) relayproto.ClientHello) (relayproto.Reject, error) {
	st, closeFn, err := helloStream(t, r, build)
	if err != nil {
		return relayproto.Reject{}, err
	}
	defer closeFn()
	typ, body, err := relayproto.NewReader(st, relayproto.MaxBodyLen).Next(nil)
	if err != nil {
		return relayproto.Reject{}, err
	}
	if typ != relayproto.FrameReject {
		return relayproto.Reject{}, errors.New("relay accepted the hello: " + typ.String())
	}
	return relayproto.ParseReject(body)
}
