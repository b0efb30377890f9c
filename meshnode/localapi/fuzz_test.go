package localapi

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// fuzzBackend answers like a daemon, quickly, and never shuts down.
type fuzzBackend struct{ fakeBackend }

func (f *fuzzBackend) Down() {}

func (f *fuzzBackend) Ping(ctx context.Context, req PingRequest, emit func(PingResult)) error {
	if req.Count < 1 || req.Count > maxPings || req.Timeout <= 0 {
		panic("handler passed an unchecked ping request to the backend")
	}
	return f.fakeBackend.Ping(ctx, req, emit)
}

// FuzzHandler feeds raw HTTP requests (as a client on the socket would
// write them) to the local API's handler: whatever arrives, it must answer
// with a status and never panic, and the backend only ever sees checked
// ping parameters.
func FuzzHandler(f *testing.F) {
	for _, seed := range []string{
		"GET /v1/status HTTP/1.1\r\nHost: meshnode\r\n\r\n",
		"POST /v1/ping?peer=b&count=3&timeout=1s HTTP/1.1\r\nHost: meshnode\r\n\r\n",
		"POST /v1/ping?peer=b&count=0 HTTP/1.1\r\nHost: meshnode\r\n\r\n",
		"POST /v1/ping?peer=b&count=99999999999999999999 HTTP/1.1\r\nHost: meshnode\r\n\r\n",
		"POST /v1/ping?peer=b&timeout=-1s HTTP/1.1\r\nHost: meshnode\r\n\r\n",
		"POST /v1/ping?peer=%zz HTTP/1.1\r\nHost: meshnode\r\n\r\n",
		"POST /v1/ping HTTP/1.1\r\nHost: meshnode\r\nContent-Length: 5\r\n\r\nhello",
		"GET /v1/netcheck HTTP/1.1\r\nHost: meshnode\r\n\r\n",
		"POST /v1/down HTTP/1.1\r\nHost: meshnode\r\n\r\n",
		"DELETE /v1/status HTTP/1.1\r\nHost: meshnode\r\n\r\n",
		"GET /../../etc/passwd HTTP/1.1\r\nHost: meshnode\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	s := NewServer(&fuzzBackend{}, slog.New(slog.DiscardHandler))
	h := s.Handler()
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return // the HTTP server would have rejected it before the handler
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		req = req.WithContext(ctx)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code < 200 || rec.Code > 599 {
			t.Fatalf("status %d", rec.Code)
		}
	})
}
