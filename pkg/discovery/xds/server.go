package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/tether-mesh/tether/pkg/discovery"
)

// Server serves the registry over ADS (state-of-the-world and delta),
// scoped to the caller: a sidecar's node.id must be the SPIFFE ID of the
// SVID it connected with, and it receives only what BuildResources gives
// that identity. The gRPC server it is registered on must use mTLS with
// verified client certificates (go-spiffe tlsconfig.MTLSServerConfig).
//
// Set the fields, call Register, then Run. A Server is safe for concurrent
// use once Register has been called.
type Server struct {
	Registry *discovery.Registry
	// ClusterDomain is the cluster DNS domain of the names in the name
	// table (default cluster.local).
	ClusterDomain string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// MaxConcurrentSyncs bounds the streams being brought up to date
	// from nothing at once (default DefaultMaxConcurrentSyncs). A
	// stream's first request waits for a slot; the slot is freed when the
	// client has answered (ACK or NACK) every response sent to it
	// meanwhile, or after SyncSlotTimeout, or when the stream ends. The
	// first responses for a large mesh are megabytes per stream: without
	// a bound, a thousand sidecars reconnecting at once (after discovery
	// restarts) hold gigabytes of them in flight.
	MaxConcurrentSyncs int
	// SyncSlotTimeout is how long a stream may hold a slot (default
	// DefaultSyncSlotTimeout).
	SyncSlotTimeout time.Duration
	// MaxSyncsPerIdentity bounds the slots the streams of one SPIFFE ID
	// hold at once (default MaxConcurrentSyncs/4, at least 1). Waiting
	// streams are served one identity after another, so that one
	// identity's streams, answering or not, cannot make another's first
	// sync wait for the slots.
	MaxSyncsPerIdentity int
	// MaxStreamsPerIdentity bounds the open streams of one SPIFFE ID
	// (default DefaultMaxStreamsPerIdentity); more are refused with
	// ResourceExhausted. Every replica of a workload shares its identity:
	// set it above the replicas of the largest workload, twice over for
	// reconnects.
	MaxStreamsPerIdentity int

	once    sync.Once
	slots   *slotQueue
	cache   *scopedCache
	xds     serverv3.Server
	perID   map[spiffeid.ID]int // open streams by caller identity, under mu
	refused atomic.Int64        // streams refused by MaxStreamsPerIdentity

	mu      sync.Mutex
	streams map[int64]*stream     // by stream ID
	nodes   map[string]int        // node ID → open streams that have sent a request
	views   map[string]*nodeState // node ID → its view, while it has streams

	idxMu sync.Mutex
	idx   *index // of the newest snapshot seen
}

// Defaults of Server's fields.
const (
	DefaultMaxConcurrentSyncs    = 32
	DefaultSyncSlotTimeout       = 5 * time.Second
	DefaultMaxStreamsPerIdentity = 1024
)

// nodeState is a connected node's current view; mu serializes building
// and installing it.
type nodeState struct {
	mu   sync.Mutex
	view *nodeView
}

type stream struct {
	ctx  context.Context
	id   spiffeid.ID // the caller's verified identity
	node string      // node ID once the first request is checked
	// slot is the sync slot the stream holds, nil when none: only the
	// stream's goroutine (its requests, responses and close) uses it.
	slot *syncSlot

	// For Nodes (nodes.go): set at open; then only report changes.
	peer       netip.AddrPort
	since      time.Time
	certExpiry time.Time
	lastNode   *corev3.Node // only the stream's goroutine uses it
	report     atomic.Pointer[nodeReport]
}

// ErrNoPeerID is returned (as PermissionDenied) to a caller without a
// verified X.509-SVID.
var ErrNoPeerID = errors.New("caller presented no verified X.509-SVID")

func (s *Server) init() {
	s.once.Do(func() {
		if s.Logger == nil {
			s.Logger = slog.Default()
		}
		s.streams = make(map[int64]*stream)
		s.nodes = make(map[string]int)
		s.views = make(map[string]*nodeState)
		s.cache = newScopedCache() // keyed by node.id, which the callbacks check
		if s.MaxConcurrentSyncs <= 0 {
			s.MaxConcurrentSyncs = DefaultMaxConcurrentSyncs
		}
		if s.SyncSlotTimeout <= 0 {
			s.SyncSlotTimeout = DefaultSyncSlotTimeout
		}
		if s.MaxSyncsPerIdentity <= 0 {
			s.MaxSyncsPerIdentity = max(1, s.MaxConcurrentSyncs/4)
		}
		if s.MaxStreamsPerIdentity <= 0 {
			s.MaxStreamsPerIdentity = DefaultMaxStreamsPerIdentity
		}
		s.slots = newSlotQueue(s.MaxConcurrentSyncs, s.MaxSyncsPerIdentity)
		s.perID = make(map[spiffeid.ID]int)
		s.xds = serverv3.NewServer(context.Background(), s.cache, serverv3.CallbackFuncs{
			StreamOpenFunc:        s.open,
			StreamClosedFunc:      s.closed,
			DeltaStreamOpenFunc:   s.open,
			DeltaStreamClosedFunc: s.closed,
			StreamRequestFunc: func(id int64, req *discoveryv3.DiscoveryRequest) error {
				return s.request(id, req.GetNode(), req.GetResponseNonce())
			},
			StreamDeltaRequestFunc: func(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
				return s.request(id, req.GetNode(), req.GetResponseNonce())
			},
			StreamResponseFunc: func(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
				s.sent(id, resp.GetNonce())
			},
			StreamDeltaResponseFunc: func(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
				s.sent(id, resp.GetNonce())
			},
			FetchRequestFunc: func(context.Context, *discoveryv3.DiscoveryRequest) error {
				return status.Error(codes.Unimplemented, "fetch is not served; use ADS")
			},
		})
	})
}

