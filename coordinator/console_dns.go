package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/wiremesh/wiremesh/coordinator/dnsconf"
	"github.com/wiremesh/wiremesh/netmap"
)

// The console's DNS page. The form has one field per setting, lists one
// entry a line. A save turns the form into the very document `coordinator
// dns set FILE` reads and puts it in force through SetDNSText, so the
// console checks exactly what the CLI checks; the first problem is shown
// beside the field (and line) it names, and a refused save changes
// nothing. Everyone signed in sees the settings (each of their machines
// receives them anyway); only an admin changes them.

// dnsForm is the DNS page's form, as text.
type dnsForm struct {
	MagicDNS      bool
	Domain        string
	Nameservers   string // one address a line
	SearchDomains string // one domain a line
	Split         string // SUFFIX NAMESERVER[, NAMESERVER...] a line
	ExtraRecords  string // NAME TYPE VALUE a line
}

// dnsPage is what the DNS page shows.
type dnsPage struct {
	Form dnsForm
	// Errors holds the message to show beside a form field, by the field's
	// name (domain, nameservers, ...).
	Errors map[string]string
	// Doc is the settings in force as `coordinator dns get` prints them.
	Doc string
	// Settings in force, for the read-only view of users who are not admins.
	DNS netmap.DNS
}

// Form fields of the DNS page.
const (
	dnsFieldMagic   = "magic_dns"
	dnsFieldDomain  = "domain"
	dnsFieldNS      = "nameservers"
	dnsFieldSearch  = "search_domains"
	dnsFieldSplit   = "split"
	dnsFieldRecords = "extra_records"
)

// formFromDNS shows d in the form.
func formFromDNS(d netmap.DNS) dnsForm {
	f := dnsForm{MagicDNS: d.MagicDNS, Domain: d.Domain, SearchDomains: strings.Join(d.SearchDomains, "\n")}
	var ns []string
	for _, a := range d.Nameservers {
		ns = append(ns, a.String())
	}
	f.Nameservers = strings.Join(ns, "\n")
	var split []string
	for _, k := range slices.Sorted(maps.Keys(d.Split)) {
		var l []string
		for _, a := range d.Split[k] {
			l = append(l, a.String())
		}
		split = append(split, k+" "+strings.Join(l, ", "))
	}
	f.Split = strings.Join(split, "\n")
	var recs []string
	for _, r := range d.ExtraRecords {
		recs = append(recs, r.Name+" "+r.Type+" "+r.Value)
	}
	f.ExtraRecords = strings.Join(recs, "\n")
	return f
}

// dnsLines remembers which form line each list entry of the document came
// from, to point an error at it.
type dnsLines struct {
	ns, search, records []int
	split               map[string]int
}

// formLines returns the non-empty lines of a textarea, trimmed, with
// their 1-based line numbers.
func formLines(text string) (lines []string, nums []int) {
	for i, l := range strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
			nums = append(nums, i+1)
		}
	}
	return lines, nums
}

// formError is a problem with the form itself, before the settings are
// checked: Field is a form field.
type formError struct {
	Field string
	Msg   string
}

func (e *formError) Error() string { return e.Field + ": " + e.Msg }

// document turns the form into the settings document the CLI reads.
func (f dnsForm) document() (dnsconf.Document, dnsLines, error) {
	magic := f.MagicDNS
	doc := dnsconf.Document{MagicDNS: &magic, Domain: strings.TrimSpace(f.Domain),
		Nameservers: []string{}, SearchDomains: []string{}, Split: map[string][]string{}, ExtraRecords: []dnsconf.Record{}}
	var ln dnsLines
	doc.Nameservers, ln.ns = formLines(f.Nameservers)
	doc.SearchDomains, ln.search = formLines(f.SearchDomains)
	sep := func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }
	lines, nums := formLines(f.Split)
	ln.split = map[string]int{}
	for i, l := range lines {
		fields := strings.FieldsFunc(l, sep)
		if len(fields) == 0 {
			continue
		}
		suffix := strings.TrimSuffix(fields[0], ":")
		if _, dup := ln.split[suffix]; dup {
			return doc, ln, &formError{dnsFieldSplit, fmt.Sprintf("line %d: %s is listed twice", nums[i], suffix)}
		}
		doc.Split[suffix] = append([]string{}, fields[1:]...)
		ln.split[suffix] = nums[i]
	}
	lines, nums = formLines(f.ExtraRecords)
	for i, l := range lines {
		fields := strings.Fields(l)
		if len(fields) != 3 {
			return doc, ln, &formError{dnsFieldRecords, fmt.Sprintf("line %d: want NAME TYPE VALUE, such as printer.mesh.internal A 198.19.50.10", nums[i])}
		}
		doc.ExtraRecords = append(doc.ExtraRecords, dnsconf.Record{Name: fields[0], Type: fields[1], Value: fields[2]})
		ln.records = append(ln.records, nums[i])
	}
	return doc, ln, nil
}

