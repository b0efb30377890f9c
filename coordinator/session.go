package coordinator

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wiremesh/wiremesh/admit"
	"github.com/wiremesh/wiremesh/netmap"
)

// A session is one node's open netmap stream. Changes elsewhere mark it
// (markPeer, markRemoved, ...) under its own small lock; its writer, the
// stream's handler goroutine, wakes on notify, takes everything pending at
// once and sends it as one delta frame. A burst of changes therefore costs a
// stream one frame, not one per change.

// keepAliveInterval is how often an idle stream gets a keep-alive frame:
// under the 60 s idle timeout common to proxies and load balancers.
const keepAliveInterval = 50 * time.Second

// maxKeptFrameBuf is the largest frame buffer a stream keeps between
// frames. Deltas fit in a few KiB; a full map of 1,000 peers is ~400 KiB,
// and keeping one per stream would cost 400 MiB at 1,000 streams.
const maxKeptFrameBuf = 64 << 10

// maxPendingPeers bounds a session's pending peer marks. A node this far
// behind gets a full map instead, which is cheaper than this many deltas.
const maxPendingPeers = 1 << 16

// pending is what a session still has to send.
type pending struct {
	full      bool // send a full map
	recompute bool // policy changed: diff the visible peer set
	self      bool
	filter    bool
	relayMap  bool
	dns       bool
	admission bool
	changed   map[netmap.NodeID]struct{}
	online    map[netmap.NodeID]struct{} // only online/last-seen changed
	removed   map[netmap.NodeID]struct{}
	since     time.Time // when the oldest pending change happened
}

type session struct {
	node   *nodeState
	cancel context.CancelFunc
	notify chan struct{} // capacity 1: a pending wake-up

	mu sync.Mutex // guards p
	p  pending

	// Writer-owned fields.
	seq        uint64
	sent       map[netmap.NodeID]struct{} // peers the node currently has
	lastFilter []byte
	// tokenRegions are the regions of the last admission token sent.
	tokenRegions []string
	// tokenIssued is when the last admission token was sent, in unix
	// nanoseconds: written by the writer, read by the sweeper.
	tokenIssued atomic.Int64
}

func newSession(n *nodeState, cancel context.CancelFunc) *session {
	s := &session{node: n, cancel: cancel, notify: make(chan struct{}, 1)}
	s.p.full = true
	s.p.since = time.Now()
	s.wake() // the full map goes out first, without waiting for a change
	return s
}

func (s *session) lock()   { s.mu.Lock() }
func (s *session) unlock() { s.mu.Unlock() }

func (s *session) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *session) touch(now time.Time) {
	if s.p.since.IsZero() {
		s.p.since = now
	}
}

func (s *session) markPeer(id netmap.NodeID, filter bool, now time.Time) {
	s.lock()
	if !s.p.full {
		if s.p.changed == nil {
			s.p.changed = map[netmap.NodeID]struct{}{}
		}
		s.p.changed[id] = struct{}{}
		delete(s.p.removed, id)
		if len(s.p.changed)+len(s.p.removed) > maxPendingPeers {
			s.p.full = true
			s.p.changed, s.p.removed = nil, nil
		}
		s.p.filter = s.p.filter || filter
	}
	s.touch(now)
	s.unlock()
	s.wake()
}

// markOnline records that peer id went online or offline: sent as a small
// patch unless the whole record is pending anyway.
func (s *session) markOnline(id netmap.NodeID, now time.Time) {
	s.lock()
	if !s.p.full {
		if s.p.online == nil {
			s.p.online = map[netmap.NodeID]struct{}{}
		}
		s.p.online[id] = struct{}{}
		if len(s.p.online) > maxPendingPeers {
			s.p.full = true
			s.p.changed, s.p.online, s.p.removed = nil, nil, nil
		}
	}
	s.touch(now)
	s.unlock()
	s.wake()
}

func (s *session) markRemoved(id netmap.NodeID, now time.Time) {
	s.lock()
	if !s.p.full {
		if s.p.removed == nil {
			s.p.removed = map[netmap.NodeID]struct{}{}
		}
		s.p.removed[id] = struct{}{}
		delete(s.p.changed, id)
		s.p.filter = true
		if len(s.p.changed)+len(s.p.removed) > maxPendingPeers {
			s.p.full = true
			s.p.changed, s.p.removed = nil, nil
		}
	}
	s.touch(now)
	s.unlock()
	s.wake()
}

func (s *session) mark(f func(p *pending), now time.Time) {
	s.lock()
	f(&s.p)
	s.touch(now)
	s.unlock()
	s.wake()
}

func (s *session) markSelf(now time.Time) { s.mark(func(p *pending) { p.self = true }, now) }

// take returns and clears what is pending.
func (s *session) take() pending {
	s.lock()
	p := s.p
	s.p = pending{}
	s.unlock()
	return p
}

