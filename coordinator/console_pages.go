package coordinator

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/policy"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/meshnode/routes"
	"github.com/wiremesh/wiremesh/netmap"
)

// The console's pages. Each handler gets the signed-in session and shows
// or changes only what that session may (console.go).

// machineRow is one row of the machines page.
type machineRow struct {
	NodeInfo
	ExpiresSoon bool
	// Subnets are the subnet routes the machine advertises or has
	// approved; Exit its exit-node offer, if any (HasExit).
	Subnets []RouteInfo
	Exit    RouteInfo
	HasExit bool
}

// visibleNodes returns the nodes s may see.
func (srv *Server) visibleNodes(s *webSession) []NodeInfo {
	all := srv.Nodes()
	if s.Admin {
		return all
	}
	out := all[:0]
	for _, n := range all {
		if n.User == s.User {
			out = append(out, n)
		}
	}
	return out
}

// machineSorts are the machines page's sort keys.
var machineSorts = map[string]func(a, b NodeInfo) int{
	"name":   func(a, b NodeInfo) int { return cmp.Compare(a.Name, b.Name) },
	"user":   func(a, b NodeInfo) int { return cmp.Compare(a.User, b.User) },
	"ip":     func(a, b NodeInfo) int { return cmp.Compare(ipKey(a.IP), ipKey(b.IP)) },
	"os":     func(a, b NodeInfo) int { return cmp.Compare(a.OS, b.OS) },
	"status": func(a, b NodeInfo) int { return -cmp.Compare(statusKey(a), statusKey(b)) },
	"expiry": func(a, b NodeInfo) int { return a.KeyExpiry.Compare(b.KeyExpiry) },
	"relay":  func(a, b NodeInfo) int { return cmp.Compare(a.HomeRelay, b.HomeRelay) },
}

func ipKey(s string) string {
	var b strings.Builder
	for _, p := range strings.Split(s, ".") {
		fmt.Fprintf(&b, "%03s.", p)
	}
	return b.String()
}

func statusKey(n NodeInfo) int64 {
	if n.Online {
		return 1 << 62
	}
	return n.LastSeen.UnixMilli()
}

func (srv *Server) webMachines(w http.ResponseWriter, r *http.Request, s *webSession) {
	nodes := srv.visibleNodes(s)
	sortBy := r.URL.Query().Get("sort")
	if f, ok := machineSorts[sortBy]; ok {
		slices.SortStableFunc(nodes, f)
	} else {
		sortBy = "name"
	}
	now := srv.now()
	byNode := map[string][]RouteInfo{}
	for _, rt := range srv.Routes() {
		byNode[rt.Node] = append(byNode[rt.Node], rt)
	}
	rows := make([]machineRow, 0, len(nodes))
	for _, n := range nodes {
		row := machineRow{NodeInfo: n, ExpiresSoon: !n.Expired && !n.KeyExpiry.IsZero() && n.KeyExpiry.Sub(now) < nearExpiry}
		for _, rt := range byNode[n.Name] {
			if rt.Prefix == routes.ExitPrefix.String() {
				row.Exit, row.HasExit = rt, true
			} else {
				row.Subnets = append(row.Subnets, rt)
			}
		}
		rows = append(rows, row)
	}
	srv.render(w, r, http.StatusOK, "machines.html", s, pageData{Title: "Machines", Nav: "machines",
		Notice: r.URL.Query().Get("done"), Error: r.URL.Query().Get("error"),
		Data: struct {
			Rows []machineRow
			Sort string
		}{rows, sortBy}})
}

// machineStatus is one machine in GET /api/machines (the live status the
// machines page polls).
type machineStatus struct {
	Name     string    `json:"name"`
	IP       string    `json:"ip"`
	Online   bool      `json:"online"`
	LastSeen time.Time `json:"last_seen,omitzero"`
	Expired  bool      `json:"expired"`
	Relay    string    `json:"home_relay"`
}

func (srv *Server) webMachinesJSON(w http.ResponseWriter, r *http.Request, s *webSession) {
	nodes := srv.visibleNodes(s)
	out := make([]machineStatus, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, machineStatus{Name: n.Name, IP: n.IP, Online: n.Online, LastSeen: n.LastSeen, Expired: n.Expired, Relay: n.HomeRelay})
	}
	writeJSON(w, http.StatusOK, out)
}

