package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/dnsconf"
	"github.com/wiremesh/wiremesh/coordinator/policy"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/netmap"
)

// The admin socket: HTTP with JSON over a Unix socket in the state
// directory, made with mode 0600. Each connection's peer credentials
// (SO_PEERCRED) are checked too: only root and the coordinator's own user
// get in, even if someone loosens the file mode.

// Admin API paths (on the admin socket only).
const (
	AdminPathAuthKey  = "/admin/v1/authkey"
	AdminPathRelayKey = "/admin/v1/relaykey"
	// AdminPathRelayKeys lists join keys; AdminPathRelayKeyRevoke revokes one.
	AdminPathRelayKeys      = "/admin/v1/relaykeys"
	AdminPathRelayKeyRevoke = "/admin/v1/relaykey/revoke"
	AdminPathNodes          = "/admin/v1/nodes"
	AdminPathDelete         = "/admin/v1/nodes/delete"
	AdminPathExpire         = "/admin/v1/nodes/expire"
	AdminPathRelays         = "/admin/v1/relays"
	AdminPathPolicy         = "/admin/v1/policy"
	// AdminPathAuthKeys lists auth keys (GET).
	AdminPathAuthKeys = "/admin/v1/authkeys"
	// AdminPathRevoke revokes an auth key (POST IDRequest).
	AdminPathRevoke = "/admin/v1/authkeys/revoke"
	// AdminPathUsers lists users (GET) or creates one (POST UserRequest).
	AdminPathUsers = "/admin/v1/users"
	// AdminPathUserDelete deletes a user (POST UserRequest).
	AdminPathUserDelete = "/admin/v1/users/delete"
	// AdminPathWebLogin makes a console sign-in link (POST WebLoginRequest).
	AdminPathWebLogin = "/admin/v1/web/login"
	// AdminPathDNS reads the DNS settings (GET, JSON as dnsconf.Format
	// writes it) or replaces them (PUT, a HuJSON document).
	AdminPathDNS = "/admin/v1/dns"
	// AdminPathRoutes lists routes (GET).
	AdminPathRoutes = "/admin/v1/routes"
	// AdminPathRouteApprove and AdminPathRouteUnapprove take a
	// RouteRequest (POST).
	AdminPathRouteApprove   = "/admin/v1/routes/approve"
	AdminPathRouteUnapprove = "/admin/v1/routes/unapprove"
)

// WebLoginRequest asks for a one-time console sign-in link; an empty User
// signs in as an admin.
type WebLoginRequest struct {
	User string `json:"user,omitempty"`
}

// WebLoginResponse carries the link.
type WebLoginResponse struct {
	URL string `json:"url"`
}

// maxAdminBody bounds admin requests; a policy is the largest (DNS
// settings are bounded by dnsconf.MaxFileSize, well under it).
const maxAdminBody = policy.MaxSize + 4<<10

func listenAdmin(path string) (net.Listener, error) {
	// A socket that answers belongs to a running coordinator on the same
	// state directory: two would corrupt each other's view of the database.
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another coordinator is running with this --state-dir (%s answers)", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	old := syscall.Umask(0o077)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return &credListener{Listener: ln, uid: os.Geteuid()}, nil
}

// credListener drops connections from users other than root and uid.
type credListener struct {
	net.Listener
	uid int
}

func (l *credListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			return c, nil
		}
		if uid, err := peerUID(uc); err == nil && (uid == 0 || uid == l.uid) {
			return c, nil
		}
		c.Close()
	}
}

func peerUID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *syscall.Ucred
	var cerr error
	err = raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}

// AuthKeyRequest asks for a new auth key.
type AuthKeyRequest struct {
	Reusable  bool     `json:"reusable"`
	Ephemeral bool     `json:"ephemeral"`
	Tags      []string `json:"tags,omitempty"`
	Expiry    string   `json:"expiry,omitempty"` // Go duration; empty: never
	// User gets the nodes registered with the key. Empty: admin@, or, for
	// a tagged key, no user (the nodes are owned by their tags).
	User string `json:"user,omitempty"`
}