// wireMapResponse is netmap.MapResponse with peers as pre-encoded JSON, so
// one encoding of a changed node serves every stream. Its JSON form is
// identical to netmap.MapResponse (TestWireMatchesNetmap checks).
type wireMapResponse struct {
	Seq          uint64              `json:"seq"`
	KeepAlive    bool                `json:"keep_alive,omitempty"`
	Full         bool                `json:"full,omitempty"`
	Self         json.RawMessage     `json:"self,omitempty"`
	Peers        []json.RawMessage   `json:"peers,omitempty"`
	PeersChanged []json.RawMessage   `json:"peers_changed,omitempty"`
	PeersPatch   []netmap.PeerChange `json:"peers_changed_patch,omitempty"`
	PeersRemoved []netmap.NodeID     `json:"peers_removed,omitempty"`
	RelayMap     *netmap.RelayMap    `json:"relay_map,omitempty"`
	DNS          *netmap.DNS         `json:"dns,omitempty"`
	PacketFilter json.RawMessage     `json:"packet_filter,omitempty"`
	Admission    *netmap.Admission   `json:"admission,omitempty"`
}

// appendJSON appends m's JSON encoding to b. Pre-encoded peers are copied
// as they are: json.Marshal would re-validate every one of them, which
// dominated the cost of a full map.
func (m *wireMapResponse) appendJSON(b []byte) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, m.Seq, 10)
	if m.KeepAlive {
		b = append(b, `,"keep_alive":true`...)
	}
	if m.Full {
		b = append(b, `,"full":true`...)
	}
	if m.Self != nil {
		b = append(append(b, `,"self":`...), m.Self...)
	}
	b = appendRawList(b, `,"peers":[`, m.Peers)
	b = appendRawList(b, `,"peers_changed":[`, m.PeersChanged)
	b = appendField(b, `,"peers_changed_patch":`, m.PeersPatch, len(m.PeersPatch) > 0)
	if len(m.PeersRemoved) > 0 {
		b = append(b, `,"peers_removed":[`...)
		for i, id := range m.PeersRemoved {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(id), 10)
		}
		b = append(b, ']')
	}
	b = appendField(b, `,"relay_map":`, m.RelayMap, m.RelayMap != nil)
	b = appendField(b, `,"dns":`, m.DNS, m.DNS != nil)
	if m.PacketFilter != nil {
		b = append(append(b, `,"packet_filter":`...), m.PacketFilter...)
	}
	b = appendField(b, `,"admission":`, m.Admission, m.Admission != nil)
	return append(b, '}')
}

func appendRawList(b []byte, prefix string, list []json.RawMessage) []byte {
	if len(list) == 0 {
		return b
	}
	b = append(b, prefix...)
	for i, r := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, r...)
	}
	return append(b, ']')
}

func appendField(b []byte, prefix string, v any, present bool) []byte {
	if !present {
		return b
	}
	enc, err := json.Marshal(v)
	if err != nil {
		return b // these types always encode
	}
	return append(append(b, prefix...), enc...)
}

// runStream writes frames to w until ctx ends or a write fails.
func (srv *Server) runStream(ctx context.Context, s *session, w http.ResponseWriter) error {
	rc := http.NewResponseController(w)
	ka := time.NewTicker(keepAliveInterval)
	defer ka.Stop()
	buf := make([]byte, 0, 4<<10)
	for {
		var kind string
		var p pending
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ka.C:
			kind = "keepalive"
		case <-s.notify:
			p = s.take()
		}
		var msg *wireMapResponse
		pushStart := time.Now()
		if kind == "keepalive" {
			s.seq++
			msg = &wireMapResponse{Seq: s.seq, KeepAlive: true}
		} else {
			msg, kind = srv.buildFrame(s, p)
			if msg == nil {
				continue
			}
		}
		buf = append(buf[:0], 0, 0, 0, 0) // frame header, filled below
		buf = msg.appendJSON(buf)
		netmap.AppendFrame(buf[:0], len(buf)-4)
		if _, err := w.Write(buf); err != nil {
			return err
		}
		if err := rc.Flush(); err != nil {
			return err
		}
		srv.m.updates.WithLabelValues(kind).Inc()
		srv.m.push.WithLabelValues(kind).Observe(time.Since(pushStart).Seconds())
		if !p.since.IsZero() {
			srv.m.fanout.Observe(time.Since(p.since).Seconds())
		}
		if cap(buf) > maxKeptFrameBuf {
			buf = make([]byte, 0, 4<<10) // do not pin a full map's buffer
		}
	}
}