// ownsNode reports whether s may change node name (a missing node and
// another user's answer alike).
func (srv *Server) ownsNode(s *webSession, name string) bool {
	srv.st.mu.RLock()
	defer srv.st.mu.RUnlock()
	n := srv.st.byName[name]
	return n != nil && (s.Admin || n.rec.User == s.User)
}

func (srv *Server) webMachineAction(w http.ResponseWriter, r *http.Request, s *webSession) {
	name, op := r.PathValue("name"), r.PathValue("op")
	back := func(q string) { http.Redirect(w, r, "/machines?"+q, http.StatusSeeOther) }
	if !srv.ownsNode(s, name) {
		srv.render(w, r, http.StatusNotFound, "message.html", s, pageData{Title: "Not found", Message: "There is no such machine."})
		return
	}
	var err error
	var done string
	switch op {
	case "delete":
		err, done = srv.DeleteNode(r.Context(), name), name+" deleted"
	case "expire":
		err, done = srv.ExpireNode(r.Context(), name), name+" expired: it must log in again"
	case "rename":
		to := strings.TrimSpace(r.PostFormValue("to"))
		err, done = srv.RenameNode(r.Context(), name, to), name+" renamed to "+to
	default:
		srv.render(w, r, http.StatusNotFound, "message.html", s, pageData{Title: "Not found", Message: "There is no such action."})
		return
	}
	if err != nil {
		back("error=" + urlQuery(err.Error()))
		return
	}
	back("done=" + urlQuery(done))
}

func urlQuery(s string) string { return url.QueryEscape(s) }

// relayRegion is one region on the relays page.
type relayRegion struct {
	Code   string
	Relays []RelayInfo
	// Latency is what nodes reported through netcheck for the region.
	Nodes                     int
	MinMS, MedianMS, MaxMS    float64
	HomeNodes, ClientsOnRelay int
}

func (srv *Server) webRelays(w http.ResponseWriter, r *http.Request, s *webSession) {
	regions := map[string]*relayRegion{}
	get := func(code string) *relayRegion {
		if regions[code] == nil {
			regions[code] = &relayRegion{Code: code}
		}
		return regions[code]
	}
	for _, rl := range srv.Relays() {
		g := get(rl.Region)
		g.Relays = append(g.Relays, rl)
		g.ClientsOnRelay += rl.Clients
	}
	lat := map[string][]float64{}
	for _, n := range srv.Nodes() {
		if n.HomeRelay != "" {
			get(n.HomeRelay).HomeNodes++
		}
		var nc netmap.Netcheck
		if len(n.Netcheck) == 0 || json.Unmarshal(n.Netcheck, &nc) != nil {
			continue
		}
		for code, ms := range nc.RelayLatencyMS {
			if _, ok := regions[code]; ok && ms >= 0 {
				lat[code] = append(lat[code], ms)
			}
		}
	}
	out := make([]*relayRegion, 0, len(regions))
	for code, g := range regions {
		if l := lat[code]; len(l) > 0 {
			slices.Sort(l)
			g.Nodes, g.MinMS, g.MedianMS, g.MaxMS = len(l), l[0], l[len(l)/2], l[len(l)-1]
		}
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b *relayRegion) int { return cmp.Compare(a.Code, b.Code) })
	srv.render(w, r, http.StatusOK, "relays.html", s, pageData{Title: "Relays", Nav: "relays", Data: out})
}

// keysPage is the users and keys page.
type keysPage struct {
	Users    []UserInfo
	Keys     []AuthKeyInfo
	Sessions []sessionRow
	NewKey   string // the secret of a key just made: shown once
	NewUser  string
}

func (srv *Server) keysData(r *http.Request, s *webSession) (keysPage, error) {
	var d keysPage
	keys, err := srv.AuthKeys(r.Context())
	if err != nil {
		return d, err
	}
	for _, k := range keys {
		if s.Admin || k.User == s.User {
			d.Keys = append(d.Keys, k)
		}
	}
	if s.Admin {
		if d.Users, err = srv.Users(r.Context()); err != nil {
			return d, err
		}
	}
	if d.Sessions, err = srv.visibleSessions(r.Context(), s); err != nil {
		return d, err
	}
	return d, nil
}