// KeyResponse carries a newly made key.
type KeyResponse struct {
	Key     string    `json:"key"`
	ID      int64     `json:"id,omitempty"` // auth keys: the ID authkey list shows
	Expires time.Time `json:"expires,omitzero"`
}

// RelayKeyRequest asks for a relay join key.
type RelayKeyRequest struct {
	Region     string `json:"region"`
	RegionName string `json:"region_name,omitempty"`
	// Expiry is a Go duration; empty takes DefaultJoinKeyExpiry, "0"
	// means never.
	Expiry string `json:"expiry,omitempty"`
}

// DefaultJoinKeyExpiry is how long a join key works when made without
// --expiry: 30 days. A relay needs its join key only to join the first
// time (it then authenticates with its relay key, restarts included), so
// a key that outlives a provisioning round is only a liability.
const DefaultJoinKeyExpiry = 30 * 24 * time.Hour

// JoinKeyInfo is one row of `relaykey list`: never the secret.
type JoinKeyInfo struct {
	ID      int64     `json:"id"`
	Region  string    `json:"region"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"`
	Expired bool      `json:"expired"`
	Revoked bool      `json:"revoked"`
}

// IDRequest names one key by ID.
type IDRequest struct {
	ID int64 `json:"id"`
}

// NameRequest names one node.
type NameRequest struct {
	Name string `json:"name"`
}

// NodeInfo is one row of `nodes list`.
type NodeInfo struct {
	Name string `json:"name"`
	// User owns the node; empty for a node owned by its tags.
	User      string    `json:"user"`
	IP        string    `json:"ip"`
	Online    bool      `json:"online"`
	LastSeen  time.Time `json:"last_seen,omitzero"`
	Tags      []string  `json:"tags"`
	KeyExpiry time.Time `json:"key_expiry,omitzero"`
	Expired   bool      `json:"expired"`
	HomeRelay string    `json:"home_relay"`
	NodeKey   string    `json:"node_key"`
	Hostname  string    `json:"hostname"`
	OS        string    `json:"os"`
	Ephemeral bool      `json:"ephemeral"`
	Endpoints []string  `json:"endpoints"`
	// Replica is the ID of the replica holding the node's stream (the
	// answering replica's own ID when it holds it; "local" with SQLite);
	// empty when offline.
	Replica string `json:"replica,omitempty"`
	// Netcheck is the node's last netcheck report, as it sent it.
	Netcheck json.RawMessage `json:"netcheck,omitempty"`
}

// CreateAuthKey makes a pre-auth key and returns its text form.
func (srv *Server) CreateAuthKey(ctx context.Context, req AuthKeyRequest) (KeyResponse, error) {
	now := srv.now()
	k := &store.AuthKey{Reusable: req.Reusable, Ephemeral: req.Ephemeral, Created: now, User: req.User}
	if req.User != "" && !policy.ValidUser(req.User) {
		return KeyResponse{}, fmt.Errorf("--user %q: want a login such as alice@example.com", req.User)
	}
	for _, t := range req.Tags {
		if !strings.HasPrefix(t, "tag:") || !validLabel(t[4:]) {
			return KeyResponse{}, fmt.Errorf("--tags: %q is not a tag (want tag:name, lower case)", t)
		}
		k.Tags = append(k.Tags, t)
	}
	if req.Expiry != "" {
		d, err := time.ParseDuration(req.Expiry)
		if err != nil || d <= 0 {
			return KeyResponse{}, fmt.Errorf("--expiry %q: want a positive Go duration such as 24h", req.Expiry)
		}
		k.Expires = now.Add(d)
	}
	if k.User == "" && len(k.Tags) == 0 {
		k.User = store.AdminUser
	}
	sec := netmap.NewSecret()
	k.Hash = sec.Hash()
	if err := srv.store.CreateAuthKey(ctx, k); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return KeyResponse{}, fmt.Errorf("--user %s: no such user; create it first with `coordinator users create %s`", req.User, req.User)
		}
		return KeyResponse{}, err
	}
	srv.audit(ctx, "authkey create", authKeyTarget(k))
	return KeyResponse{Key: netmap.FormatAuthKey(sec, srv.pin), Expires: k.Expires, ID: k.ID}, nil
}

