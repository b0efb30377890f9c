package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/store/pgtest"
)

// TestPostgresReplicas covers what only a shared engine does: migrations
// by replicas starting together, change notifications between replicas,
// the jobs lock, and the database going away and coming back.
func TestPostgresReplicas(t *testing.T) {
	pg := pgtest.Start(t)
	ctx := context.Background()

	t.Run("ConcurrentMigrations", func(t *testing.T) {
		url := pg.NewDatabase(t)
		const n = 6
		errs := make([]error, n)
		stores := make([]*Postgres, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				stores[i], errs[i] = OpenPostgres(ctx, url, nil)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("replica %d: %v", i, err)
			}
			defer stores[i].Close()
			if v, _ := stores[i].SchemaVersion(ctx); v != len(pgMigrations) {
				t.Fatalf("replica %d sees schema %d, want %d", i, v, len(pgMigrations))
			}
		}
	})

	t.Run("Notifications", func(t *testing.T) {
		url := pg.NewDatabase(t)
		a, err := OpenPostgres(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b, err := OpenPostgres(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if a.ReplicaID() == b.ReplicaID() {
			t.Fatal("two replicas share an ID")
		}
		got := make(chan Change, 64)
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- b.Listen(lctx, func(c Change) { got <- c }) }()
		defer func() {
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("Listen returned %v", err)
			}
		}()
		next := func() Change {
			t.Helper()
			select {
			case c := <-got:
				return c
			case <-time.After(10 * time.Second):
				t.Fatal("no notification")
			}
			return Change{}
		}
		if c := next(); c.Kind != ChangeResync {
			t.Fatalf("first change %+v, want resync", c)
		}
		now := time.Now()
		// b's own write is not echoed to b; a's writes are.
		if err := b.SetPolicy(ctx, "{}", now); err != nil {
			t.Fatal(err)
		}
		if err := a.CreateAuthKey(ctx, &AuthKey{Hash: "k", Reusable: true, Created: now, User: AdminUser}); err != nil {
			t.Fatal(err)
		}
		n := testNode("a", "100.64.0.1", now)
		if _, err := a.RegisterNode(ctx, "k", now, n); err != nil {
			t.Fatal(err)
		}
		if c := next(); c.Kind != ChangeNodes || !slices.Equal(c.IDs, []int64{n.ID}) || c.Origin != a.ReplicaID() {
			t.Fatalf("after a registration: %+v", c)
		}
		n.HomeRelay = "nyc"
		a.UpdateNode(ctx, n)
		if c := next(); c.Kind != ChangeNodes || !slices.Equal(c.IDs, []int64{n.ID}) {
			t.Fatalf("after an update: %+v", c)
		}
		a.SetPolicy(ctx, `{"acls":[]}`, now)
		if c := next(); c.Kind != ChangePolicy {
			t.Fatalf("after a policy change: %+v", c)
		}
		a.SetDNS(ctx, `{"domain":"mesh.test"}`, now)
		if c := next(); c.Kind != ChangeDNS || c.Origin != a.ReplicaID() {
			t.Fatalf("after a dns change: %+v", c)
		}
		a.PutRelay(ctx, Relay{Name: "r", Region: "nyc", Key: "relaykey:1"})
		// The relay's region does not exist: the write failed, and a
		// rolled-back write announces nothing.
		a.CreateJoinKey(ctx, &JoinKey{Hash: "j", Region: "nyc"}, Region{Code: "nyc", MeshSecret: "s"})
		if c := next(); c.Kind != ChangeRegion || c.Key != "nyc" {
			t.Fatalf("after a join key: %+v", c)
		}
		a.PutRelay(ctx, Relay{Name: "r", Region: "nyc", Key: "relaykey:1"})
		if c := next(); c.Kind != ChangeRelay || c.Key != "relaykey:1" {
			t.Fatalf("after a relay write: %+v", c)
		}
		a.Publish(ctx, Change{Kind: ChangeOnline, IDs: []int64{n.ID}, Online: true})
		if c := next(); c.Kind != ChangeOnline || !c.Online || c.Origin != a.ReplicaID() {
			t.Fatalf("published event: %+v", c)
		}
		a.DeleteNode(ctx, n.ID)
		if c := next(); c.Kind != ChangeNodeDeleted || !slices.Equal(c.IDs, []int64{n.ID}) {
			t.Fatalf("after a delete: %+v", c)
		}
		// A batch of registrations is announced in chunks that fit.
		var wg sync.WaitGroup
		for i := range 2 * maxNotifyIDs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.RegisterNode(ctx, "k", now, testNode(fmt.Sprint("b", i), fmt.Sprintf("100.64.%d.%d", 1+i/250, 1+i%250), now))
			}()
		}
		wg.Wait()
		seen := 0
		for seen < 2*maxNotifyIDs {
			c := next()
			if c.Kind != ChangeNodes {
				t.Fatalf("during a batch: %+v", c)
			}
			seen += len(c.IDs)
		}
	})

	t.Run("JobsLock", func(t *testing.T) {
		url := pg.NewDatabase(t)
		a, _ := OpenPostgres(ctx, url, nil)
		b, _ := OpenPostgres(ctx, url, nil)
		defer b.Close()
		if ok, err := a.TryLead(ctx); !ok || err != nil {
			t.Fatalf("first replica: %v, %v", ok, err)
		}
		if ok, err := b.TryLead(ctx); ok || err != nil {
			t.Fatalf("second replica while the first leads: %v, %v", ok, err)
		}
		if ok, _ := a.TryLead(ctx); !ok {
			t.Fatal("leader lost the lock")
		}
		a.Close() // as a dying replica's connections do
		// The database releases the lock when the dead session's backend
		// exits, a moment after its connection closes: b gets it at one of
		// its next tries, as at a sweep.
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for deadline := time.After(10 * time.Second); ; {
			ok, err := b.TryLead(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				break
			}
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatal("second replica never took the lock after the first closed")
			}
		}
	})

	t.Run("Unavailable", func(t *testing.T) {
		url := pg.NewDatabase(t)
		s, err := OpenPostgres(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		now := time.Now()
		if err := s.CreateAuthKey(ctx, &AuthKey{Hash: "k", Reusable: true, Created: now, User: AdminUser}); err != nil {
			t.Fatal(err)
		}
		if err := pg.Stop(); err != nil {
			t.Fatal(err)
		}
		defer pg.Start()
		if err := s.SetPolicy(ctx, "{}", now); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("write with the database down: %v", err)
		}
		if _, err := s.RegisterNode(ctx, "k", now, testNode("a", "100.64.0.1", now)); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("registration with the database down: %v", err)
		}
		if _, err := s.Load(ctx); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("read with the database down: %v", err)
		}
		if ok, err := s.TryLead(ctx); ok || !errors.Is(err, ErrUnavailable) {
			t.Fatalf("jobs lock with the database down: %v, %v", ok, err)
		}
		if err := pg.Start(); err != nil {
			t.Fatal(err)
		}
		if err := s.SetPolicy(ctx, "{}", now); err != nil {
			t.Fatalf("write after the database came back: %v", err)
		}
		if _, err := s.RegisterNode(ctx, "k", now, testNode("a", "100.64.0.1", now)); err != nil {
			t.Fatalf("registration after the database came back: %v", err)
		}
	})
}