func (srv *Server) webKeys(w http.ResponseWriter, r *http.Request, s *webSession) {
	srv.showKeys(w, r, s, http.StatusOK, "", "", "")
}

func (srv *Server) showKeys(w http.ResponseWriter, r *http.Request, s *webSession, code int, newKey, notice, errMsg string) {
	d, err := srv.keysData(r, s)
	if err != nil {
		srv.render(w, r, http.StatusServiceUnavailable, "message.html", s, pageData{Title: "Users and keys", Message: "The store could not be read; see the coordinator's log."})
		return
	}
	d.NewKey = newKey
	if notice == "" {
		notice = r.URL.Query().Get("done")
	}
	srv.render(w, r, code, "keys.html", s, pageData{Title: "Users and keys", Nav: "keys", Data: d, Notice: notice, Error: errMsg})
}

func (srv *Server) webKeyCreate(w http.ResponseWriter, r *http.Request, s *webSession) {
	req := AuthKeyRequest{
		Reusable: r.PostFormValue("reusable") != "", Ephemeral: r.PostFormValue("ephemeral") != "",
		Expiry: strings.TrimSpace(r.PostFormValue("expiry")), User: s.User,
	}
	if s.Admin {
		req.User = strings.TrimSpace(r.PostFormValue("user"))
		for _, t := range strings.Split(r.PostFormValue("tags"), ",") {
			if t = strings.TrimSpace(t); t != "" {
				req.Tags = append(req.Tags, t)
			}
		}
	}
	resp, err := srv.CreateAuthKey(r.Context(), req)
	if err != nil {
		srv.showKeys(w, r, s, http.StatusBadRequest, "", "", strings.NewReplacer("--user", "user", "--tags", "tags", "--expiry", "expiry").Replace(err.Error()))
		return
	}
	srv.showKeys(w, r, s, http.StatusOK, resp.Key, fmt.Sprintf("Key %d created. Copy it now: it is shown only this once.", resp.ID), "")
}

func (srv *Server) webKeyRevoke(w http.ResponseWriter, r *http.Request, s *webSession) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err == nil && !s.Admin {
		err = store.ErrNotFound
		if keys, kerr := srv.AuthKeys(r.Context()); kerr == nil {
			for _, k := range keys {
				if k.ID == id && k.User == s.User {
					err = nil
				}
			}
		}
	}
	if err == nil {
		err = srv.RevokeAuthKey(r.Context(), id)
	}
	if err != nil {
		srv.render(w, r, http.StatusNotFound, "message.html", s, pageData{Title: "Not found", Message: "There is no such key."})
		return
	}
	http.Redirect(w, r, "/keys?done="+urlQuery(fmt.Sprintf("key %d revoked", id)), http.StatusSeeOther)
}

func (srv *Server) webUserCreate(w http.ResponseWriter, r *http.Request, s *webSession) {
	name := strings.TrimSpace(r.PostFormValue("name"))
	if err := srv.CreateUser(r.Context(), name); err != nil {
		srv.showKeys(w, r, s, http.StatusBadRequest, "", "", err.Error())
		return
	}
	http.Redirect(w, r, "/keys?done="+urlQuery("user "+name+" created"), http.StatusSeeOther)
}

// aclPage is the access controls page.
type aclPage struct {
	Text    string
	ErrLine int
	Lines   []aclLine // an excerpt around ErrLine
	// The checker's question and answer.
	Src, Dst, Port string
	Checked        bool
	Allowed        bool
	CheckErr       string
}

type aclLine struct {
	N    int
	Text string
	Bad  bool
}

