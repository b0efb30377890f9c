// Package coordclient is the client side of the coordinator protocol, for
// nodes and relays: fetch the server info, register with an auth key, open
// the netmap stream (a full map, then deltas), report endpoints, home relay
// and netcheck results, and, for relays, join with a join key and heartbeat.
//
// Every request carries a proof of possession of the caller's private key
// (see netmap.ProofHeader); no bearer secret alone ever authenticates a
// node. TLS is verified by certificate pin, which travels inside every auth
// key and join key, so the coordinator URL plus the key is all a node or
// relay needs. Wherever a URL is taken, a comma-separated list of
// replicas may be given instead (replicas.go).
package coordclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
	"github.com/wiremesh/wiremesh/tlspin"
)

// API paths, as the coordinator serves them.
const (
	pathInfo      = "/coord/v1/info"
	pathRegister  = "/coord/v1/register"
	pathMap       = "/coord/v1/map"
	pathUpdate    = "/coord/v1/update"
	pathRelayJoin = "/coord/v1/relay/join"
	pathRelayBeat = "/coord/v1/relay/heartbeat"
	pathRelayRevs = "/coord/v1/relay/revocations"
	pathLogin     = "/coord/v1/login"
	pathLoginWait = "/coord/v1/login/wait"
)

// maxResponse bounds a non-stream response body (the largest is a join
// response with a region's relays).
const maxResponse = 1 << 20

// requestTimeout bounds every non-stream request.
const requestTimeout = 30 * time.Second

// APIError is a non-2xx answer from the coordinator.
type APIError struct {
	Status  int
	Message string
	Code    netmap.ErrorCode // stable reason, when the coordinator gave one
}

// Sentinels that an *APIError matches with errors.Is, by its Code.
var (
	// ErrNodeUnknown: the coordinator does not know this node key (it was
	// deleted, or never registered).
	ErrNodeUnknown = errors.New("node is not registered (deleted?)")
	// ErrNodeExpired: this node key has expired.
	ErrNodeExpired = errors.New("node key expired")
	// ErrLoginExpired: an interactive login was not approved in time.
	ErrLoginExpired = errors.New("login not approved in time")
)

// Is lets errors.Is(err, ErrNodeUnknown) and errors.Is(err, ErrNodeExpired)
// match a coordinator answer carrying the matching code.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrNodeUnknown:
		return e.Code == netmap.CodeNodeUnknown
	case ErrNodeExpired:
		return e.Code == netmap.CodeNodeExpired
	case ErrLoginExpired:
		return e.Code == netmap.CodeLoginExpired
	}
	return false
}

func (e *APIError) Error() string {
	return fmt.Sprintf("coordinator: %s (HTTP %d)", e.Message, e.Status)
}

// IsUnauthorized reports whether err is a 401 from the coordinator (bad or
// used auth key, expired node key, failed proof).
func IsUnauthorized(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusUnauthorized
}

// NewHTTPClient returns an HTTP client for a coordinator at baseURL: HTTP/2
// over TLS trusting exactly pin for https URLs (or, with an empty pin, a
// certificate the system's CA roots verify for the URL's host name), unencrypted HTTP/2 for http
// URLs (a coordinator started with --insecure-http on loopback). baseURL
// may be a list of replicas. Many Clients may share one; streams multiplex
// on its connections.
func NewHTTPClient(baseURL, pin string) (*http.Client, error) {
	return NewHTTPClientWith(baseURL, pin, Options{})
}

// Options are the less common ways to reach a coordinator.
type Options struct {
	// Control, if set, is called on every socket the client opens before
	// it connects (net.Dialer.Control): a node that accepts subnet routes
	// or uses an exit node marks its sockets so that they bypass its own
	// routing table.
	Control func(network, address string, c syscall.RawConn) error
}

