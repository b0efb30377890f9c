package relayd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/wiremesh/wiremesh/coordclient"
	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// Joining the coordinator's fleet (relayd --coordinator URL --join-key KEY):
//
//	start ─► join (join key) ─► trust keys, mesh secret, region peers ─► serve
//	  │         │ coordinator unreachable                                  │
//	  │         └─► last join.json in --state-dir (keeps working offline)  │
//	  └──────────────────────────── heartbeat every interval ◄─────────────┘
//	                                (refreshes trust and mesh; SIGTERM sends
//	                                 a final "draining" heartbeat)
//	  └──────────────────────────── revocation long poll (revoke.go) ◄─────┘
//
// The join key is needed once: afterwards the relay authenticates with its
// relay key, and the coordinator's URL and pin are kept in join.json.

const joinFile = "join.json"

// joinState is what a joined relay remembers in --state-dir.
type joinState struct {
	URL      string                   `json:"url"`
	Pin      string                   `json:"pin"`
	Response netmap.RelayJoinResponse `json:"response"`
}

func loadJoin(dir string) (*joinState, error) {
	b, err := os.ReadFile(filepath.Join(dir, joinFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var js joinState
	if err := json.Unmarshal(b, &js); err != nil {
		return nil, fmt.Errorf("relayd: %s: %w", joinFile, err)
	}
	return &js, nil
}

func saveJoin(dir string, js *joinState) error {
	b, err := json.Marshal(js)
	if err != nil {
		return err
	}
	return key.WriteFileAtomic(filepath.Join(dir, joinFile), b, 0o600)
}

// joiner keeps a relay's membership in the coordinator's fleet.
type joiner struct {
	dir    string
	url    string
	self   string // this relay's public address, excluded from mesh peers
	priv   key.RelayPrivate
	log    *slog.Logger
	rcMu   sync.Mutex // guards rc: heartbeats and revocation polls share it
	rc     *coordclient.RelayClient
	state  *joinState
	srv    *Server
	region string
	// static is what the flags configured (--trust-key, --mesh-with,
	// --mesh-secret): merged with every coordinator answer, at start-up
	// and on each heartbeat, never replaced by one.
	static staticConfig
}

// staticConfig is the operator's own trust and mesh configuration.
type staticConfig struct {
	trusted  []key.SigningPublic
	meshWith []string
	secret   []byte
}

// merged combines the coordinator's answer with the static configuration:
// trusted keys and mesh peers are the union (in that order, without
// duplicates); the coordinator's mesh secret wins when it sends one.
func (j *joiner) merged(r netmap.RelayJoinResponse) (trusted []key.SigningPublic, peers []string, secret []byte) {
	trusted = append([]key.SigningPublic(nil), r.AdmitKeys...)
	for _, k := range j.static.trusted {
		if !slices.Contains(trusted, k) {
			trusted = append(trusted, k)
		}
	}
	peers = j.meshPeers(r.Region)
	for _, p := range j.static.meshWith {
		if !slices.Contains(peers, p) {
			peers = append(peers, p)
		}
	}
	secret = []byte(r.MeshSecret)
	if len(secret) == 0 {
		secret = slices.Clone(j.static.secret)
	}
	return trusted, peers, secret
}

// join joins with joinKey, or reuses a previous join from the state
// directory when the key is absent or the coordinator is unreachable.
func (j *joiner) join(ctx context.Context, joinKey string, req netmap.RelayJoinRequest) error {
	prev, err := loadJoin(j.dir)
	if err != nil {
		return err
	}
	if j.url == "" && prev != nil {
		j.url = prev.URL
	}
	if j.url == "" {
		return errors.New("relayd: --join-key needs --coordinator")
	}
	jctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if joinKey != "" && (prev == nil || prev.URL != j.url) {
		rc, resp, err := coordclient.JoinRelay(jctx, j.url, joinKey, j.priv, req)
		if err == nil {
			j.rc, j.state = rc, &joinState{URL: j.url, Pin: rc.Pin, Response: *resp}
			j.log.Info("joined the relay fleet", "coordinator", j.url, "name", resp.Name, "region", resp.Region.Code)
			return saveJoin(j.dir, j.state)
		}
		if prev == nil {
			return fmt.Errorf("relayd: join %s: %w", j.url, err)
		}
		j.log.Warn("join failed; using the previous join", "err", err)
	}
	if prev == nil {
		return errors.New("relayd: not joined yet: give --coordinator and --join-key")
	}
	j.state = prev
	if _, err := j.client(jctx); err != nil {
		j.log.Warn("coordinator unreachable; serving from the last join", "err", err)
	}
	return nil
}

// apply configures cfg from the join response merged with cfg's own
// static settings, which it remembers for every later heartbeat.
func (j *joiner) apply(cfg *Config) {
	j.static = staticConfig{trusted: slices.Clone(cfg.Trusted), meshWith: slices.Clone(cfg.MeshWith), secret: slices.Clone(cfg.MeshSecret)}
	cfg.Trusted, cfg.MeshWith, cfg.MeshSecret = j.merged(j.state.Response)
}

func (j *joiner) meshPeers(reg netmap.Region) []string {
	var out []string
	for _, rl := range reg.Relays {
		if rl.Addr != j.self && rl.Key != j.priv.Public() {
			out = append(out, rl.Addr)
		}
	}
	return out
}

// heartbeats reports health at the coordinator's interval until ctx ends,
// applying each answer, then sends a final draining heartbeat.
func (j *joiner) heartbeats(ctx context.Context) {
	interval := time.Duration(j.state.Response.HeartbeatInterval)
	if interval <= 0 {
		interval = 10 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			j.beat(context.Background(), true)
			return
		case <-t.C:
			j.beat(ctx, false)
		}
	}
}

// client returns the coordinator client, connecting first if the relay
// started while the coordinator was unreachable.
func (j *joiner) client(ctx context.Context) (*coordclient.RelayClient, error) {
	j.rcMu.Lock()
	defer j.rcMu.Unlock()
	if j.rc == nil {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		rc, err := coordclient.NewRelayClient(ctx, j.state.URL, j.state.Pin, j.priv)
		if err != nil {
			return nil, fmt.Errorf("coordinator unreachable: %w", err)
		}
		j.rc = rc
	}
	return j.rc, nil
}

// Revocations makes the joiner a RevocationSource for
// Server.FollowRevocations, connecting lazily like the heartbeat.
func (j *joiner) Revocations(ctx context.Context, after uint64) (*netmap.RelayRevocations, error) {
	rc, err := j.client(ctx)
	if err != nil {
		return nil, err
	}
	return rc.Revocations(ctx, after)
}

func (j *joiner) beat(ctx context.Context, draining bool) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rc, err := j.client(ctx)
	if err != nil {
		j.log.Debug("coordinator unreachable", "err", err)
		return
	}
	resp, err := rc.Heartbeat(ctx, netmap.RelayHeartbeat{Clients: j.srv.Clients(), Draining: draining || j.srv.Healthy() != nil})
	if err != nil {
		j.log.Debug("heartbeat failed", "err", err)
		return
	}
	trusted, peers, secret := j.merged(*resp)
	j.srv.SetTrusted(trusted)
	j.srv.SetMesh(peers, secret)
	j.state.Response = *resp
	if err := saveJoin(j.dir, j.state); err != nil {
		j.log.Warn("saving join state failed", "err", err)
	}
}
