package meshnode

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/wiremesh/wiremesh/key"
	"github.com/wiremesh/wiremesh/meshnode/bind"
	"github.com/wiremesh/wiremesh/meshnode/localapi"
	"github.com/wiremesh/wiremesh/meshnode/paths"
	"github.com/wiremesh/wiremesh/meshnode/routectl"
	"github.com/wiremesh/wiremesh/netmap"
)

var _ localapi.Backend = (*Node)(nil)

// Down implements localapi.Backend.
func (n *Node) Down() {
	select {
	case <-n.down:
	default:
		close(n.down)
	}
}

// Status implements localapi.Backend.
func (n *Node) Status() localapi.Status {
	n.mu.Lock()
	var st localapi.Status
	st.Self.HomeRelay = n.relays.Home().Region
	st.Self.NodeKey = n.priv.Public().String()
	st.Self.IPs = []string{}
	if n.mu.nm != nil {
		st.Self.Name = n.mu.nm.Self.Name
		for _, a := range n.mu.nm.Self.Addresses {
			st.Self.IPs = append(st.Self.IPs, a.Addr().String())
		}
	}
	st.Coordinator.Connected = n.mu.coordUp
	if !n.mu.coordUp {
		st.Coordinator.LastError = n.mu.coordErr
	}
	peers := maps.Clone(n.mu.applied) // frames change it in place
	rtts := make(map[key.NodePublic]float64, len(n.mu.rtt))
	for k, v := range n.mu.rtt {
		rtts[k] = v
	}
	eng := n.mu.engine
	n.mu.Unlock()
	var rs routectl.Status
	if eng != nil && eng.routes != nil {
		rs = eng.routes.Status()
	}
	st.Self.ExitNode, st.Self.ExitNodeUp = rs.ExitNode, rs.ExitNodeUp

	var wg map[key.NodePublic]wgPeer
	if eng != nil {
		wg = readWGPeers(eng)
	}
	st.Peers = []localapi.PeerStatus{}
	for k, p := range peers {
		ps := localapi.PeerStatus{Name: p.Name, NodeKey: k.String(), Online: p.Online, IPs: []string{}, RTTMs: rtts[k],
			Routes: []string{}, ExitNodeOption: p.ExitNodeOption}
		for _, r := range rs.Primary[k] {
			ps.Routes = append(ps.Routes, r.String())
		}
		for _, a := range p.Addresses {
			ps.IPs = append(ps.IPs, a.Addr().String())
		}
		ep := n.bind.Peer(k)
		switch ep.Path() {
		case bind.PathDirect:
			ps.Path = "direct"
			if d, ok := ep.Direct(); ok {
				ps.Endpoint = d.String()
			}
			if _, rtt, ok := n.paths.Direct(k); ok && rtt > 0 {
				ps.RTTMs = float64(rtt.Microseconds()) / 1000
			}
		case bind.PathRelay:
			ps.Path = "relay"
			if r, ok := n.relays.RelayFor(k); ok {
				ps.Relay = r.Region
			}
		default:
			ps.Path = "none"
		}
		if w, ok := wg[k]; ok {
			ps.RxBytes, ps.TxBytes = w.rx, w.tx
			if !w.handshake.IsZero() {
				hs := w.handshake.UTC()
				ps.LastHandshake = &hs
			}
		}
		// Until a handshake completes nothing has flowed: report no path.
		if ps.LastHandshake == nil && ps.RxBytes == 0 {
			ps.Path, ps.Endpoint, ps.Relay = "none", "", ""
		}
		st.Peers = append(st.Peers, ps)
	}
	sort.Slice(st.Peers, func(i, j int) bool { return st.Peers[i].Name < st.Peers[j].Name })
	st.DNS = n.dnsStatus()
	return st
}

type wgPeer struct {
	rx, tx    uint64
	handshake time.Time
}

// readWGPeers parses wireguard-go's UAPI dump for per-peer counters.
func readWGPeers(e *engine) map[key.NodePublic]wgPeer {
	s, err := e.dev.IpcGet()
	if err != nil {
		return nil
	}
	out := map[key.NodePublic]wgPeer{}
	var cur key.NodePublic
	var p wgPeer
	var sec, nsec int64
	flush := func() {
		if !cur.IsZero() {
			if sec != 0 {
				p.handshake = time.Unix(sec, nsec)
			}
			out[cur] = p
		}
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "public_key":
			flush()
			cur, p, sec, nsec = parseUAPIKey(v), wgPeer{}, 0, 0
		case "rx_bytes":
			p.rx, _ = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			p.tx, _ = strconv.ParseUint(v, 10, 64)
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	flush()
	return out
}

func parseUAPIKey(hexKey string) key.NodePublic {
	k, err := key.ParseNodePublic(key.NodePublicPrefix + hexKey)
	if err != nil {
		return key.NodePublic{}
	}
	return k
}

// Ping implements localapi.Backend. Each round sends a disco ping through
// the relay and one to every direct candidate, and reports every pong with
// the path it took. It stops after a round in which a pong came back over a
// direct path, or after Count rounds.
func (n *Node) Ping(ctx context.Context, req localapi.PingRequest, emit func(localapi.PingResult)) error {
	p, ok := n.peerByNameOrIP(req.Peer)
	if !ok {
		return fmt.Errorf("%w: %q", localapi.ErrNotFound, req.Peer)
	}
	ip := ""
	if a, ok := selfAddr(p); ok {
		ip = a.String()
	}
	got := 0
	for i := 0; i < req.Count && ctx.Err() == nil; i++ {
		ch := make(chan paths.Pong, paths.MaxCandidates+1)
		sent := n.paths.Probe(p.NodeKey, ch)
		timer := time.NewTimer(req.Timeout)
		direct := false
	round:
		for answered := 0; answered < sent; {
			select {
			case r := <-ch:
				answered++
				got++
				ms := float64(r.RTT.Microseconds()) / 1000
				res := localapi.PingResult{Peer: p.Name, IP: ip, Path: "relay", RTTMs: ms}
				if r.Src.IsValid() {
					res.Path, res.Via, direct = "direct", r.Src.String(), true
				} else if rl, ok := n.relays.RelayFor(p.NodeKey); ok {
					res.Via = rl.Region
				}
				n.mu.Lock()
				n.mu.rtt[p.NodeKey] = ms
				n.mu.Unlock()
				emit(res)
			case <-timer.C:
				break round
			case <-ctx.Done():
				break round
			}
		}
		timer.Stop()
		if direct {
			break
		}
		if i+1 < req.Count {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	if got == 0 {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("no pong from %s", p.Name)
	}
	return nil
}

// Netcheck implements localapi.Backend: a fresh probe of every region,
// also reported to the coordinator.
func (n *Node) Netcheck(ctx context.Context) (localapi.Netcheck, error) {
	select {
	case <-n.engineReady:
	default:
		return localapi.Netcheck{}, errors.New("waiting for the first netmap")
	}
	r := n.check.Check(ctx)
	_, kind := n.portMapping()
	report := netmap.Netcheck{UDP: r.UDP, PublicAddr: r.PublicAddr, MappingVariesByDest: r.MappingVariesByDest,
		PreferredRelay: r.PreferredRelay, RelayLatencyMS: r.RelayLatencyMS, PortMapping: string(kind)}
	n.report.Netcheck(report)
	return localapi.Netcheck{UDP: r.UDP, PublicAddr: r.PublicAddr, MappingVariesByDest: r.MappingVariesByDest,
		PreferredRelay: r.PreferredRelay, RelayLatencyMS: r.RelayLatencyMS, PortMapping: string(kind)}, nil
}
