package proxy

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the data path's Prometheus metrics.
type Metrics struct {
	conns      *prometheus.CounterVec
	active     *prometheus.GaugeVec
	bytes      *prometheus.CounterVec
	handshake  *prometheus.HistogramVec
	denials    *prometheus.CounterVec
	audits     *prometheus.CounterVec
	overLimits *prometheus.CounterVec
	streams    *prometheus.CounterVec
	revoked    *prometheus.CounterVec
	foreign    *prometheus.CounterVec

	unauth         prometheus.Gauge
	unauthRejected *prometheus.CounterVec
}

// NewMetrics registers the data path metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_connections_total",
			Help: "Connections by direction (inbound, outbound) and result.",
		}, []string{"direction", "result"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_sidecar_active_connections",
			Help: "Connections open now, by direction.",
		}, []string{"direction"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_bytes_total",
			Help: "Bytes relayed by direction, flow (sent to the peer, received from it) and connection result.",
		}, []string{"direction", "flow", "result"}),
		handshake: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tether_sidecar_handshake_duration_seconds",
			Help:    "mTLS handshake time by direction.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"direction"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_authz_denials_total",
			Help: "Connections refused by this sidecar's policy, by direction (inbound: the caller was refused; outbound: the app's call was), source SPIFFE ID, destination and the rule that decided (reason).",
		}, []string{"direction", "source_id", "destination", "reason"}),
		audits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_authz_audit_denials_total",
			Help: "Connections a policy or default in audit mode would have refused, let through (access log decision audit-deny), by direction (outbound: this workload's call; inbound: a call to it), destination (outbound: the service port; inbound: the app's address) and the would-be rule. The caller's SPIFFE ID is in the access log, not a label: audit mode lets many callers through.",
		}, []string{"direction", "destination", "rule"}),
		overLimits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_connection_limit_rejections_total",
			Help: "Connections closed at accept because the concurrent connection limit was reached.",
		}, []string{"direction"}),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_outbound_streams_total",
			Help: "Outbound streams opened to peer sidecars, by whether they reused a pooled mTLS connection.",
		}, []string{"reused"}),
		revoked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_connections_revoked_total",
			Help: "Open streams closed because they were no longer authorized, by direction and reason (policy: a policy change denies the pair now; svid_expired: the SVID the tunnel was authenticated with expired; untrusted: the peer is of another trust domain that is no longer trusted).",
		}, []string{"direction", "reason"}),
		foreign: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_foreign_peer_refusals_total",
			Help: "mTLS handshakes refused for a peer of another trust domain, by direction and reason (untrusted_domain: no bundle for its trust domain, not federated; not_admitted: inbound, its SVID verified but no inbound rule of this workload names it).",
		}, []string{"direction", "reason"}),
		unauth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_sidecar_unauthenticated_connections",
			Help: "Inbound connections accepted and not yet authenticated (mTLS handshake, or permissive-mode detection, in progress).",
		}),
		unauthRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_sidecar_unauthenticated_rejections_total",
			Help: "Unauthenticated inbound connections reset by the limits on them, by reason (per_source: over the per-address limit at accept; evicted: the oldest silent one, reset to make room).",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.conns, m.active, m.bytes, m.handshake, m.denials, m.audits, m.overLimits, m.streams, m.revoked, m.foreign, m.unauth, m.unauthRejected)
	}
	return m
}
