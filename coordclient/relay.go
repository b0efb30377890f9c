package coordclient

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/netmap"
)

// RelayClient is a relay's connection to the coordinator.
type RelayClient struct {
	p    prover
	Info netmap.ServerInfo
	// Pin is the coordinator's certificate pin; a relay stores it with its
	// state so it can heartbeat after a restart without the join key.
	Pin string
}

// NewRelayClient returns a relay client for a coordinator at baseURL (one
// URL or a list of replicas) whose certificate has pin.
func NewRelayClient(ctx context.Context, baseURL, pin string, priv key.RelayPrivate) (*RelayClient, error) {
	hc, err := NewHTTPClient(baseURL, pin)
	if err != nil {
		return nil, err
	}
	info, rs, err := fetchInfoAny(ctx, hc, baseURL)
	if err != nil {
		return nil, err
	}
	return &RelayClient{
		p:    prover{rs: rs, hc: hc, pub: priv.Public().String(), shared: key.Precompute(priv, info.Key), now: time.Now},
		Info: info, Pin: pin,
	}, nil
}

// JoinRelay joins the relay to the coordinator's relay map with a join key
// (from `coordinator relaykey create`). req.Key is filled from priv and
// req.Region, if empty, from nothing: the relay must name its region, which
// must match the key's. The response carries the admission keys to trust,
// the region's mesh secret and relays, and the heartbeat interval; call
// Heartbeat on the returned client at that interval.
func JoinRelay(ctx context.Context, coordinatorURL, joinKey string, priv key.RelayPrivate, req netmap.RelayJoinRequest) (*RelayClient, *netmap.RelayJoinResponse, error) {
	_, pin, err := netmap.ParseJoinKey(joinKey)
	if err != nil {
		return nil, nil, err
	}
	rc, err := NewRelayClient(ctx, coordinatorURL, pin, priv)
	if err != nil {
		return nil, nil, err
	}
	req.Version = netmap.CurrentCapabilityVersion
	req.Key = priv.Public()
	var resp netmap.RelayJoinResponse
	hdr := http.Header{"Authorization": {"Bearer " + strings.TrimSpace(joinKey)}}
	if err := rc.p.post(ctx, pathRelayJoin, req, &resp, hdr); err != nil {
		return nil, nil, err
	}
	return rc, &resp, nil
}

// Heartbeat reports the relay's health; the answer refreshes the fleet
// information JoinRelay returned.
func (rc *RelayClient) Heartbeat(ctx context.Context, hb netmap.RelayHeartbeat) (*netmap.RelayJoinResponse, error) {
	var resp netmap.RelayJoinResponse
	if err := rc.p.post(ctx, pathRelayBeat, hb, &resp, nil); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Revocations long-polls the coordinator for revoked node keys newer than
// after (see netmap.RelayRevocationsRequest). It returns the full list in
// force; pass its Seq as after in the next call.
func (rc *RelayClient) Revocations(ctx context.Context, after uint64) (*netmap.RelayRevocations, error) {
	var resp netmap.RelayRevocations
	if err := rc.p.postTimeout(ctx, pathRelayRevs, netmap.RelayRevocationsRequest{After: after}, &resp,
		netmap.RevocationPollTimeout+requestTimeout); err != nil {
		return nil, err
	}
	return &resp, nil
}