// NewHTTPClientWith is NewHTTPClient with options.
func NewHTTPClientWith(baseURL, pin string, opts Options) (*http.Client, error) {
	urls, err := ParseURLs(baseURL)
	if err != nil {
		return nil, err
	}
	baseURL = urls[0]
	tr := &http.Transport{
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     2 * time.Minute,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	if opts.Control != nil {
		tr.DialContext = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: opts.Control}).DialContext
	}
	var p http.Protocols
	switch {
	case strings.HasPrefix(baseURL, "https://") && pin == "":
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}
		p.SetHTTP2(true)
	case strings.HasPrefix(baseURL, "https://"):
		if !tlspin.ValidPin(pin) {
			return nil, fmt.Errorf("coordclient: %q is not a certificate pin", pin)
		}
		cfg := tlspin.ClientConfig(pin, "", "h2")
		cfg.MinVersion = tls.VersionTLS12
		tr.TLSClientConfig = cfg
		p.SetHTTP2(true)
	case strings.HasPrefix(baseURL, "http://"):
		p.SetUnencryptedHTTP2(true)
	default:
		return nil, fmt.Errorf("coordclient: coordinator URL %q must start with https:// (or http:// for a loopback test server)", baseURL)
	}
	tr.Protocols = &p
	return &http.Client{Transport: tr}, nil
}

// FetchInfo gets the coordinator's public keys, from the first replica
// that answers when baseURL is a list.
func FetchInfo(ctx context.Context, hc *http.Client, baseURL string) (netmap.ServerInfo, error) {
	info, _, err := fetchInfoAny(ctx, hc, baseURL)
	return info, err
}

// fetchInfoAny is FetchInfo that also returns the list and the index of
// the replica that answered.
func fetchInfoAny(ctx context.Context, hc *http.Client, baseURL string) (netmap.ServerInfo, *replicaSet, error) {
	urls, err := ParseURLs(baseURL)
	if err != nil {
		return netmap.ServerInfo{}, nil, err
	}
	rs := newReplicaSet(urls, 0)
	var info netmap.ServerInfo
	err = rs.eachReplica(ctx, func(u string) error {
		var err error
		info, err = fetchInfo(ctx, hc, u)
		return err
	})
	return info, rs, err
}

func fetchInfo(ctx context.Context, hc *http.Client, baseURL string) (netmap.ServerInfo, error) {
	var info netmap.ServerInfo
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", baseURL+pathInfo, nil)
	if err != nil {
		return info, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return info, fmt.Errorf("coordinator info: %w", err)
	}
	defer resp.Body.Close()
	if err := readResponse(resp, &info); err != nil {
		return info, err
	}
	if info.Key.IsZero() {
		return info, errors.New("coordinator info: no key")
	}
	return info, nil
}

func readResponse(resp *http.Response, v any) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("coordinator: read response: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var er netmap.ErrorResponse
		if json.Unmarshal(b, &er) != nil || er.Error == "" {
			er.Error = strings.TrimSpace(string(b))
		}
		return &APIError{Status: resp.StatusCode, Message: er.Error, Code: er.Code}
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("coordinator: decode response: %w", err)
	}
	return nil
}

// prover signs requests with a private key of some kind, and sends them
// to the replica in use.
type prover struct {
	rs     *replicaSet
	hc     *http.Client
	pub    string
	shared key.SharedKey
	now    func() time.Time
}

func (p *prover) newRequest(ctx context.Context, base, path string, body []byte) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(netmap.ProofHeader, netmap.MakeProof(&p.shared, p.pub, "POST", path, body, p.now()))
	return req, nil
}

// post sends v to path and decodes the answer into out.
func (p *prover) post(ctx context.Context, path string, v, out any, hdr http.Header) error {
	return p.postWith(ctx, path, v, out, hdr, requestTimeout)
}

// postTimeout is post with its own time limit, for long polls.
func (p *prover) postTimeout(ctx context.Context, path string, v, out any, limit time.Duration) error {
	return p.postWith(ctx, path, v, out, nil, limit)
}

func (p *prover) postWith(ctx context.Context, path string, v, out any, hdr http.Header, limit time.Duration) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	// Every request of this protocol is idempotent (a registration of a
	// registered key returns the node), so a replica that did not answer
	// can be skipped for the next one.
	return p.rs.eachReplica(ctx, func(base string) error {
		ctx, cancel := context.WithTimeout(ctx, limit)
		defer cancel()
		req, err := p.newRequest(ctx, base, path, body)
		if err != nil {
			return err
		}
		for k, vs := range hdr {
			req.Header[k] = vs
		}
		resp, err := p.hc.Do(req)
		if err != nil {
			return fmt.Errorf("coordinator %s%s: %w", base, path, err)
		}
		defer resp.Body.Close()
		return readResponse(resp, out)
	})
}

