package xdsclient

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/tether-mesh/tether/pkg/discovery/wire"
)

// maxMessage bounds a response: a large mesh's view is megabytes.
const maxMessage = 64 << 20

// nackRepeatDelay is how long the client waits before NACKing the same
// bad update again. Some servers answer a NACK by sending the same update
// at once; without the pause a server stuck on a bad update and its
// clients would trade it in a tight loop.
const nackRepeatDelay = time.Second

// subscribed lists the types of a session.
var subscribed = []resource.Type{resource.ClusterType, resource.ListenerType, resource.ExtensionConfigType, resource.EndpointType}

func typeLabel(t resource.Type) string {
	switch t {
	case resource.ClusterType:
		return "cds"
	case resource.EndpointType:
		return "eds"
	case resource.ListenerType:
		return "lds"
	case resource.ExtensionConfigType:
		return "ecds"
	}
	return "other"
}

// session runs one connection and incremental (delta) ADS stream until it
// fails or ctx ends. Every type is a wildcard subscription, the name
// table's entries too (see wire.MergeNameTables): discovery scopes what
// each identity receives, and sends only the resources that changed.
// got reports whether discovery answered at all (which resets the
// backoff). Every goroutine it starts has ended when it returns.
func (c *Client) session(ctx context.Context) (got bool, err error) {
	tlsCfg := tlsconfig.MTLSClientConfig(c.cfg.SVIDs, c.cfg.Bundles, c.auth)
	conn, err := grpc.NewClient(c.cfg.Addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage)),
		grpc.WithDisableServiceConfig(), // none is published in DNS; skip the TXT lookup
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time: c.cfg.KeepaliveTime, Timeout: c.cfg.KeepaliveTimeout, PermitWithoutStream: true,
		}),
	)
	if err != nil {
		return false, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return false, fmt.Errorf("open ADS stream: %w", err)
	}

	resps := make(chan *discoveryv3.DeltaDiscoveryResponse)
	recvErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			r, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case resps <- r:
			case <-ctx.Done():
				return
			}
		}
	}()

	s := newSession(c, stream)
	defer s.stopTimers()
	refresh := time.NewTicker(c.cfg.MetadataRefresh)
	defer refresh.Stop()
	for _, t := range subscribed {
		if err := s.subscribe(t); err != nil {
			return false, err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return s.connected, ctx.Err()
		case err := <-recvErr:
			return s.connected, fmt.Errorf("ADS stream: %w", err)
		case r := <-resps:
			if !s.connected {
				s.connected = true
				c.metrics.connected.Set(1)
				c.errs.reset()
				c.log.Info("connected to discovery")
			}
			if err := s.handle(r); err != nil {
				return true, err
			}
		case <-refresh.C:
			if err := s.refreshMetadata(); err != nil {
				return true, err
			}
		case p := <-s.due:
			if s.pending[p.typ] != p {
				continue // superseded
			}
			delete(s.pending, p.typ)
			if err := s.send(p.typ, p.err); err != nil {
				return true, err
			}
		}
	}
}

// typeState is what one subscription has accepted on this stream.
type typeState struct {
	received  bool
	version   string // system version of the last accepted response (for logs)
	nonce     string // last response nonce
	resources map[string]types.Resource
	items     []types.Resource // resources, sorted by name
	names     []string         // subscribed resource names (nil: wildcard)

	nackedVersion, nackedErr string // the last NACK, to pace repeats
}

// sortedByName returns the resources of a name-to-resource map, sorted by
// name.
func sortedByName(resources map[string]types.Resource) []types.Resource {
	out := make([]types.Resource, 0, len(resources))
	for _, name := range slices.Sorted(maps.Keys(resources)) {
		out = append(out, resources[name])
	}
	return out
}

// pendingNack is a repeated NACK waiting for nackRepeatDelay.
type pendingNack struct {
	typ   resource.Type
	err   error
	timer *time.Timer
}

// session is one ADS stream. Its state starts empty: a new stream
// receives everything again. Only the session goroutine uses it.
type session struct {
	c         *Client
	stream    discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node      *corev3.Node
	types     map[resource.Type]*typeState
	pending   map[resource.Type]*pendingNack
	due       chan *pendingNack
	connected bool
	// memo holds what parsing the resources in types gave (and, while a
	// response is handled, those of the tentative state).
	memo *memo
}

// newSession returns c's session on stream, with nothing received yet.
func newSession(c *Client, stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient) *session {
	return &session{
		c:      c,
		stream: stream,
		node:   c.node(),
		types: map[resource.Type]*typeState{
			resource.ClusterType:         {},
			resource.ListenerType:        {},
			resource.ExtensionConfigType: {},
			resource.EndpointType:        {},
		},
		pending: make(map[resource.Type]*pendingNack),
		due:     make(chan *pendingNack, 16),
		memo:    newMemo(),
	}
}

