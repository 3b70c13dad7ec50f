package discoveryserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/flows"
)

// Bounds on flow reports, before and while they are read.
const (
	// reportsInFlight bounds the reports being received and added at once,
	// mesh-wide: what a flood can hold in memory is this many messages of
	// at most gRPC's receive limit (4 MiB).
	reportsInFlight = 4
	// reportRate and reportBurst bound the reports of one SPIFFE ID from
	// one address (one pod): a token every second, five at most saved up.
	// A sidecar reports every --flow-report-interval (30s by default).
	reportRate  = 1.0
	reportBurst = 5.0
	// maxReportBuckets: over this many (identity, address) pairs tracked,
	// the full buckets (idle for reportBurst seconds) are forgotten.
	maxReportBuckets = 4096
)

// Reasons a flow report is refused (label of
// tether_discovery_flow_reports_refused_total).
const (
	refusedUnauthenticated = "unauthenticated"
	refusedRate            = "rate_limited"
	refusedBusy            = "busy"
	refusedOversize        = "oversize"
	refusedMalformed       = "malformed"
	refusedNotSeen         = "not_seen"
)

// flowServer serves tether.discovery.v1.Flows: sidecars' reports into the
// replica's edge table.
type flowServer struct {
	discoveryv1.UnimplementedFlowsServer
	store    *flows.Store
	reg      *discovery.Registry
	log      *slog.Logger
	now      func() time.Time
	accepted prometheus.Counter
	refused  *prometheus.CounterVec
	gate     *reportGate
}

func newFlowServer(store *flows.Store, reg *discovery.Registry, log *slog.Logger, r prometheus.Registerer) *flowServer {
	f := &flowServer{
		store: store, reg: reg, log: log, now: time.Now,
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_discovery_flow_reports_total",
			Help: "Flow reports from sidecars added to this replica's edge table.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_discovery_flow_reports_refused_total",
			Help: "Flow reports refused, by reason: unauthenticated (no verified SVID), rate_limited (over one a second from one identity and address), busy (too many being received at once), oversize, malformed, not_seen (names what the reporter cannot have seen: a call made by another identity, or to a service it does not serve).",
		}, []string{"reason"}),
		gate: newReportGate(time.Now),
	}
	for _, r := range []string{refusedUnauthenticated, refusedRate, refusedBusy, refusedOversize, refusedMalformed, refusedNotSeen} {
		f.refused.WithLabelValues(r)
	}
	r.MustRegister(f.accepted, f.refused,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tether_discovery_flow_edges",
			Help: "Edges in this replica's observed-traffic table (at most --flow-max-edges).",
		}, func() float64 { return float64(store.Stats().Edges) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tether_discovery_flow_edges_dropped_total",
			Help: "Reported edges the table had no room for (--flow-max-edges reached, or the reporter's --flow-max-edges-per-reporter share): the table is incomplete.",
		}, func() float64 { return float64(store.Stats().Dropped) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tether_discovery_flow_unsummed_connections_total",
			Help: "Connections sidecars reported they saw but could not summarise (their summary between two reports was full).",
		}, func() float64 { return float64(store.Stats().Unsummed) }),
	)
	return f
}

// Report implements discoveryv1.FlowsServer.
func (f *flowServer) Report(ctx context.Context, req *discoveryv1.FlowReport) (*discoveryv1.FlowReportResponse, error) {
	id, err := peerSVID(ctx)
	if err != nil {
		f.refused.WithLabelValues(refusedUnauthenticated).Inc()
		return nil, status.Errorf(codes.Unauthenticated, "flow report: %v: reports are accepted only over mTLS with the sidecar's SVID", err)
	}
	if n := proto.Size(req); n > flows.MaxReportBytes {
		return nil, f.refuse(id, refusedOversize, codes.InvalidArgument,
			fmt.Errorf("%w: %d bytes, at most %d: send smaller reports", flows.ErrInvalid, n, flows.MaxReportBytes))
	}
	edges := flows.FromProto(req.GetEdges())
	if err := flows.ValidateReport(edges, f.now()); err != nil {
		return nil, f.refuse(id, refusedMalformed, codes.InvalidArgument, err)
	}
	serves := servesIn(f.reg.Snapshot())
	for i, e := range edges {
		if err := flows.CheckReporter(id, e, serves); err != nil {
			return nil, f.refuse(id, refusedNotSeen, codes.PermissionDenied, fmt.Errorf("edge %d: %w", i, err))
		}
	}
	taken, dropped := f.store.Add(id.String(), edges, req.GetUnsummed())
	f.accepted.Inc()
	return &discoveryv1.FlowReportResponse{Taken: uint32(taken), Dropped: uint32(dropped)}, nil
}

// refuse counts and logs a report refused whole and returns its status.
func (f *flowServer) refuse(id spiffeid.ID, reason string, code codes.Code, err error) error {
	f.refused.WithLabelValues(reason).Inc()
	f.store.RefuseReport()
	f.log.Warn("flow report refused", slog.String("spiffe_id", id.String()), slog.String("reason", reason), slog.Any("error", err))
	return status.Errorf(code, "flow report from %s refused: %v", id, err)
}