// placeError finds the form field a settings error names and says which
// line it is on: "nameservers[1]" is the nameservers field's second entry.
// An error about the document as a whole has field "".
func placeError(fe *dnsconf.FieldError, ln dnsLines) (field, msg string) {
	path := fe.Field
	line := func(nums []int, rest string) string {
		i, after, ok := indexOf(rest)
		if !ok || i < 0 || i >= len(nums) {
			return fe.Msg
		}
		if sub := strings.TrimPrefix(after, "."); sub != "" {
			return fmt.Sprintf("line %d (%s): %s", nums[i], sub, fe.Msg)
		}
		return fmt.Sprintf("line %d: %s", nums[i], fe.Msg)
	}
	for _, f := range []string{dnsFieldMagic, dnsFieldDomain, dnsFieldNS, dnsFieldSearch, dnsFieldSplit, dnsFieldRecords} {
		rest, ok := strings.CutPrefix(path, f)
		if !ok || (rest != "" && rest[0] != '[') {
			continue
		}
		if rest == "" {
			return f, fe.Msg
		}
		var m string
		switch f {
		case dnsFieldNS:
			m = line(ln.ns, rest)
		case dnsFieldSearch:
			m = line(ln.search, rest)
		case dnsFieldRecords:
			m = line(ln.records, rest)
		case dnsFieldSplit:
			m = fe.Msg
			// split["corp.test"] or split["corp.test"][1]
			if end := strings.Index(rest, `"]`); strings.HasPrefix(rest, `["`) && end > 0 {
				if key, err := strconv.Unquote(rest[1 : end+1]); err == nil {
					if n, ok := ln.split[key]; ok {
						m = fmt.Sprintf("line %d: %s", n, fe.Msg)
						if i, _, ok := indexOf(rest[end+2:]); ok {
							m = fmt.Sprintf("line %d, nameserver %d: %s", n, i+1, fe.Msg)
						}
					}
				}
			}
		default:
			m = fe.Msg
		}
		return f, m
	}
	return "", fe.Error()
}

// indexOf reads "[N]" at the start of s.
func indexOf(s string) (int, string, bool) {
	if !strings.HasPrefix(s, "[") {
		return 0, s, false
	}
	end := strings.IndexByte(s, ']')
	if end < 0 {
		return 0, s, false
	}
	i, err := strconv.Atoi(s[1:end])
	if err != nil {
		return 0, s, false
	}
	return i, s[end+1:], true
}

func (srv *Server) webDNS(w http.ResponseWriter, r *http.Request, s *webSession) {
	d := srv.DNS()
	srv.showDNS(w, r, s, http.StatusOK, dnsPage{Form: formFromDNS(d)}, r.URL.Query().Get("done"), "")
}

func (srv *Server) showDNS(w http.ResponseWriter, r *http.Request, s *webSession, code int, p dnsPage, notice, errMsg string) {
	p.DNS = srv.DNS()
	p.Doc = string(dnsconf.Format(p.DNS))
	srv.render(w, r, code, "dns.html", s, pageData{Title: "DNS", Nav: "dns", Data: p, Notice: notice, Error: errMsg})
}

func (srv *Server) webDNSSave(w http.ResponseWriter, r *http.Request, s *webSession) {
	f := dnsForm{
		MagicDNS: r.PostFormValue(dnsFieldMagic) != "",
		Domain:   r.PostFormValue(dnsFieldDomain), Nameservers: r.PostFormValue(dnsFieldNS),
		SearchDomains: r.PostFormValue(dnsFieldSearch), Split: r.PostFormValue(dnsFieldSplit),
		ExtraRecords: r.PostFormValue(dnsFieldRecords),
	}
	refuse := func(field, msg string) {
		p := dnsPage{Form: f, Errors: map[string]string{}}
		top := "Not saved, the DNS settings in force are unchanged"
		if field == "" {
			top += ": " + msg
		} else {
			p.Errors[field] = msg
			top += ": see " + strings.ReplaceAll(field, "_", " ") + " below."
		}
		srv.showDNS(w, r, s, http.StatusBadRequest, p, "", top)
	}
	doc, ln, err := f.document()
	var formErr *formError
	if errors.As(err, &formErr) {
		refuse(formErr.Field, formErr.Msg)
		return
	}
	text, err := json.Marshal(doc)
	if err == nil {
		err = srv.SetDNSText(r.Context(), text)
	}
	var fe *dnsconf.FieldError
	switch {
	case err == nil:
		http.Redirect(w, r, "/dns?done="+urlQuery("DNS settings saved: every machine has them within seconds"), http.StatusSeeOther)
	case errors.As(err, &fe):
		refuse(placeError(fe, ln))
	default:
		srv.log.Warn("console DNS save", "err", err)
		srv.showDNS(w, r, s, http.StatusServiceUnavailable, dnsPage{Form: f}, "", "Not saved: the settings could not be stored; see the coordinator's log.")
	}
}