func (s *session) stopTimers() {
	for _, p := range s.pending {
		p.timer.Stop()
	}
}

// subscribe sends the first request for typ.
func (s *session) subscribe(typ resource.Type) error {
	req := &discoveryv3.DeltaDiscoveryRequest{Node: s.node, TypeUrl: typ, ResourceNamesSubscribe: s.types[typ].names}
	if err := s.stream.Send(req); err != nil {
		return fmt.Errorf("subscribe to %s: %w", typeLabel(typ), err)
	}
	return nil
}

// send answers the last response of typ: an ACK or, with nackErr, a NACK.
func (s *session) send(typ resource.Type, nackErr error) error {
	st := s.types[typ]
	req := &discoveryv3.DeltaDiscoveryRequest{
		Node:          s.node,
		TypeUrl:       typ,
		ResponseNonce: st.nonce,
	}
	if nackErr != nil {
		req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: nackErr.Error()}
	}
	if err := s.stream.Send(req); err != nil {
		return fmt.Errorf("send %s request: %w", typeLabel(typ), err)
	}
	return nil
}

// handle checks one response, applies it to the type's resources, publishes
// a view if the state is now consistent, and ACKs or NACKs the response.
func (s *session) handle(resp *discoveryv3.DeltaDiscoveryResponse) error {
	typ := resp.GetTypeUrl()
	st, ok := s.types[typ]
	if !ok {
		s.c.log.Warn("discovery sent a type that was not requested", slog.String("type", typ))
		return s.stream.Send(&discoveryv3.DeltaDiscoveryRequest{
			Node: s.node, TypeUrl: typ, ResponseNonce: resp.GetNonce(),
			ErrorDetail: &statuspb.Status{Code: int32(codes.InvalidArgument), Message: "type not requested"},
		})
	}
	if p := s.pending[typ]; p != nil { // a newer response supersedes a paced NACK
		p.timer.Stop()
		delete(s.pending, typ)
	}
	held := st.resources
	next, err := apply(held, resp)
	var items []types.Resource
	if err == nil {
		items = sortedByName(next)
		err = check(typ, items, s.memo)
	}
	var (
		view *View
		fp   [sha256.Size]byte
	)
	if err == nil {
		// Tentatively accept, and build a view if everything fits.
		prev := *st
		st.received, st.version, st.nonce, st.resources, st.items = true, resp.GetSystemVersionInfo(), resp.GetNonce(), next, items
		view, fp, err = s.build()
		if err != nil {
			*st = prev
		}
	}
	if err != nil {
		s.memo.prune(resp, next, held)
		return s.nack(st, typ, resp, err)
	}
	s.memo.prune(resp, held, next)
	st.nackedVersion, st.nackedErr = "", ""
	label := typeLabel(typ)
	s.c.metrics.updates.WithLabelValues(label, "ack").Inc()
	s.c.metrics.lastUpdate.SetToCurrentTime()
	s.c.log.Debug("accepted an update from discovery", slog.String("type", label), slog.String("version", resp.GetSystemVersionInfo()),
		slog.Int("resources", len(items)), slog.Int("changed", len(resp.GetResources())), slog.Int("removed", len(resp.GetRemovedResources())))
	// Apply, then ACK.
	if view != nil {
		s.c.fingerprint = fp
		s.c.publish(view)
		s.c.log.Debug("published a new view", slog.Int("services", len(view.services)))
	}
	return s.send(typ, nil)
}

// nack rejects resp. The first rejection of a version is sent at once and
// logged at Warn; the same rejection again waits nackRepeatDelay and is
// logged at Debug.
func (s *session) nack(st *typeState, typ resource.Type, resp *discoveryv3.DeltaDiscoveryResponse, err error) error {
	label := typeLabel(typ)
	st.nonce = resp.GetNonce()
	s.c.metrics.updates.WithLabelValues(label, "nack").Inc()
	attrs := []any{slog.String("type", label), slog.String("version", resp.GetSystemVersionInfo()), slog.Any("error", err)}
	if st.nackedVersion != resp.GetSystemVersionInfo() || st.nackedErr != err.Error() {
		st.nackedVersion, st.nackedErr = resp.GetSystemVersionInfo(), err.Error()
		s.c.log.Warn("rejected an update from discovery; keeping the last good configuration", attrs...)
		return s.send(typ, err)
	}
	s.c.log.Debug("rejected the same update from discovery again", attrs...)
	p := &pendingNack{typ: typ, err: err}
	p.timer = time.AfterFunc(nackRepeatDelay, func() {
		select {
		case s.due <- p:
		default: // cannot happen: at most one pending NACK per type
		}
	})
	s.pending[typ] = p
	return nil
}

