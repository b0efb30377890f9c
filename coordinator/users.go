package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/wiremesh/wiremesh/coordinator/policy"
	"github.com/wiremesh/wiremesh/coordinator/store"
	"github.com/wiremesh/wiremesh/netmap"
)

// Users and the auth-key lifecycle. A user owns the nodes registered with
// its keys and is a policy selector (policy package). Users and keys live
// only in the store: registrations read the key there in their own
// transaction, so a revocation is in force on every replica the moment it
// commits.

// UserInfo is one row of `users list`.
type UserInfo struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created,omitzero"`
	Nodes   int       `json:"nodes"`
	BuiltIn bool      `json:"built_in"`
}

// AuthKeyInfo is one row of `authkey list`: everything but the secret,
// which is not stored.
type AuthKeyInfo struct {
	ID        int64     `json:"id"`
	User      string    `json:"user"`
	Tags      []string  `json:"tags"`
	Reusable  bool      `json:"reusable"`
	Ephemeral bool      `json:"ephemeral"`
	Created   time.Time `json:"created,omitzero"`
	Expires   time.Time `json:"expires,omitzero"`
	Expired   bool      `json:"expired"`
	Revoked   time.Time `json:"revoked,omitzero"`
	Uses      int       `json:"uses"`
}

// UserRequest names a user; Force deletes a user's nodes with it.
type UserRequest struct {
	Name  string `json:"name"`
	Force bool   `json:"force,omitempty"`
}

// ErrBuiltInUser refuses deleting admin@.
var ErrBuiltInUser = errors.New("admin@ is built in and cannot be deleted")

// CreateUser adds a user.
func (srv *Server) CreateUser(ctx context.Context, name string) error {
	if !policy.ValidUser(name) {
		return fmt.Errorf("user %q: want a login such as alice@example.com (lower case)", name)
	}
	if err := srv.store.CreateUser(ctx, store.User{Name: name, Created: srv.now()}); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("user %s already exists", name)
		}
		return err
	}
	srv.log.Info("user created", "user", name)
	srv.audit(ctx, "users create", name)
	return nil
}

// Users lists every user with the number of nodes it owns.
func (srv *Server) Users(ctx context.Context) ([]UserInfo, error) {
	users, err := srv.store.Users(ctx)
	if err != nil {
		return nil, err
	}
	count := map[string]int{}
	srv.st.mu.RLock()
	for _, n := range srv.st.nodes {
		count[n.rec.User]++
	}
	srv.st.mu.RUnlock()
	out := make([]UserInfo, 0, len(users))
	for _, u := range users {
		out = append(out, UserInfo{Name: u.Name, Created: u.Created, Nodes: count[u.Name], BuiltIn: u.Name == store.AdminUser})
	}
	return out, nil
}

// DeleteUser deletes a user and revokes its keys. A user owning nodes is
// refused unless force, which deletes the nodes too (their peers drop them
// at once). It returns how many nodes went.
func (srv *Server) DeleteUser(ctx context.Context, name string, force bool) (int, error) {
	if name == store.AdminUser {
		return 0, ErrBuiltInUser
	}
	ids, err := srv.store.DeleteUser(ctx, name, force, srv.now())
	switch {
	case errors.Is(err, store.ErrUserHasNode):
		return 0, fmt.Errorf("%w; delete them first or pass --force to delete them with the user", err)
	case err != nil:
		return 0, err
	}
	for _, id := range ids {
		srv.st.mu.RLock()
		n := srv.st.nodes[netmap.NodeID(id)]
		srv.st.mu.RUnlock()
		if n != nil {
			n.writeMu.Lock()
			srv.dropNodeLocal(n)
			n.writeMu.Unlock()
		}
	}
	srv.log.Info("user deleted", "user", name, "nodes_deleted", len(ids))
	srv.audit(ctx, "users delete", fmt.Sprintf("%s (%d nodes deleted)", name, len(ids)))
	return len(ids), nil
}

// AuthKeys lists every auth key, newest last.
func (srv *Server) AuthKeys(ctx context.Context) ([]AuthKeyInfo, error) {
	keys, err := srv.store.AuthKeys(ctx)
	if err != nil {
		return nil, err
	}
	now := srv.now()
	out := make([]AuthKeyInfo, 0, len(keys))
	for _, k := range keys {
		ki := AuthKeyInfo{ID: k.ID, User: k.User, Tags: k.Tags, Reusable: k.Reusable, Ephemeral: k.Ephemeral,
			Created: k.Created, Expires: k.Expires, Expired: !k.Expires.IsZero() && !now.Before(k.Expires),
			Revoked: k.Revoked, Uses: k.Uses}
		if ki.Tags == nil {
			ki.Tags = []string{}
		}
		out = append(out, ki)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// RevokeAuthKey revokes auth key id: from the moment this returns it
// registers no node on any replica. Nodes it registered stay.
func (srv *Server) RevokeAuthKey(ctx context.Context, id int64) error {
	if err := srv.store.RevokeAuthKey(ctx, id, srv.now()); err != nil {
		return err
	}
	srv.log.Info("auth key revoked", "id", id)
	srv.audit(ctx, "authkey revoke", fmt.Sprintf("key %d", id))
	return nil
}