// servesIn says, from snap, whether an identity is one of a service's
// endpoints' and the port one of its ports. Identities are computed once
// per service.
func servesIn(snap *discovery.Snapshot) flows.Serves {
	ids := map[discovery.ServiceKey][]spiffeid.ID{}
	return func(id spiffeid.ID, ns, name string, port uint16) bool {
		key := discovery.ServiceKey{Namespace: ns, Name: name}
		svc, ok := snap.Service(key)
		if !ok {
			return false
		}
		if _, ok := svc.Port(port); !ok {
			return false
		}
		have, ok := ids[key]
		if !ok {
			have = svc.Identities(snap.TrustDomain())
			ids[key] = have
		}
		return slices.Contains(have, id)
	}
}

// peerSVID is the SPIFFE ID of the verified client certificate of ctx's
// connection.
func peerSVID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, errors.New("no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	// The handshake verified the chain (go-spiffe's VerifyPeerCertificate,
	// so VerifiedChains stays empty).
	if !ok || len(info.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("no client certificate")
	}
	return x509svid.IDFromCert(info.State.PeerCertificates[0])
}

// tap admits a Flows/Report stream before its message is read: at most
// reportsInFlight at once, and at most reportRate a second (reportBurst
// saved up) from one identity at one address. Other methods pass.
func (f *flowServer) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName != discoveryv1.Flows_Report_FullMethodName {
		return ctx, nil
	}
	id, err := peerSVID(ctx)
	if err != nil {
		return ctx, nil // Report refuses it, without reading much
	}
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr, _, _ = net.SplitHostPort(p.Addr.String())
	}
	release, reason := f.gate.admit(id.String() + "|" + addr)
	if reason != "" {
		f.refused.WithLabelValues(reason).Inc()
		return ctx, status.Errorf(codes.ResourceExhausted, "flow report from %s not accepted now (%s): send it again with the next report", id, reason)
	}
	context.AfterFunc(ctx, release) // the stream's context ends with the stream
	return ctx, nil
}

// reportGate is the admission of tap: a bounded count of reports in
// flight and a token bucket per key.
type reportGate struct {
	now         func() time.Time
	rate, burst float64
	maxInFlight int

	mu       sync.Mutex
	inFlight int
	buckets  map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newReportGate(now func() time.Time) *reportGate {
	return &reportGate{now: now, rate: reportRate, burst: reportBurst, maxInFlight: reportsInFlight, buckets: map[string]*bucket{}}
}

// admit takes a slot and a token of key: release gives the slot back;
// reason says why not.
func (g *reportGate) admit(key string) (release func(), reason string) {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	b, ok := g.buckets[key]
	if !ok {
		if len(g.buckets) >= maxReportBuckets {
			g.pruneLocked(now)
		}
		b = &bucket{tokens: g.burst, at: now}
		g.buckets[key] = b
	}
	b.tokens = min(g.burst, b.tokens+now.Sub(b.at).Seconds()*g.rate)
	b.at = now
	if b.tokens < 1 {
		return nil, refusedRate
	}
	if g.inFlight >= g.maxInFlight {
		return nil, refusedBusy
	}
	b.tokens--
	g.inFlight++
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.inFlight--
			g.mu.Unlock()
		})
	}, ""
}

// pruneLocked forgets the buckets that are full again: forgetting them
// changes nothing.
func (g *reportGate) pruneLocked(now time.Time) {
	for k, b := range g.buckets {
		if b.tokens+now.Sub(b.at).Seconds()*g.rate >= g.burst {
			delete(g.buckets, k)
		}
	}
}

// expireFlows forgets old edges until ctx ends.
func (s *Server) expireFlows(ctx context.Context) {
	every := min(s.flows.Config().Retention/10, time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n := s.flows.Expire(); n > 0 {
				s.log.Debug("observed-traffic edges expired", slog.Int("edges", n))
			}
		}
	}
}

// debugFlows serves GET /debug/flows: this replica's edge table
// (flows.Table). Query parameters: since=<duration> keeps the edges last
// seen within it; namespace=<ns> those into ns or from a workload of ns.
func (s *Server) debugFlows(w http.ResponseWriter, r *http.Request) {
	var f flows.Filter
	q := r.URL.Query()
	if v := q.Get("since"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			http.Error(w, fmt.Sprintf("since=%q: want a positive duration such as 1h or 30m", v), http.StatusBadRequest)
			return
		}
		f.Since = time.Now().Add(-d)
	}
	if v := q.Get("namespace"); v != "" {
		if !flows.ValidNamespace(v) {
			http.Error(w, fmt.Sprintf("namespace=%q: want a namespace name (a DNS label)", v), http.StatusBadRequest)
			return
		}
		f.Namespace = v
	}
	for k := range q {
		if k != "since" && k != "namespace" {
			http.Error(w, fmt.Sprintf("unknown query parameter %q: GET /debug/flows takes since=<duration> and namespace=<ns>", k), http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(s.flows.Table(f))
}
