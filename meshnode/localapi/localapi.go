// Package localapi is the meshnode daemon's local control interface: HTTP
// over a unix socket (DIR/meshnode.sock, mode 0600) that the meshnode CLI
// uses for status, ping, netcheck, dns query, ip, whois and down. The JSON types here
// are the ones documented for `--json` output in docs/meshnode.md.
//
// Who may use it: root and the user the daemon runs as. The socket's mode
// says so to the file system, and every connection's peer credentials
// (SO_PEERCRED, from the kernel) are checked as well, so a socket made
// reachable by a permissive directory, a bind mount or a changed mode still
// refuses other users: they get 403 and no handler runs.
package localapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"
)

// SocketName is the socket's file name inside the state directory.
const SocketName = "meshnode.sock"

// Status is `meshnode status --json`.
type Status struct {
	Self        Self         `json:"self"`
	Coordinator Coordinator  `json:"coordinator"`
	Peers       []PeerStatus `json:"peers"`
	// DNS is MagicDNS's state (absent from daemons without it).
	DNS *DNSStatus `json:"dns,omitempty"`
}

// Self describes this node.
type Self struct {
	Name      string   `json:"name"`
	IPs       []string `json:"ips"`
	NodeKey   string   `json:"node_key"`
	HomeRelay string   `json:"home_relay"`
	// ExitNode is the exit node in use (--exit-node, by name), empty when
	// none; ExitNodeUp whether it answers now (while it does not, all
	// traffic for it stops).
	ExitNode   string `json:"exit_node"`
	ExitNodeUp bool   `json:"exit_node_up"`
}

// Coordinator is the control-plane connection state.
type Coordinator struct {
	Connected bool `json:"connected"`
	// LastError is the last stream error while disconnected.
	LastError string `json:"last_error,omitempty"`
}

// PeerStatus describes one peer. Path is "direct", "relay" or "none";
// Endpoint is set when Path is direct, Relay (a region code) when relay.
type PeerStatus struct {
	Name          string     `json:"name"`
	IPs           []string   `json:"ips"`
	NodeKey       string     `json:"node_key"`
	Online        bool       `json:"online"`
	Path          string     `json:"path"`
	Endpoint      string     `json:"endpoint,omitempty"`
	Relay         string     `json:"relay,omitempty"`
	RTTMs         float64    `json:"rtt_ms"`
	RxBytes       uint64     `json:"rx_bytes"`
	TxBytes       uint64     `json:"tx_bytes"`
	LastHandshake *time.Time `json:"last_handshake"`
	// Routes are the approved subnet routes this peer is the primary
	// router for, as this node chose; ExitNodeOption whether it offers
	// this node an exit node.
	Routes         []string `json:"routes"`
	ExitNodeOption bool     `json:"exit_node_option"`
}

// PingResult is one line of `meshnode ping --json`.
type PingResult struct {
	Peer  string  `json:"peer"`
	IP    string  `json:"ip"`
	Path  string  `json:"path"`
	Via   string  `json:"via"`
	RTTMs float64 `json:"rtt_ms"`
	// Error is set on a ping that got no pong (not printed on success).
	Error string `json:"error,omitempty"`
}

// Netcheck is `meshnode netcheck --json`.
type Netcheck struct {
	UDP                 bool               `json:"udp"`
	PublicAddr          string             `json:"public_addr"`
	MappingVariesByDest bool               `json:"mapping_varies_by_dest"`
	PreferredRelay      string             `json:"preferred_relay"`
	RelayLatencyMS      map[string]float64 `json:"relay_latency_ms"`
	PortMapping         string             `json:"port_mapping"`
}

// PingRequest parameterises Backend.Ping.
type PingRequest struct {
	Peer    string
	Count   int
	Timeout time.Duration
}

// Backend is what the daemon provides to the local API.
type Backend interface {
	Status() Status
	// Ping sends disco pings to the peer and calls emit per result. It
	// stops after Count pings or once a pong arrives over a direct path.
	Ping(ctx context.Context, req PingRequest, emit func(PingResult)) error
	// Netcheck probes every relay region now.
	Netcheck(ctx context.Context) (Netcheck, error)
	// Down asks the daemon to shut down.
	Down()
}

// ErrNotFound is returned (HTTP 404) for an unknown peer or address.
var ErrNotFound = errors.New("no such peer")

type apiError struct {
	Error string `json:"error"`
}

// Server serves the local API.
type Server struct {
	b   Backend
	log *slog.Logger
}

// NewServer returns a server for b.
func NewServer(b Backend, log *slog.Logger) *Server { return &Server{b: b, log: log} }

