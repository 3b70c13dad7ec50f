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
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
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

	once  sync.Once
	cache *scopedCache
	xds   serverv3.Server

	mu      sync.Mutex
	streams map[int64]*stream     // by stream ID
	nodes   map[string]int        // node ID → open streams that have sent a request
	views   map[string]*nodeState // node ID → its view, while it has streams

	idxMu sync.Mutex
	idx   *index // of the newest snapshot seen
}

// nodeState is a connected node's current view; mu serializes building
// and installing it.
type nodeState struct {
	mu   sync.Mutex
	view *nodeView
	sets map[resource.Type]*typeSet
}

type stream struct {
	id   spiffeid.ID // the caller's verified identity
	node string      // node ID once the first request is checked

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
		s.xds = serverv3.NewServer(context.Background(), s.cache, serverv3.CallbackFuncs{
			StreamOpenFunc:         s.open,
			StreamClosedFunc:       s.closed,
			DeltaStreamOpenFunc:    s.open,
			DeltaStreamClosedFunc:  s.closed,
			StreamRequestFunc:      func(id int64, req *discoveryv3.DiscoveryRequest) error { return s.request(id, req.GetNode()) },
			StreamDeltaRequestFunc: func(id int64, req *discoveryv3.DeltaDiscoveryRequest) error { return s.request(id, req.GetNode()) },
			FetchRequestFunc: func(context.Context, *discoveryv3.DiscoveryRequest) error {
				return status.Error(codes.Unimplemented, "fetch is not served; use ADS")
			},
		})
	})
}

// Register registers the aggregated discovery service on g.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	s.init()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
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
	if err := x.setVersionsFrom(v, old); err != nil {
		return err
	}
	out := make(map[resource.Type]*typeSet, len(typeOrder))
	changed := old == nil
	for _, typ := range typeOrder {
		if old != nil && old.versions[typ] == v.versions[typ] {
			out[typ] = ns.sets[typ]
			continue
		}
		changed = true
		ts, err := x.shared(v, typ)
		if err != nil {
			return err
		}
		out[typ] = ts
	}
	if !changed {
		ns.view = v
		return nil
	}
	// Clusters and endpoints come from the same view, so they are
	// consistent (every CLA's cluster is sent) by construction.
	s.cache.set(node, out)
	ns.view, ns.sets = v, out
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
	s.streams[streamID] = &stream{id: id, peer: addr, since: time.Now(), certExpiry: certExpiry}
	s.mu.Unlock()
	return nil
}

func (s *Server) closed(streamID int64, _ *corev3.Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[streamID]
	if !ok {
		return
	}
	delete(s.streams, streamID)
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
// stream's first request, installs the node's snapshot.
func (s *Server) request(streamID int64, node *corev3.Node) error {
	s.mu.Lock()
	st, ok := s.streams[streamID]
	s.mu.Unlock()
	if !ok {
		return status.Error(codes.PermissionDenied, "stream was not authenticated")
	}
	want := st.id.String()
	if got := node.GetId(); got != want {
		s.Logger.Warn("xds: refused request for another identity", slog.String("spiffe_id", want), slog.String("node_id", got))
		return status.Errorf(codes.PermissionDenied, "node.id %q is not the caller's SPIFFE ID %s", got, want)
	}
	s.observeNode(st, node)
	if st.node != "" { // only this stream's goroutine reads or writes st.node
		return nil
	}
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
