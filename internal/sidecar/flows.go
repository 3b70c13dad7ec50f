package sidecar

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/pkg/discovery/flows"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// DefaultFlowReportInterval is how often the sidecar reports the flows it
// saw to discovery (--flow-report-interval).
const DefaultFlowReportInterval = 30 * time.Second

// flowReportTimeout bounds one report, and the last one at shutdown.
const flowReportTimeout = 5 * time.Second

// flowRecorder is the sidecar's flow summary: the proxy's Observe hook
// feeds it, the reporter empties it into discovery.
type flowRecorder struct {
	agg     *flows.Aggregator
	view    *atomic.Pointer[xdsclient.View]
	inbound atomic.Pointer[inboundPorts]
	dropped *prometheus.CounterVec
	reports *prometheus.CounterVec
}

// inboundPorts caches a view's InboundServicePorts.
type inboundPorts struct {
	view  *xdsclient.View
	ports map[uint16][]xdsclient.ServicePort
}

func newFlowRecorder(view *atomic.Pointer[xdsclient.View], reg prometheus.Registerer) *flowRecorder {
	r := &flowRecorder{
		agg:  flows.NewAggregator(0),
		view: view,
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_flows_dropped_total",
			Help: "Connections missing from the flow reports sent to discovery, by reason: full (the summary between two reports held its bound of distinct flows), refused (discovery refused the report as malformed or as naming what this sidecar cannot have seen).",
		}, []string{"reason"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_flow_reports_total",
			Help: "Flow reports sent to discovery, by result: ok, retry (not delivered now, kept for the next report), refused.",
		}, []string{"result"}),
	}
	r.dropped.WithLabelValues("full")
	r.dropped.WithLabelValues("refused")
	reg.MustRegister(r.dropped, r.reports)
	return r
}

// observe is the proxy's Observe hook: it counts e in the summary. Only
// policy decisions between identities are flows: errors, connections
// without a SPIFFE ID (permissive plaintext), refusals without a rule
// (protocol errors, loops, stale credentials) and outbound connections
// to no mesh service (passthrough, unknown addresses) are left out.
func (r *flowRecorder) observe(e *proxy.Entry) {
	dec := flows.Decision(e.Decision)
	if !dec.Valid() || e.SourceID == "" || dec == flows.Deny && e.Rule == "" {
		return
	}
	now := time.Now()
	if e.Direction == "outbound" {
		k, ok := callerKey(e, dec)
		if ok && !r.agg.Observe(k, now) {
			r.dropped.WithLabelValues("full").Inc()
		}
		return
	}
	if e.Port == 0 || e.DestID == "" {
		return
	}
	k := flows.Key{Source: e.SourceID, Port: e.Port, Decision: dec, Rule: flows.Clip(e.Rule), Side: flows.Destination}
	sps := r.servicePorts(e.Port)
	if len(sps) == 0 {
		// No Service covers the port: the workload itself is the destination.
		k.Workload = e.DestID
		if id, err := spiffeid.FromString(e.DestID); err == nil {
			k.Namespace, _ = wire.WorkloadNamespace(id)
		}
		if !r.agg.Observe(k, now) {
			r.dropped.WithLabelValues("full").Inc()
		}
		return
	}
	// A connection to the pod's port does not say which of the Services
	// sharing it the caller meant: each of them saw it.
	for _, sp := range sps {
		k.Namespace, k.Service, k.Port = sp.Service.Namespace, sp.Service.Name, sp.Port
		if !r.agg.Observe(k, now) {
			r.dropped.WithLabelValues("full").Inc()
		}
	}
}

// callerKey is the caller-side key of an outbound entry, whose Target is
// "namespace/name:port" when the route named a mesh service.
func callerKey(e *proxy.Entry, dec flows.Decision) (flows.Key, bool) {
	svc, ps, ok := strings.Cut(e.Target, ":")
	ns, name, ok2 := strings.Cut(svc, "/")
	port, err := strconv.ParseUint(ps, 10, 16)
	if !ok || !ok2 || err != nil || port == 0 || !flows.ValidNamespace(ns) || !flows.ValidNamespace(name) {
		return flows.Key{}, false
	}
	return flows.Key{Source: e.SourceID, Namespace: ns, Service: name, Port: uint16(port), Decision: dec,
		Rule: flows.Clip(e.Rule), Side: flows.Caller}, true
}