// build returns a new View if CDS, LDS and ECDS have arrived, EDS covers
// the clusters and the name table names exactly the clusters. It returns a
// nil View if the state is not consistent yet or is the current view's. An
// error means the resources are fine one by one but do not fit together.
func (s *session) build() (*View, [sha256.Size]byte, error) {
	var fp [sha256.Size]byte
	for _, t := range subscribed {
		if t != resource.EndpointType && !s.types[t].received {
			return nil, fp, nil
		}
	}
	clusters := s.types[resource.ClusterType].items
	want := make(map[string]bool, len(clusters))
	for _, r := range clusters {
		want[r.(*clusterv3.Cluster).GetName()] = true
	}
	var clas []types.Resource
	for _, r := range s.types[resource.EndpointType].items {
		if cla := r.(*endpointv3.ClusterLoadAssignment); want[cla.GetClusterName()] {
			clas = append(clas, cla)
		}
	}
	if len(clas) < len(want) {
		return nil, fp, nil // EDS does not cover the clusters yet
	}
	names := s.types[resource.ExtensionConfigType].items
	nt, err := parseNameTables(names, s.memo)
	if err != nil {
		return nil, fp, err
	}
	if len(nt.services) != len(want) {
		return nil, fp, nil // the name table and the clusters are from different moments
	}
	for _, svc := range nt.services {
		if !want[wire.ClusterName(svc.Key)] {
			return nil, fp, nil
		}
	}
	res := map[resource.Type][]types.Resource{
		resource.ClusterType:         clusters,
		resource.EndpointType:        clas,
		resource.ListenerType:        s.types[resource.ListenerType].items,
		resource.ExtensionConfigType: names,
	}
	fp, err = fingerprint(res, s.memo)
	if err != nil {
		return nil, fp, err
	}
	if fp == s.c.fingerprint && s.c.View() != nil {
		return nil, fp, nil // the same configuration again (a reconnect, a version bump)
	}
	v, err := newViewOf(s.c.cfg.ID, s.c.cfg.PodAddrs, nt, res, s.memo)
	if err != nil {
		return nil, fp, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return v, fp, nil
}

// fingerprint hashes the digests of resources (see digest), each type's
// in the order given. The lists are sorted by name and names are unique,
// so the same resources give the same fingerprint in whatever order a
// server sent them.
func fingerprint(res map[resource.Type][]types.Resource, m *memo) ([sha256.Size]byte, error) {
	h := sha256.New()
	for _, t := range subscribed {
		fmt.Fprintf(h, "%s:%d;", t, len(res[t]))
		for _, r := range res[t] {
			d, err := lookup(m.digests, r, digest)
			if err != nil {
				return [sha256.Size]byte{}, fmt.Errorf("marshal %s: %w", typeLabel(t), err)
			}
			h.Write(d[:])
		}
	}
	return [sha256.Size]byte(h.Sum(nil)), nil
}

// digest is the SHA-256 of r, deterministically marshaled.
func digest(r types.Resource) ([sha256.Size]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	return sha256.Sum256(b), nil
}

// apply returns have with resp applied: its resources added or replaced,
// its removed names deleted. Each resource must be of the response's type
// and carry its own name. have is not modified.
func apply(have map[string]types.Resource, resp *discoveryv3.DeltaDiscoveryResponse) (map[string]types.Resource, error) {
	next := maps.Clone(have)
	if next == nil {
		next = map[string]types.Resource{}
	}
	for _, name := range resp.GetRemovedResources() {
		delete(next, name)
	}
	for i, r := range resp.GetResources() {
		a := r.GetResource()
		if a.GetTypeUrl() != resp.GetTypeUrl() {
			return nil, fmt.Errorf("%w: resource %d is a %s in a %s response", ErrMalformed, i, a.GetTypeUrl(), resp.GetTypeUrl())
		}
		m, err := a.UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("%w: resource %d: %w", ErrMalformed, i, err)
		}
		if got := cachev3.GetResourceName(m); got != r.GetName() {
			return nil, fmt.Errorf("%w: resource %d is named %q but sent as %q", ErrMalformed, i, got, r.GetName())
		}
		next[r.GetName()] = m
	}
	return next, nil
}

// check validates one type's resources on their own, parsing them
// through m.
func check(typ resource.Type, items []types.Resource, m *memo) error {
	var err error
	switch typ {
	case resource.ClusterType:
		_, err = parseClusters(items, m)
	case resource.EndpointType:
		_, err = parseCLAs(items, m)
	case resource.ListenerType:
		_, err = parseListeners(items, m)
	case resource.ExtensionConfigType:
		_, err = parseNameTables(items, m)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return nil
}