// buildFrame turns pending work into a frame, or nil when nothing the node
// does not already have is left.
func (srv *Server) buildFrame(s *session, p pending) (*wireMapResponse, string) {
	now := srv.now()
	st := srv.st
	st.mu.RLock()
	defer st.mu.RUnlock()
	n := s.node
	msg := &wireMapResponse{}
	empty := true
	if p.full {
		msg.Full = true
		msg.Self = n.wireBytes()
		s.sent = map[netmap.NodeID]struct{}{}
		msg.Peers = []json.RawMessage{}
		st.visibleFrom(n, now, func(o *nodeState) {
			msg.Peers = append(msg.Peers, st.peerBytesLocked(o, n))
			s.sent[o.id] = struct{}{}
		})
		p.filter, p.relayMap, p.dns, p.admission = true, true, true, true
		s.lastFilter = nil
		empty = false
	} else {
		if p.self {
			msg.Self = n.wireBytes()
			empty = false
		}
		if p.recompute {
			vis := map[netmap.NodeID]*nodeState{}
			st.visibleFrom(n, now, func(o *nodeState) { vis[o.id] = o })
			for id := range s.sent {
				if _, ok := vis[id]; !ok {
					p.removed = addID(p.removed, id)
				}
			}
			for id, o := range vis {
				// Routers are sent again: which of their routes this
				// node may use depends on the policy.
				if _, ok := s.sent[id]; !ok || o.hasRoutes() {
					p.changed = addID(p.changed, id)
				}
			}
			p.filter = true
		}
		for id := range p.changed {
			o, ok := st.nodes[id]
			if !ok || o.expired(now) {
				continue
			}
			msg.PeersChanged = append(msg.PeersChanged, st.peerBytesLocked(o, n))
			s.sent[id] = struct{}{}
		}
		for id := range p.online {
			if _, full := p.changed[id]; full {
				continue
			}
			o, ok := st.nodes[id]
			if !ok || o.expired(now) {
				continue
			}
			if _, known := s.sent[id]; !known {
				msg.PeersChanged = append(msg.PeersChanged, st.peerBytesLocked(o, n))
				s.sent[id] = struct{}{}
				continue
			}
			online, seen := o.online(), o.rec.LastSeen
			msg.PeersPatch = append(msg.PeersPatch, netmap.PeerChange{ID: id, Online: &online, LastSeen: &seen})
		}
		for id := range p.removed {
			if _, ok := s.sent[id]; ok {
				if o, live := st.nodes[id]; live && !o.expired(now) && !p.recompute {
					continue // removed, then re-added within this batch
				}
				msg.PeersRemoved = append(msg.PeersRemoved, id)
				delete(s.sent, id)
			}
		}
		if len(msg.PeersChanged) > 0 || len(msg.PeersPatch) > 0 || len(msg.PeersRemoved) > 0 {
			empty = false
		}
	}
	if p.filter {
		f, _ := json.Marshal(st.filterLocked(n))
		if string(f) != string(s.lastFilter) {
			msg.PacketFilter = f
			s.lastFilter = f
			empty = false
		}
	}
	if p.relayMap {
		rm := srv.relays.relayMap()
		msg.RelayMap = &rm
		empty = false
	}
	if p.dns {
		d := srv.dns
		msg.DNS = &d
		empty = false
	}
	due := p.admission || s.admissionDue(srv.cfg.TokenLifetime, now)
	var regions []string
	if due || p.relayMap {
		regions = srv.relays.tokenRegions()
		due = due || !slices.Equal(regions, s.tokenRegions)
	}
	if due {
		// The token is valid in the regions of the relay map (the node
		// can use no other relay) and never past the node's key expiry.
		exp := now.Add(srv.cfg.TokenLifetime)
		if !n.rec.KeyExpiry.IsZero() && n.rec.KeyExpiry.Before(exp) {
			exp = n.rec.KeyExpiry
		}
		tok, err := admit.IssueRegions(srv.signer, srv.signPub, n.nodeKey, regions, now, exp)
		if err == nil {
			msg.Admission = &netmap.Admission{Token: encodeToken(tok), Expires: exp}
			s.tokenIssued.Store(now.UnixNano())
			s.tokenRegions = regions
			empty = false
		}
	}
	if empty {
		return nil, ""
	}
	s.seq++
	msg.Seq = s.seq
	if msg.Full {
		return msg, "full"
	}
	return msg, "delta"
}

func addID(m map[netmap.NodeID]struct{}, id netmap.NodeID) map[netmap.NodeID]struct{} {
	if m == nil {
		m = map[netmap.NodeID]struct{}{}
	}
	m[id] = struct{}{}
	return m
}

// admissionDue reports whether the last token sent needs replacing: once
// half its lifetime is over, as admit.Token.NeedsRefresh says.
func (s *session) admissionDue(lifetime time.Duration, now time.Time) bool {
	issued := s.tokenIssued.Load()
	return issued != 0 && !now.Before(time.Unix(0, issued).Add(lifetime/2))
}
