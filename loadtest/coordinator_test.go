package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/wiremesh/wiremesh/coordinator"
	"github.com/wiremesh/wiremesh/coordinator/coordtest"
	"github.com/wiremesh/wiremesh/coordinator/store/pgtest"
)

// TestRunCoordinator runs the mode against a coordinator on loopback, in
// both topologies, with a handful of nodes.
func TestRunCoordinator(t *testing.T) {
	s := coordtest.Start(t)
	ak := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	hub := s.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true, Tags: []string{"tag:hub"}})
	if err := s.SetPolicy(context.Background(), []byte(`{"tagOwners": {"tag:hub": []},
		"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:hub:*"]}]}`)); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := RunCoordinator(context.Background(), []string{"--coordinator", s.URL(), "--authkey", ak, "--hub-authkey", hub,
		"--hubs", "1", "--nodes", "20", "--changes", "2", "--conns", "2", "--json"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	var res CoordinatorResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	if res.Nodes != 20 || res.AffectedStreams != 19 || res.Missed != 0 || res.FanoutP99MS <= 0 || res.RegisterPerSecond <= 0 {
		t.Errorf("result: %+v", res)
	}
	// Bad flags are refused.
	for _, args := range [][]string{{}, {"--coordinator", s.URL(), "--authkey", ak, "--nodes", "1"},
		{"--coordinator", s.URL(), "--authkey", ak, "--hubs", "1"}} {
		if err := RunCoordinator(context.Background(), args, &out); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// TestRunCoordinatorReplicas spreads the nodes over two replicas on one
// PostgreSQL: the change, made through the first, reaches the streams on
// both.
func TestRunCoordinatorReplicas(t *testing.T) {
	pg := pgtest.Start(t)
	db := pg.NewDatabase(t)
	a := coordtest.Start(t, func(c *coordinator.Config) { c.DB = db })
	b := coordtest.Start(t, func(c *coordinator.Config) { c.DB = db })
	ak := a.AuthKey(t, coordinator.AuthKeyRequest{Reusable: true})
	var out bytes.Buffer
	err := RunCoordinator(context.Background(), []string{"--coordinator", a.URL() + "," + b.URL(), "--authkey", ak,
		"--nodes", "20", "--changes", "2", "--conns", "2", "--json"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	var res CoordinatorResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	if res.Replicas != 2 || res.AffectedStreams != 19 || res.Missed != 0 {
		t.Errorf("result: %+v", res)
	}
}