func (srv *Server) webACL(w http.ResponseWriter, r *http.Request, s *webSession) {
	d := aclPage{Text: srv.Policy()}
	q := r.URL.Query()
	d.Src, d.Dst, d.Port = strings.TrimSpace(q.Get("src")), strings.TrimSpace(q.Get("dst")), strings.TrimSpace(q.Get("port"))
	if d.Src != "" || d.Dst != "" || d.Port != "" {
		d.Checked = true
		d.Allowed, d.CheckErr = srv.checkAccess(d.Src, d.Dst, d.Port)
	}
	srv.render(w, r, http.StatusOK, "acl.html", s, pageData{Title: "Access controls", Nav: "acl", Data: d, Notice: q.Get("done")})
}

// checkAccess answers the checker from the policy in force.
func (srv *Server) checkAccess(src, dst, port string) (bool, string) {
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return false, fmt.Sprintf("port %q: want a number from 0 to 65535", port)
	}
	st := srv.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	ok, err := st.policy.Check(src, dst, uint16(p), st.lookupPrincipalLocked)
	if err != nil {
		return false, err.Error()
	}
	return ok, ""
}

func (srv *Server) webACLSave(w http.ResponseWriter, r *http.Request, s *webSession) {
	text := strings.ReplaceAll(r.PostFormValue("policy"), "\r\n", "\n")
	err := srv.SetPolicy(r.Context(), []byte(text))
	if err == nil {
		http.Redirect(w, r, "/acl?done="+urlQuery("policy saved; its tests passed"), http.StatusSeeOther)
		return
	}
	d := aclPage{Text: text, ErrLine: policy.ErrorLine([]byte(text), err)}
	if d.ErrLine > 0 {
		lines := strings.Split(text, "\n")
		for i := max(1, d.ErrLine-3); i <= min(len(lines), d.ErrLine+3); i++ {
			d.Lines = append(d.Lines, aclLine{N: i, Text: lines[i-1], Bad: i == d.ErrLine})
		}
	}
	msg := err.Error()
	if errors.Is(err, policy.ErrTestFailed) || errors.Is(err, policy.ErrInvalid) {
		msg = "Not saved, the policy in force is unchanged: " + msg
	}
	srv.render(w, r, http.StatusBadRequest, "acl.html", s, pageData{Title: "Access controls", Nav: "acl", Data: d, Error: msg})
}

func (srv *Server) webAudit(w http.ResponseWriter, r *http.Request, s *webSession) {
	log, err := srv.AuditLog(r.Context())
	if err != nil {
		srv.render(w, r, http.StatusServiceUnavailable, "message.html", s, pageData{Title: "Audit log", Message: "The store could not be read; see the coordinator's log."})
		return
	}
	srv.render(w, r, http.StatusOK, "audit.html", s, pageData{Title: "Audit log", Nav: "audit", Data: log})
}

func (srv *Server) webLoginPage(w http.ResponseWriter, r *http.Request, s *webSession) {
	info, err := srv.PendingLogin(r.Context(), r.PathValue("code"))
	if err != nil {
		srv.loginFailed(w, r, s, err)
		return
	}
	srv.render(w, r, http.StatusOK, "login.html", s, pageData{Title: "Approve a machine", Data: struct {
		LoginInfo
		Code string
	}{info, r.PathValue("code")}})
}

func (srv *Server) loginFailed(w http.ResponseWriter, r *http.Request, s *webSession, err error) {
	msg, code := err.Error(), http.StatusGone
	if !errors.Is(err, ErrLoginUnknown) && !errors.Is(err, ErrLoginDone) {
		srv.log.Warn("console login approval", "err", err)
		msg, code = "The login could not be read; see the coordinator's log.", http.StatusServiceUnavailable
	}
	srv.render(w, r, code, "message.html", s, pageData{Title: "Approve a machine", Message: msg + "."})
}

func (srv *Server) webLoginApprove(w http.ResponseWriter, r *http.Request, s *webSession) {
	code := r.PathValue("code")
	info, err := srv.PendingLogin(r.Context(), code)
	if err == nil {
		err = srv.ApproveLogin(r.Context(), code, s.User)
	}
	if err != nil {
		srv.loginFailed(w, r, s, err)
		return
	}
	srv.render(w, r, http.StatusOK, "message.html", s, pageData{Title: "Machine approved",
		Message: fmt.Sprintf("%s (%s) is approved and joins the mesh as %s in a moment.", info.Hostname, info.OS, s.User)})
}