// Listen creates the unix socket at path (replacing a stale one) with mode
// 0600.
func Listen(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("localapi: remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("localapi: listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Serve serves on ln until ctx is done. On a unix socket, requests from
// users other than root and the daemon's own are refused (403) without
// reaching a handler.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	h := s.Handler()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, MaxHeaderBytes: maxHeaderBytes}
	if _, ok := ln.(*net.UnixListener); ok {
		srv.ConnContext = credContext(uint32(os.Getuid()))
		srv.Handler = requireCred(h, s.log)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-errc
		return nil
	case err := <-errc:
		return err
	}
}

// maxHeaderBytes bounds a request's header: the CLI sends a few hundred
// bytes.
const maxHeaderBytes = 64 << 10

// allowUID is the access rule: root, or the daemon's own user.
func allowUID(self uint32) func(uint32) bool {
	return func(uid uint32) bool { return uid == 0 || uid == self }
}

type credKey struct{}

// credDenied is what credContext records for a refused connection.
type credDenied struct{ msg string }

// credContext checks each new connection's peer credentials once and
// records a refusal in the connection's context.
func credContext(self uint32) func(ctx context.Context, c net.Conn) context.Context {
	allow := allowUID(self)
	return func(ctx context.Context, c net.Conn) context.Context {
		uid, err := peerUID(c)
		switch {
		case err != nil:
			return context.WithValue(ctx, credKey{}, credDenied{"permission denied: " + err.Error()})
		case !allow(uid):
			return context.WithValue(ctx, credKey{}, credDenied{fmt.Sprintf(
				"permission denied: uid %d may not use this meshnode (only root and uid %d may)", uid, self)})
		}
		return ctx
	}
}

// requireCred answers 403 on connections credContext refused, and closes
// them.
func requireCred(h http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d, ok := r.Context().Value(credKey{}).(credDenied); ok {
			if log != nil {
				log.Warn("local api: refused client", "err", d.msg)
			}
			w.Header().Set("Connection", "close")
			writeJSON(w, http.StatusForbidden, apiError{d.msg})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Handler returns the API's HTTP handler (without the credential check,
// which is Serve's).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.b.Status())
	})
	mux.HandleFunc("POST /v1/ping", s.servePing)
	mux.HandleFunc("GET /v1/netcheck", func(w http.ResponseWriter, r *http.Request) {
		nc, err := s.b.Netcheck(r.Context())
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, apiError{err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, nc)
	})
	mux.HandleFunc("GET /v1/dns/query", s.serveDNSQuery)
	mux.HandleFunc("POST /v1/down", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, struct{}{})
		s.b.Down()
	})
	return mux
}

// maxPings bounds one ping request.
const maxPings = 1000

func (s *Server) servePing(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := PingRequest{Peer: q.Get("peer"), Count: 10, Timeout: 5 * time.Second}
	if v := q.Get("count"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPings {
			writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("count must be 1 to %d", maxPings)})
			return
		}
		req.Count = n
	}
	if v := q.Get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			writeJSON(w, http.StatusBadRequest, apiError{"bad timeout " + strconv.Quote(v)})
			return
		}
		req.Timeout = d
	}
	if req.Peer == "" {
		writeJSON(w, http.StatusBadRequest, apiError{"peer is required"})
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	flusher, _ := w.(http.Flusher)
	started := false
	enc := json.NewEncoder(w)
	err := s.b.Ping(r.Context(), req, func(pr PingResult) {
		if !started {
			w.WriteHeader(http.StatusOK)
			started = true
		}
		enc.Encode(pr)
		if flusher != nil {
			flusher.Flush()
		}
	})
	if err != nil && !started {
		code := http.StatusBadGateway
		if errors.Is(err, ErrNotFound) {
			code = http.StatusNotFound
		}
		writeJSON(w, code, apiError{err.Error()})
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Client talks to a daemon's local API.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{Socket: path, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values) (*http.Response, error) {
	u := "http://meshnode" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach meshnode at %s (is `meshnode run` running?): %w", c.Socket, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e apiError
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("meshnode: %s", resp.Status)
	}
	return resp, nil
}

func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	resp, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decodeJSON(resp, v)
}

func decodeJSON(resp *http.Response, v any) error {
	return json.NewDecoder(resp.Body).Decode(v)
}

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.getJSON(ctx, "/v1/status", &s)
}

// Netcheck asks the daemon to probe every relay region.
func (c *Client) Netcheck(ctx context.Context) (Netcheck, error) {
	var n Netcheck
	return n, c.getJSON(ctx, "/v1/netcheck", &n)
}

// Down asks the daemon to exit.
func (c *Client) Down(ctx context.Context) error {
	resp, err := c.do(ctx, http.MethodPost, "/v1/down", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Ping runs a ping and calls fn per result line.
func (c *Client) Ping(ctx context.Context, req PingRequest, fn func(PingResult)) error {
	q := url.Values{"peer": {req.Peer}}
	if req.Count > 0 {
		q.Set("count", strconv.Itoa(req.Count))
	}
	if req.Timeout > 0 {
		q.Set("timeout", req.Timeout.String())
	}
	resp, err := c.do(ctx, http.MethodPost, "/v1/ping", q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var pr PingResult
		if err := json.Unmarshal(sc.Bytes(), &pr); err != nil {
			return fmt.Errorf("ping: bad line from daemon: %w", err)
		}
		fn(pr)
	}
	return sc.Err()
}