// Nodes lists every node, sorted by name.
func (srv *Server) Nodes() []NodeInfo {
	now := srv.now()
	st := srv.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	out := make([]NodeInfo, 0, len(st.nodes))
	for _, n := range st.nodes {
		ni := NodeInfo{
			Name: n.rec.Name, IP: n.rec.IP.String(), Online: n.online(), User: n.rec.User, LastSeen: n.rec.LastSeen,
			Tags: n.rec.Tags, KeyExpiry: n.rec.KeyExpiry, Expired: n.expired(now), HomeRelay: n.rec.HomeRelay,
			NodeKey: n.rec.NodeKey, Hostname: n.rec.Hostname, OS: n.rec.OS, Ephemeral: n.rec.Ephemeral,
			Endpoints: []string{}, Netcheck: n.rec.Netcheck,
		}
		if ni.Tags == nil {
			ni.Tags = []string{}
		}
		switch {
		case n.sess != nil:
			ni.Replica = srv.ReplicaID()
		case n.remote != "":
			ni.Replica = n.remote
		}
		for _, e := range n.rec.Endpoints {
			ni.Endpoints = append(ni.Endpoints, e.String())
		}
		out = append(out, ni)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ReplicaID names this replica among those sharing the database ("local"
// with SQLite).
func (srv *Server) ReplicaID() string {
	if srv.shared == nil {
		return "local"
	}
	return srv.shared.ReplicaID()
}

// DeleteNode deletes a node by name; its peers drop it at once.
func (srv *Server) DeleteNode(ctx context.Context, name string) error {
	if err := srv.deleteNode(ctx, name, false); err != nil {
		return err
	}
	srv.audit(ctx, "nodes delete", name)
	return nil
}

// ExpireNode expires a node's key now.
func (srv *Server) ExpireNode(ctx context.Context, name string) error {
	if err := srv.expireNode(ctx, name); err != nil {
		return err
	}
	srv.audit(ctx, "nodes expire", name)
	return nil
}

// authKeyTarget describes an auth key in the audit log (never its secret).
func authKeyTarget(k *store.AuthKey) string {
	s := fmt.Sprintf("key %d", k.ID)
	if k.User != "" {
		s += " user " + k.User
	}
	if len(k.Tags) > 0 {
		s += " tags " + strings.Join(k.Tags, ",")
	}
	return s
}

// AdminHandler returns the admin socket's handler, for tests that drive it
// without a socket.
func (srv *Server) AdminHandler() http.Handler { return srv.adminHandler() }

func (srv *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	// Changes through the socket are the CLI's (audit.go).
	cli := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.ServeHTTP(w, r.WithContext(withActor(r.Context(), "cli")))
		})
	}
	mux.HandleFunc("POST "+AdminPathAuthKey, func(w http.ResponseWriter, r *http.Request) {
		var req AuthKeyRequest
		if !adminDecode(w, r, &req) {
			return
		}
		resp, err := srv.CreateAuthKey(r.Context(), req)
		adminReply(w, resp, err)
	})
	mux.HandleFunc("POST "+AdminPathRelayKey, func(w http.ResponseWriter, r *http.Request) {
		var req RelayKeyRequest
		if !adminDecode(w, r, &req) {
			return
		}
		resp, err := srv.CreateRelayKey(r.Context(), req)
		adminReply(w, resp, err)
	})
	mux.HandleFunc("GET "+AdminPathRelayKeys, func(w http.ResponseWriter, r *http.Request) {
		keys, err := srv.JoinKeys(r.Context())
		adminReply(w, keys, err)
	})
	mux.HandleFunc("POST "+AdminPathRelayKeyRevoke, func(w http.ResponseWriter, r *http.Request) {
		var req IDRequest
		if !adminDecode(w, r, &req) {
			return
		}
		adminReply(w, struct{}{}, srv.RevokeJoinKey(r.Context(), req.ID))
	})
	mux.HandleFunc("GET "+AdminPathNodes, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, srv.Nodes())
	})
	mux.HandleFunc("POST "+AdminPathDelete, func(w http.ResponseWriter, r *http.Request) {
		var req NameRequest
		if !adminDecode(w, r, &req) {
			return
		}
		adminReply(w, struct{}{}, srv.DeleteNode(r.Context(), req.Name))
	})
	mux.HandleFunc("POST "+AdminPathExpire, func(w http.ResponseWriter, r *http.Request) {
		var req NameRequest
		if !adminDecode(w, r, &req) {
			return
		}
		adminReply(w, struct{}{}, srv.ExpireNode(r.Context(), req.Name))
	})
	mux.HandleFunc("GET "+AdminPathRelays, func(w http.ResponseWriter, r *http.Request) {
		out := srv.Relays()
		if out == nil {
			out = []RelayInfo{}
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET "+AdminPathPolicy, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/hujson")
		w.Write([]byte(srv.Policy()))
	})
	mux.HandleFunc("PUT "+AdminPathPolicy, func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r, maxAdminBody)
		if err != nil {
			srv.fail(w, r, err)
			return
		}
		adminReply(w, struct{}{}, srv.SetPolicy(r.Context(), body))
	})
	mux.HandleFunc("GET "+AdminPathDNS, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(dnsconf.Format(srv.DNS()))
	})
	mux.HandleFunc("PUT "+AdminPathDNS, func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r, maxAdminBody)
		if err != nil {
			srv.fail(w, r, err)
			return
		}
		adminReply(w, struct{}{}, srv.SetDNSText(r.Context(), body))
	})
	mux.HandleFunc("GET "+AdminPathAuthKeys, func(w http.ResponseWriter, r *http.Request) {
		keys, err := srv.AuthKeys(r.Context())
		adminReply(w, keys, err)
	})
	mux.HandleFunc("POST "+AdminPathRevoke, func(w http.ResponseWriter, r *http.Request) {
		var req IDRequest
		if !adminDecode(w, r, &req) {
			return
		}
		adminReply(w, struct{}{}, srv.RevokeAuthKey(r.Context(), req.ID))
	})
	mux.HandleFunc("GET "+AdminPathUsers, func(w http.ResponseWriter, r *http.Request) {
		users, err := srv.Users(r.Context())
		adminReply(w, users, err)
	})
	mux.HandleFunc("POST "+AdminPathUsers, func(w http.ResponseWriter, r *http.Request) {
		var req UserRequest
		if !adminDecode(w, r, &req) {
			return
		}
		adminReply(w, struct{}{}, srv.CreateUser(r.Context(), req.Name))
	})
	mux.HandleFunc("POST "+AdminPathUserDelete, func(w http.ResponseWriter, r *http.Request) {
		var req UserRequest
		if !adminDecode(w, r, &req) {
			return
		}
		n, err := srv.DeleteUser(r.Context(), req.Name, req.Force)
		adminReply(w, struct {
			NodesDeleted int `json:"nodes_deleted"`
		}{n}, err)
	})
	mux.HandleFunc("POST "+AdminPathWebLogin, func(w http.ResponseWriter, r *http.Request) {
		var req WebLoginRequest
		if !adminDecode(w, r, &req) {
			return
		}
		u, err := srv.WebSignIn(r.Context(), req.User)
		adminReply(w, WebLoginResponse{URL: u}, err)
	})
	mux.HandleFunc("GET "+AdminPathRoutes, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, srv.Routes())
	})
	for path, approve := range map[string]bool{AdminPathRouteApprove: true, AdminPathRouteUnapprove: false} {
		mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
			var req RouteRequest
			if !adminDecode(w, r, &req) {
				return
			}
			adminReply(w, struct{}{}, srv.ApproveRoute(r.Context(), req.Node, req.Prefix, approve))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such admin endpoint: %s %s", r.Method, r.URL.Path))
	})
	return cli(mux)
}

func adminDecode(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := readBody(w, r, maxAdminBody)
	if err == nil {
		err = decodeJSON(body, v)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return false
	}
	return true
}

func adminReply(w http.ResponseWriter, v any, err error) {
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, v)
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, store.ErrUnavailable):
		writeError(w, http.StatusServiceUnavailable, "coordinator database unavailable: "+err.Error())
	default:
		// Admin errors are the operator's own input (bad policy, bad flag
		// value) or store failures; the message is what they need either way.
		writeError(w, http.StatusBadRequest, err.Error())
	}
}