// GRPCServerOptions are the options for the gRPC server a Server is
// registered on, besides credentials: small per-connection read buffers
// (sidecars send small requests) and write buffers released between
// writes, so that a thousand mostly idle streams do not hold 64 KiB of
// buffers each.
func GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ReadBufferSize(4 << 10), grpc.SharedWriteBuffer(true)}
}

// Register registers the aggregated discovery service on g. Its streams
// end, with Unauthenticated, when the client certificate they were opened
// with expires.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	s.init()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, certBound{Server: s.xds, log: s.Logger})
}

// Run keeps the snapshots of connected nodes current until ctx ends, then
// returns nil. After a change it rebuilds the nodes' views on GOMAXPROCS
// goroutines; a node whose view the change leaves as it was gets no new
// snapshot.
func (s *Server) Run(ctx context.Context) error {
	s.init()
	workers := runtime.GOMAXPROCS(0)
	for {
		snap := s.Registry.Snapshot()
		s.mu.Lock()
		nodes := make([]string, 0, len(s.nodes))
		for n := range s.nodes {
			nodes = append(nodes, n)
		}
		s.mu.Unlock()
		next := make(chan string)
		var wg sync.WaitGroup
		for range min(workers, len(nodes)) {
			wg.Go(func() {
				for n := range next {
					if err := s.update(ctx, snap, n); err != nil {
						s.Logger.Error("xds: update snapshot", slog.String("spiffe_id", n), slog.Any("error", err))
					}
				}
			})
		}
		for _, n := range nodes {
			next <- n
		}
		close(next)
		wg.Wait()
		select {
		case <-ctx.Done():
			return nil
		case <-snap.Changed():
		}
	}
}

// indexFor returns the index of the newest snapshot: snap's, or a newer
// one's. An older view never replaces a newer one.
func (s *Server) indexFor(snap *discovery.Snapshot) *index {
	s.idxMu.Lock()
	defer s.idxMu.Unlock()
	if cur := s.Registry.Snapshot(); cur.Version() > snap.Version() {
		snap = cur
	}
	if s.idx != nil && s.idx.snap.Version() >= snap.Version() {
		return s.idx
	}
	x := newIndex(snap, s.idx, s.ClusterDomain)
	if s.idx != nil {
		s.idx.prev.Store(nil) // keep one index of history
	}
	s.idx = x
	return x
}

// update builds node's view of snap (or of a newer snapshot) and installs
// it. Each resource type is versioned by a hash of its contents, so an
// unchanged type is not pushed; a node whose view is unchanged gets no new
// snapshot.
func (s *Server) update(ctx context.Context, snap *discovery.Snapshot, node string) error {
	id, err := spiffeid.FromString(node)
	if err != nil {
		return fmt.Errorf("node %q: %w", node, err)
	}
	s.mu.Lock()
	ns, ok := s.views[node]
	if !ok {
		ns = &nodeState{}
		s.views[node] = ns
	}
	s.mu.Unlock()
	ns.mu.Lock()
	defer ns.mu.Unlock()
	x := s.indexFor(snap)
	old := ns.view
	if old != nil && old.idx.snap.Version() >= x.snap.Version() {
		return nil // already current
	}
	v := x.view(id, old)
	sets, err := x.sets(v, old)
	if err != nil {
		return err
	}
	v.sets = sets
	changed := old == nil
	for _, typ := range typeOrder {
		changed = changed || sets[typ] != old.sets[typ]
	}
	if changed {
		// Clusters and endpoints come from the same view, so they are
		// consistent (every CLA's cluster is sent) by construction.
		s.cache.set(node, sets)
	}
	ns.view = v
	return nil
}

func (s *Server) open(ctx context.Context, streamID int64, _ string) error {
	id, err := peerID(ctx)
	if err != nil {
		s.Logger.Warn("xds: refused stream", slog.Any("error", err))
		return status.Error(codes.PermissionDenied, err.Error())
	}
	addr, certExpiry := peerInfo(ctx)
	s.mu.Lock()
	if n := s.perID[id]; n >= s.MaxStreamsPerIdentity {
		s.mu.Unlock()
		s.refused.Add(1)
		s.Logger.Warn("xds: refused stream over the per-identity limit", slog.String("spiffe_id", id.String()),
			slog.String("peer", addr.String()), slog.Int("open", n))
		return status.Errorf(codes.ResourceExhausted, "%s already has %d open ADS streams, the most one identity may have (--max-streams-per-identity)", id, n)
	}
	s.perID[id]++
	s.streams[streamID] = &stream{ctx: ctx, id: id, peer: addr, since: time.Now(), certExpiry: certExpiry}
	s.mu.Unlock()
	return nil
}