// Client is a node's connection to the coordinator.
type Client struct {
	p    prover
	Info netmap.ServerInfo
}

// New returns a node client for baseURL (one URL or a list of replicas)
// using hc (see NewHTTPClient) and info (see FetchInfo); clients of many
// simulated nodes share both. A malformed list leaves the client with
// the text as its one URL, whose requests then fail.
func New(baseURL string, hc *http.Client, info netmap.ServerInfo, priv key.NodePrivate) *Client {
	urls, err := ParseURLs(baseURL)
	if err != nil {
		urls = []string{baseURL}
	}
	return newClient(newReplicaSet(urls, 0), hc, info, priv)
}

func newClient(rs *replicaSet, hc *http.Client, info netmap.ServerInfo, priv key.NodePrivate) *Client {
	return &Client{
		p:    prover{rs: rs, hc: hc, pub: priv.Public().String(), shared: key.Precompute(priv, info.Key), now: time.Now},
		Info: info,
	}
}

// Dial makes an HTTP client trusting pin, fetches the server info (from
// the first replica that answers) and returns a node client that starts
// on that replica.
func Dial(ctx context.Context, baseURL, pin string, priv key.NodePrivate) (*Client, error) {
	return DialWith(ctx, baseURL, pin, priv, Options{})
}

// DialWith is Dial with options.
func DialWith(ctx context.Context, baseURL, pin string, priv key.NodePrivate, opts Options) (*Client, error) {
	hc, err := NewHTTPClientWith(baseURL, pin, opts)
	if err != nil {
		return nil, err
	}
	info, rs, err := fetchInfoAny(ctx, hc, baseURL)
	if err != nil {
		return nil, err
	}
	return newClient(rs, hc, info, priv), nil
}

// Replica returns the URL of the replica the client uses now.
func (c *Client) Replica() string { _, u := c.p.rs.current(); return u }

// DialWithAuthKey is Dial with the pin taken from an auth key.
func DialWithAuthKey(ctx context.Context, baseURL, authKey string, priv key.NodePrivate) (*Client, error) {
	_, pin, err := netmap.ParseAuthKey(authKey)
	if err != nil {
		return nil, err
	}
	return Dial(ctx, baseURL, pin, priv)
}

