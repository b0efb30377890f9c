package coordinator_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/metrics"
	"github.com/wiremesh/wiremesh/netmap"
)

func newRawRequest(url string, body []byte, proof string) (*http.Request, error) {
	req, err := http.NewRequest("POST", url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if proof != "" {
		req.Header.Set(netmap.ProofHeader, proof)
	}
	return req, nil
}

// TestHostileInput sends malformed requests, each properly proven where a
// proof is needed, and checks for a clear 4xx JSON error and no change.
func TestHostileInput(t *testing.T) {
	s := coordtest.Start(t)
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	a := s.Register(t, ak, "a")
	shared := key.Precompute(a.Key, s.Info.Key)
	nk := key.NewNode()
	newShared := key.Precompute(nk, s.Info.Key)

	regBody := func(authKey, nodeKey, disco, host string) []byte {
		return []byte(`{"version":1,"auth_key":"` + authKey + `","node_key":"` + nodeKey + `","disco_key":"` + disco + `","hostname":"` + host + `","os":"linux"}`)
	}
	disco := key.NewDisco().Public().String()
	cases := []struct {
		name   string
		path   string
		body   []byte
		prover *key.SharedKey
		pub    string
		want   int
	}{
		{"register not json", coordinator.PathRegister, []byte("{"), &newShared, nk.Public().String(), 400},
		{"register trailing data", coordinator.PathRegister, append(regBody(ak, nk.Public().String(), disco, "h"), '{'), &newShared, nk.Public().String(), 400},
		{"register bad node key", coordinator.PathRegister, regBody(ak, "nodekey:zz", disco, "h"), &newShared, nk.Public().String(), 400},
		{"register disco key as node key", coordinator.PathRegister, regBody(ak, strings.Replace(disco, "discokey", "nodekey", 1), disco, "h"), &newShared, nk.Public().String(), 401},
		{"register missing disco", coordinator.PathRegister, []byte(`{"version":1,"auth_key":"` + ak + `","node_key":"` + nk.Public().String() + `"}`), &newShared, nk.Public().String(), 400},
		{"register old version", coordinator.PathRegister, []byte(`{"version":0}`), &newShared, nk.Public().String(), 400},
		{"register huge hostname", coordinator.PathRegister, regBody(ak, nk.Public().String(), disco, strings.Repeat("h", 300)), &newShared, nk.Public().String(), 400},
		{"register bad auth key", coordinator.PathRegister, regBody("wmauth.nothex.abc", nk.Public().String(), disco, "h"), &newShared, nk.Public().String(), 401},
		{"register oversized", coordinator.PathRegister, bytes.Repeat([]byte(" "), coordinator.MaxRequestBody+1), &newShared, nk.Public().String(), 413},
		{"update not json", coordinator.PathUpdate, []byte(`{"endpoints": 5}`), &shared, a.Key.Public().String(), 400},
		{"update bad endpoint", coordinator.PathUpdate, []byte(`{"endpoints": ["1.2.3.4"]}`), &shared, a.Key.Public().String(), 400},
		{"update port zero", coordinator.PathUpdate, []byte(`{"endpoints": ["1.2.3.4:0"]}`), &shared, a.Key.Public().String(), 400},
		{"update too many endpoints", coordinator.PathUpdate, manyEndpoints(40), &shared, a.Key.Public().String(), 400},
		{"update long home relay", coordinator.PathUpdate, []byte(`{"home_relay": "` + strings.Repeat("x", 40) + `"}`), &shared, a.Key.Public().String(), 400},
		{"map not json", coordinator.PathMap, []byte(`[`), &shared, a.Key.Public().String(), 400},
		{"relay join no key", coordinator.PathRelayJoin, []byte(`{}`), &shared, a.Key.Public().String(), 401},
		{"relay heartbeat by node", coordinator.PathRelayBeat, []byte(`{}`), &shared, a.Key.Public().String(), 401},
		{"relay revocations by node", coordinator.PathRelayRevs, []byte(`{"after":0}`), &shared, a.Key.Public().String(), 401},
		{"relay revocations no proof", coordinator.PathRelayRevs, []byte(`{"after":0}`), nil, "", 401},
		{"unknown path", "/coord/v1/nope", []byte(`{}`), nil, "", 404},
	}
	before := s.Nodes()
	for _, c := range cases {
		var proof string
		if c.prover != nil {
			proof = netmap.MakeProof(c.prover, c.pub, "POST", c.path, c.body, time.Now())
		}
		req, _ := newRawRequest(s.URL()+c.path, c.body, proof)
		resp, err := s.HTTP.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var er netmap.ErrorResponse
		if resp.StatusCode != c.want || json.Unmarshal(b, &er) != nil || er.Error == "" || strings.Contains(er.Error, "\n") {
			t.Errorf("%s: HTTP %d %q, want %d with a one-line JSON error", c.name, resp.StatusCode, b, c.want)
		}
	}
	// Wrong method: a JSON 405 too.
	resp, err := s.HTTP.Get(s.URL() + coordinator.PathRegister)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 405 || !json.Valid(b) {
		t.Errorf("GET register: %d %s", resp.StatusCode, b)
	}
	after := s.Nodes()
	if len(after) != len(before) || after[0].Name != before[0].Name || len(after[0].Endpoints) != 0 {
		t.Errorf("hostile input changed state: %+v", after)
	}
}

func manyEndpoints(n int) []byte {
	var eps []string
	for i := 0; i < n; i++ {
		eps = append(eps, `"198.18.0.1:`+string(rune('1'+i%9))+`"`)
	}
	return []byte(`{"endpoints": [` + strings.Join(eps, ",") + `]}`)
}

func TestMetricsLint(t *testing.T) {
	s := coordtest.Start(t)
	s.Register(t, s.AuthKey(t, coordinator.AuthKeyRequest{}), "a")
	if _, err := s.CreateJoinKey(t.Context(), "nyc", "New York"); err != nil {
		t.Fatal(err)
	}
	problems, err := metrics.Lint(s.Registry)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	mfs, err := s.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"coordinator_nodes": false, "coordinator_map_streams": false, "coordinator_map_updates_sent_total": false,
		"coordinator_fanout_latency_seconds": false, "coordinator_registrations_total": false, "coordinator_relays": false,
		"coordinator_push_latency_seconds": false}
	for _, mf := range mfs {
		if _, ok := want[mf.GetName()]; ok {
			want[mf.GetName()] = true
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "node" || l.GetName() == "name" {
					t.Errorf("%s has a per-node label", mf.GetName())
				}
			}
		}
	}
	for name, seen := range want {
		if !seen {
			t.Errorf("metric %s missing", name)
		}
	}
}