// StreamsOverLimit reports the streams refused so far because their
// identity had MaxStreamsPerIdentity open.
func (s *Server) StreamsOverLimit() int64 {
	s.init()
	return s.refused.Load()
}

func (s *Server) closed(streamID int64, _ *corev3.Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[streamID]
	if !ok {
		return
	}
	delete(s.streams, streamID)
	if s.perID[st.id]--; s.perID[st.id] <= 0 {
		delete(s.perID, st.id)
	}
	if st.slot != nil {
		st.slot.release()
		st.slot = nil
	}
	if st.node == "" {
		return
	}
	if s.nodes[st.node]--; s.nodes[st.node] <= 0 {
		delete(s.nodes, st.node)
		delete(s.views, st.node)
		s.cache.clear(st.node)
	}
}

// request checks that node is the stream's verified identity and, on the
// stream's first request, waits for a sync slot and installs the node's
// snapshot. A request that answers a response (nonce) may free the slot.
//
// Only a stream's first request must carry node: Envoy
// (set_node_on_first_message_only) and grpc-go send it on the first
// request only, and a later request without node means the stream's node.
// (The state-of-the-world server of go-control-plane fills it in before
// calling back; the delta server does not.)
func (s *Server) request(streamID int64, node *corev3.Node, nonce string) error {
	st := s.stream(streamID)
	if st == nil {
		return status.Error(codes.PermissionDenied, "stream was not authenticated")
	}
	want := st.id.String()
	if node == nil && st.node != "" { // only this stream's goroutine reads or writes st.node
		node = st.lastNode
	}
	if got := node.GetId(); got != want {
		s.Logger.Warn("xds: refused request for another identity", slog.String("spiffe_id", want), slog.String("node_id", got))
		if node == nil {
			return status.Errorf(codes.PermissionDenied, "the stream's first request has no node; node.id must be the caller's SPIFFE ID %s", want)
		}
		return status.Errorf(codes.PermissionDenied, "node.id %q is not the caller's SPIFFE ID %s", got, want)
	}
	s.observeNode(st, node)
	if st.node != "" { // only this stream's goroutine reads or writes st.node
		if st.slot != nil && nonce != "" && st.slot.answered(nonce) {
			st.slot.release()
			st.slot = nil
		}
		return nil
	}
	slot, err := s.acquireSlot(st.ctx, want)
	if err != nil {
		return err
	}
	st.slot = slot
	s.mu.Lock()
	st.node = want
	first := s.nodes[want] == 0
	s.nodes[want]++
	s.mu.Unlock()
	if first {
		s.Logger.Debug("xds: node connected", slog.String("spiffe_id", want))
	}
	if err := s.update(context.Background(), s.Registry.Snapshot(), want); err != nil {
		s.Logger.Error("xds: build snapshot", slog.String("spiffe_id", want), slog.Any("error", err))
		return status.Error(codes.Internal, "cannot build the configuration for this identity")
	}
	return nil
}

func (s *Server) stream(streamID int64) *stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[streamID]
}

// sent records a response sent on a stream that holds a sync slot.
func (s *Server) sent(streamID int64, nonce string) {
	if st := s.stream(streamID); st != nil && st.slot != nil {
		st.slot.outstanding[nonce] = true
	}
}

// syncSlot is a stream's place among the MaxConcurrentSyncs streams
// being brought up to date from nothing.
type syncSlot struct {
	outstanding map[string]bool // nonces of the responses not yet answered
	release     func()          // frees the slot; safe to call more than once, from any goroutine
}

// answered records the client's answer to the response nonce and
// reports whether every response sent is answered.
func (sl *syncSlot) answered(nonce string) bool {
	delete(sl.outstanding, nonce)
	return len(sl.outstanding) == 0
}

// acquireSlot waits for a sync slot for identity id until ctx (the
// stream's) ends.
func (s *Server) acquireSlot(ctx context.Context, id string) (*syncSlot, error) {
	release, err := s.slots.acquire(ctx, id)
	if err != nil {
		return nil, err
	}
	// (The timer is not stopped on release: it then does nothing.)
	sl := &syncSlot{outstanding: map[string]bool{}, release: release}
	time.AfterFunc(s.SyncSlotTimeout, sl.release)
	return sl, nil
}

// SyncStats reports the streams holding a sync slot and those waiting
// for one (see MaxConcurrentSyncs).
func (s *Server) SyncStats() (syncing, waiting int) {
	s.init()
	return s.slots.stats(s.MaxConcurrentSyncs)
}

// peerID returns the SPIFFE ID of the client certificate of the gRPC call
// in ctx. The server's TLS config verified it (go-spiffe verifies in
// VerifyPeerCertificate, so VerifiedChains stays empty).
func peerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, ErrNoPeerID
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, ErrNoPeerID
	}
	id, err := x509svid.IDFromCert(info.State.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %w", ErrNoPeerID, err)
	}
	return id, nil
}
