package localapi

import (
	"context"
	"errors"
	"net/http"
	"net/url"
)

// DNSStatus is status's "dns" object: the MagicDNS mode ("resolved",
// "file", "userspace" or "off"), the mesh domain, the resolver's address
// and the DNS health warning (empty when healthy).
type DNSStatus struct {
	Mode     string `json:"mode"`
	Domain   string `json:"domain,omitempty"`
	Resolver string `json:"resolver,omitempty"`
	Health   string `json:"health,omitempty"`
}

// DNSAnswer is `meshnode dns query --json`: the name asked (after the
// search list), the type, the response code, the records (one per line,
// in zone-file form) and the source that answered (mesh, ptr, extra,
// split, global, os or none).
type DNSAnswer struct {
	Name    string   `json:"name"`
	Type    string   `json:"type"`
	Rcode   string   `json:"rcode"`
	Source  string   `json:"source"`
	Answers []string `json:"answers"`
}

// DNSBackend is implemented by a daemon that runs MagicDNS.
type DNSBackend interface {
	// DNSQuery asks the node's resolver, as a program on the node would.
	DNSQuery(ctx context.Context, name, qtype string) (DNSAnswer, error)
}

// ErrBadRequest marks a request the daemon refuses as malformed (HTTP
// 400).
var ErrBadRequest = errors.New("bad request")

// maxDNSName bounds the name of a query (a DNS name is at most 253
// characters; more is refused before the resolver sees it).
const maxDNSName = 255

func (s *Server) serveDNSQuery(w http.ResponseWriter, r *http.Request) {
	db, ok := s.b.(DNSBackend)
	if !ok {
		writeJSON(w, http.StatusNotImplemented, apiError{"this daemon has no DNS resolver"})
		return
	}
	q := r.URL.Query()
	name, qtype := q.Get("name"), q.Get("type")
	if qtype == "" {
		qtype = "A"
	}
	if name == "" || len(name) > maxDNSName {
		writeJSON(w, http.StatusBadRequest, apiError{"name is required (at most 255 characters)"})
		return
	}
	ans, err := db.DNSQuery(r.Context(), name, qtype)
	if err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, ErrBadRequest) {
			code = http.StatusBadRequest
		}
		writeJSON(w, code, apiError{err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, ans)
}

// DNSQuery asks the daemon's resolver for name (type qtype, "A" if empty).
func (c *Client) DNSQuery(ctx context.Context, name, qtype string) (DNSAnswer, error) {
	var a DNSAnswer
	resp, err := c.do(ctx, http.MethodGet, "/v1/dns/query", url.Values{"name": {name}, "type": {qtype}})
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	return a, decodeJSON(resp, &a)
}