// Register registers the node with an auth key (the whole text form). A node
// already registered gets its existing record back without using the key.
func (c *Client) Register(ctx context.Context, authKey string, disco key.DiscoPublic, hostname, os string) (*netmap.RegisterResponse, error) {
	req := netmap.RegisterRequest{
		Version: netmap.CurrentCapabilityVersion, AuthKey: authKey,
		NodeKey: mustNodeKey(c.p.pub), DiscoKey: disco, Hostname: hostname, OS: os,
	}
	var resp netmap.RegisterResponse
	if err := c.p.post(ctx, pathRegister, req, &resp, nil); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Login starts an interactive login (the node has no auth key): the
// answer's URL is for the node's user to open and approve.
func (c *Client) Login(ctx context.Context, hostname, os string) (*netmap.LoginResponse, error) {
	req := netmap.LoginRequest{Version: netmap.CurrentCapabilityVersion, NodeKey: mustNodeKey(c.p.pub), Hostname: hostname, OS: os}
	var resp netmap.LoginResponse
	if err := c.p.post(ctx, pathLogin, req, &resp, nil); err != nil {
		return nil, err
	}
	return &resp, nil
}

// loginWaitLimit bounds one long poll; the coordinator answers "pending"
// well before (after netmap's LoginPollWindow).
const loginWaitLimit = 2 * time.Minute

// LoginWait waits until the login with code is approved and returns the
// auth key it carries, opened with priv. It asks again while the answer is
// "pending", and returns an error matching ErrLoginExpired once the login
// has expired unapproved.
func (c *Client) LoginWait(ctx context.Context, code string, priv key.NodePrivate) (authKey, user string, err error) {
	for {
		var resp netmap.LoginWaitResponse
		if err := c.p.postTimeout(ctx, pathLoginWait, netmap.LoginWaitRequest{Code: code}, &resp, loginWaitLimit); err != nil {
			return "", "", err
		}
		switch resp.Status {
		case netmap.LoginPending:
			continue
		case netmap.LoginApproved:
			text, err := key.Open(priv, c.Info.Key, resp.SealedAuthKey)
			if err != nil {
				return "", "", fmt.Errorf("open the approved login's auth key: %w", err)
			}
			return string(text), resp.User, nil
		}
		return "", "", fmt.Errorf("coordinator: unknown login status %q", resp.Status)
	}
}

func mustNodeKey(s string) key.NodePublic {
	k, _ := key.ParseNodePublic(s)
	return k
}

// Update reports endpoints, home relay or a netcheck result; nil fields are
// unchanged.
func (c *Client) Update(ctx context.Context, u netmap.UpdateRequest) error {
	return c.p.post(ctx, pathUpdate, u, nil, nil)
}

// Stream is an open netmap stream.
type Stream struct {
	body io.ReadCloser
	fr   *netmap.FrameReader
}

// OpenStream opens the netmap stream on the replica in use, moving to the
// next ones while a replica does not answer. The first frame is a full
// map. The stream lives until ctx ends, Close is called or the server ends
// it.
func (c *Client) OpenStream(ctx context.Context, mr netmap.MapRequest) (*Stream, error) {
	mr.Version = netmap.CurrentCapabilityVersion
	body, err := json.Marshal(mr)
	if err != nil {
		return nil, err
	}
	var st *Stream
	err = c.p.rs.eachReplica(ctx, func(base string) error {
		req, err := c.p.newRequest(ctx, base, pathMap, body)
		if err != nil {
			return err
		}
		resp, err := c.p.hc.Do(req)
		if err != nil {
			return fmt.Errorf("coordinator %s map stream: %w", base, err)
		}
		if resp.StatusCode != http.StatusOK {
			defer resp.Body.Close()
			return readResponse(resp, nil)
		}
		st = &Stream{body: resp.Body, fr: netmap.NewFrameReader(resp.Body)}
		return nil
	})
	return st, err
}

// NextRaw returns the next frame's JSON; valid until the next call.
func (s *Stream) NextRaw() ([]byte, error) { return s.fr.Next() }

// Next returns the next frame, decoded.
func (s *Stream) Next() (*netmap.MapResponse, error) { return s.fr.ReadMapResponse() }

// Close ends the stream.
func (s *Stream) Close() error { return s.body.Close() }

// Watch opens the stream and calls fn with the updated map after every
// frame until ctx ends, fn returns an error, or the stream fails. With
// several replicas, a stream that breaks after it has delivered its full
// map is reopened on the next replica (which sends a full map again);
// Watch returns the error only when no replica gives a stream.
func (c *Client) Watch(ctx context.Context, mr netmap.MapRequest, fn func(*netmap.NetworkMap, *netmap.MapResponse) error) error {
	backoff := moveBackoffMin
	for {
		got, err := c.watchOnce(ctx, mr, fn)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var fnErr *callbackError
		if errors.As(err, &fnErr) {
			return fnErr.err
		}
		if !got || len(c.p.rs.urls) == 1 || !replicaDown(err, 0) {
			return err
		}
		// The replica stopped answering mid-stream: move on.
		i, _ := c.p.rs.current()
		c.p.rs.failed(i)
		if err := pause(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, moveBackoffMax)
	}
}

// callbackError carries an error of Watch's callback, which ends Watch.
type callbackError struct{ err error }

func (e *callbackError) Error() string { return e.err.Error() }

// watchOnce runs one stream; got reports whether it delivered a frame.
func (c *Client) watchOnce(ctx context.Context, mr netmap.MapRequest, fn func(*netmap.NetworkMap, *netmap.MapResponse) error) (got bool, err error) {
	s, err := c.OpenStream(ctx, mr)
	if err != nil {
		return false, err
	}
	defer s.Close()
	var nm netmap.NetworkMap
	for {
		m, err := s.Next()
		if err != nil {
			if ctx.Err() != nil {
				return got, ctx.Err()
			}
			return got, err
		}
		got = true
		if err := nm.Apply(m); err != nil {
			return got, err
		}
		if err := fn(&nm, m); err != nil {
			return got, &callbackError{err}
		}
	}
}
