package discoveryserver

import (
	"strings"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
	"github.com/tether-mesh/tether/pkg/identity/agent"
)

// metrics are tether-discovery's own Prometheus metrics.
type metrics struct {
	streams      prometheus.Gauge
	refused      prometheus.Counter
	pushes       *prometheus.CounterVec
	reloadErrors prometheus.Counter
}

func newMetrics(r prometheus.Registerer) *metrics {
	m := &metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_discovery_xds_streams",
			Help: "Open ADS streams (authenticated mTLS connections' xDS streams).",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_discovery_xds_refused_total",
			Help: "ADS streams ended with PermissionDenied (node.id not the caller's SPIFFE ID, or no verified SVID).",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_discovery_xds_pushes_total",
			Help: "xDS responses sent, by resource type URL (without type.googleapis.com/).",
		}, []string{"type"}),
		reloadErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_discovery_registry_reload_errors_total",
			Help: "Registry reloads rejected (bad mesh file, or a state the registry refused); the last good state stays.",
		}),
	}
	r.MustRegister(m.streams, m.refused, m.pushes, m.reloadErrors)
	return m
}

// svidExpiry reports the expiry of the agent's SVID.
func svidExpiry(a *agent.Agent) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "tether_discovery_svid_expiry_timestamp_seconds",
		Help: "NotAfter of discovery's own SVID (0 before the first).",
	}, func() float64 {
		s, err := a.GetX509SVID()
		if err != nil {
			return 0
		}
		return float64(s.Certificates[0].NotAfter.Unix())
	})
}

// syncGauges report the streams being sent their whole configuration and
// those waiting for their turn (xds.Server.MaxConcurrentSyncs).
func syncGauges(x *xds.Server) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tether_discovery_xds_syncs_in_progress",
			Help: "ADS streams being sent their whole configuration (at most --max-concurrent-syncs), until the sidecar acknowledges it.",
		}, func() float64 { n, _ := x.SyncStats(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tether_discovery_xds_syncs_waiting",
			Help: "New ADS streams waiting for one of the --max-concurrent-syncs slots.",
		}, func() float64 { _, n := x.SyncStats(); return float64(n) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tether_discovery_xds_streams_over_limit_total",
			Help: "ADS streams refused with ResourceExhausted: their SPIFFE ID already had --max-streams-per-identity open.",
		}, func() float64 { return float64(x.StreamsOverLimit()) }),
	}
}

// registryCollector reports the counts of one snapshot per scrape, so
// they agree with each other and with the version.
type registryCollector struct{ reg *discovery.Registry }

var (
	versionDesc   = prometheus.NewDesc("tether_discovery_snapshot_version", "Version of the registry snapshot being served (0 until the source has synced).", nil, nil)
	servicesDesc  = prometheus.NewDesc("tether_discovery_registry_services", "Services in the registry snapshot.", nil, nil)
	endpointsDesc = prometheus.NewDesc("tether_discovery_registry_endpoints", "Endpoints of all services in the registry snapshot.", nil, nil)
	policiesDesc  = prometheus.NewDesc("tether_discovery_registry_policies", "AccessPolicy objects in the registry snapshot.", nil, nil)
	remoteDesc    = prometheus.NewDesc("tether_discovery_registry_remote_services", "Remote services (services of another trust domain) served in the registry snapshot; also counted in tether_discovery_registry_services.", nil, nil)
	refusedDesc   = prometheus.NewDesc("tether_discovery_registry_remote_services_refused", "Remote services left out of the registry snapshot (a name or address another service has, or an object that does not validate); the reason is logged.", nil, nil)
)

func (c *registryCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- versionDesc
	ch <- servicesDesc
	ch <- endpointsDesc
	ch <- policiesDesc
	ch <- remoteDesc
	ch <- refusedDesc
}

func (c *registryCollector) Collect(ch chan<- prometheus.Metric) {
	snap := c.reg.Snapshot()
	svcs := snap.Services()
	eps := 0
	for _, s := range svcs {
		eps += len(s.Endpoints)
	}
	ch <- prometheus.MustNewConstMetric(versionDesc, prometheus.GaugeValue, float64(snap.Version()))
	ch <- prometheus.MustNewConstMetric(servicesDesc, prometheus.GaugeValue, float64(len(svcs)))
	ch <- prometheus.MustNewConstMetric(endpointsDesc, prometheus.GaugeValue, float64(eps))
	ch <- prometheus.MustNewConstMetric(policiesDesc, prometheus.GaugeValue, float64(len(snap.Policies())))
	ch <- prometheus.MustNewConstMetric(remoteDesc, prometheus.GaugeValue, float64(len(snap.RemoteServices())))
	ch <- prometheus.MustNewConstMetric(refusedDesc, prometheus.GaugeValue, float64(len(snap.RefusedRemoteServices())))
}

// streamInterceptor counts open ADS streams, the responses sent on them
// and the streams refused.
func (m *metrics) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	m.streams.Inc()
	defer m.streams.Dec()
	err := handler(srv, &countingStream{ServerStream: ss, m: m})
	if status.Code(err) == codes.PermissionDenied {
		m.refused.Inc()
	}
	return err
}

// countingStream counts the xDS responses sent through it.
type countingStream struct {
	grpc.ServerStream
	m *metrics
}

func (s *countingStream) SendMsg(msg any) error {
	err := s.ServerStream.SendMsg(msg)
	if err != nil {
		return err
	}
	var typeURL string
	switch r := msg.(type) {
	case *discoveryv3.DiscoveryResponse:
		typeURL = r.GetTypeUrl()
	case *discoveryv3.DeltaDiscoveryResponse:
		typeURL = r.GetTypeUrl()
	default:
		return nil
	}
	s.m.pushes.WithLabelValues(strings.TrimPrefix(typeURL, "type.googleapis.com/")).Inc()
	return nil
}