// servicePorts are the service ports that decide the pod's target port,
// from the current view (cached per view).
func (r *flowRecorder) servicePorts(port uint16) []xdsclient.ServicePort {
	v := r.view.Load()
	if v == nil {
		return nil
	}
	c := r.inbound.Load()
	if c == nil || c.view != v {
		c = &inboundPorts{view: v, ports: v.InboundServicePorts()}
		r.inbound.Store(c)
	}
	return c.ports[port]
}

// reportFlows sends the summary to discovery every interval until ctx
// ends, then once more (the connections drained at shutdown).
// Reports carry deltas: what was seen since the last delivered report. A
// report not delivered now (discovery unreachable, busy or rate-limiting)
// is put back and goes with the next; one discovery refuses is dropped
// and counted.
func (s *Sidecar) reportFlows(ctx context.Context) {
	tc := tlsconfig.MTLSClientConfig(s.agent, s.agent, tlsconfig.AuthorizeID(s.cfg.DiscoveryID))
	tc.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient(s.cfg.DiscoveryAddr, grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(flows.MaxReportBytes)))
	if err != nil {
		s.log.Error("flow reports off: cannot set up the connection to discovery", slog.Any("error", err))
		return
	}
	defer conn.Close()
	client := discoveryv1.NewFlowsClient(conn)
	t := time.NewTicker(s.cfg.FlowReportInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.sendFlows(context.Background(), client)
			return
		case <-t.C:
			s.sendFlows(ctx, client)
		}
	}
}

// sendFlows sends what the summary holds, in reports of at most
// flows.MaxReportEdges edges and flows.MaxReportBytes.
func (s *Sidecar) sendFlows(ctx context.Context, c discoveryv1.FlowsClient) {
	r := s.flows
	edges, unsummed := r.agg.Flush()
	if len(edges) == 0 && unsummed == 0 {
		return
	}
	batches := batchReports(flows.ToProto(edges))
	for i, b := range batches {
		b.Unsummed = unsummed
		unsummed = 0
		rctx, cancel := context.WithTimeout(ctx, flowReportTimeout)
		resp, err := c.Report(rctx, b)
		cancel()
		switch code := status.Code(err); {
		case err == nil:
			r.reports.WithLabelValues("ok").Inc()
			if resp.GetDropped() > 0 {
				s.log.Warn("discovery's observed-traffic table had no room for some flows of this sidecar", slog.Uint64("dropped", uint64(resp.GetDropped())))
			}
		case code == codes.InvalidArgument || code == codes.PermissionDenied:
			r.reports.WithLabelValues("refused").Inc()
			r.dropped.WithLabelValues("refused").Add(float64(connections(b)))
			s.log.Warn("discovery refused a flow report; its flows are dropped", slog.Any("error", err))
		default:
			// Not delivered: keep this batch and the rest for the next report.
			r.reports.WithLabelValues("retry").Inc()
			var rest []*discoveryv1.FlowEdge
			var back uint64
			for _, b := range batches[i:] {
				rest = append(rest, b.GetEdges()...)
				back += b.GetUnsummed()
			}
			if lost := r.agg.Restore(flows.FromProto(rest), back); lost > 0 {
				r.dropped.WithLabelValues("full").Add(float64(lost))
			}
			s.log.Debug("flow report not delivered; it goes with the next", slog.Any("error", err))
			return
		}
	}
}

// batchReports splits edges into reports within the bounds.
func batchReports(edges []*discoveryv1.FlowEdge) []*discoveryv1.FlowReport {
	const overhead = 64 // field tags and lengths, generously
	var out []*discoveryv1.FlowReport
	cur, size := &discoveryv1.FlowReport{}, overhead
	for _, e := range edges {
		n := proto.Size(e) + 8
		if len(cur.Edges) > 0 && (len(cur.Edges) == flows.MaxReportEdges || size+n > flows.MaxReportBytes) {
			out = append(out, cur)
			cur, size = &discoveryv1.FlowReport{}, overhead
		}
		cur.Edges = append(cur.Edges, e)
		size += n
	}
	return append(out, cur)
}

func connections(b *discoveryv1.FlowReport) uint64 {
	n := b.GetUnsummed()
	for _, e := range b.GetEdges() {
		n += e.GetConnections()
	}
	return n
}

// checkFlowReportInterval validates --flow-report-interval.
func checkFlowReportInterval(d time.Duration) error {
	if d < 0 || d > 0 && d < time.Second {
		return fmt.Errorf("--flow-report-interval %s: want 0 (off) or at least 1s (discovery takes about one report a second from a pod)", d)
	}
	return nil
}
