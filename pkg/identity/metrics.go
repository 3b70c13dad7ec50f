package identity

import (
	"crypto/x509"
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	issuances       *prometheus.CounterVec
	signSeconds     prometheus.Histogram
	rootExpiry      *prometheus.GaugeVec
	intermediateExp *prometheus.GaugeVec
	bundleSequence  prometheus.Gauge
	rotations       *prometheus.CounterVec
	renewalOverdue  prometheus.GaugeFunc
	revocations     *prometheus.GaugeVec
	reportsRefused  prometheus.Counter
	trusting        *prometheus.GaugeVec
	holding         *prometheus.GaugeVec
	reporting       *prometheus.GaugeVec
	endpointServed  prometheus.Counter
	endpointGate    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, c *CA) *metrics {
	m := &metrics{
		issuances: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_ca_issuances_total",
			Help: "SVID signing requests by credential kind and result.",
		}, []string{"kind", "result"}),
		signSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tether_ca_sign_duration_seconds",
			Help:    "Time to serve a Sign request, attestation included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		rootExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_ca_root_expiry_timestamp_seconds",
			Help: "NotAfter of each trusted root, by generation and state.",
		}, []string{"generation", "state"}),
		intermediateExp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_ca_intermediate_expiry_timestamp_seconds",
			Help: "NotAfter of each generation's signing intermediate.",
		}, []string{"generation", "state"}),
		bundleSequence: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_ca_bundle_sequence",
			Help: "Sequence number of the current trust bundle.",
		}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tether_ca_rotation_steps_total",
			Help: "Rotation journal steps by step and result.",
		}, []string{"step", "result"}),
		renewalOverdue: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "tether_ca_intermediate_renewal_overdue",
			Help: "1 while a signing intermediate is past its renewal time (1/3 of its life left) and not renewed: the upstream fails or the state cannot be written. SVIDs are cut short to the intermediate's end.",
		}, func() float64 {
			if c.intermediateRenewalOverdue() {
				return 1
			}
			return 0
		}),
		revocations: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_ca_revocations",
			Help: "Revocation entries in the CA state, by kind (spiffe_id, serial, join_token).",
		}, []string{"kind"}),
		reportsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tether_ca_sidecar_reports_refused_total",
			Help: "Sidecar reports this replica refused because it holds its bound of reports; the rotation gates refuse while counts miss sidecars.",
		}),
		trusting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_ca_sidecars_trusting",
			Help: "Reporting sidecars, mesh-wide, whose trust bundle holds the generation's trust anchor (every replica exports the mesh-wide count: aggregate with max).",
		}, []string{"generation", "state"}),
		holding: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_ca_sidecars_holding",
			Help: "Reporting sidecars, mesh-wide, whose SVID (as presented to the CA) chains to the generation's trust anchor.",
		}, []string{"generation", "state"}),
		reporting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tether_ca_sidecars",
			Help: "Sidecars known to the CA, mesh-wide, by status: reporting, silent (stopped reporting, SVID still valid; counted by the gates with what it last reported), not_reporting (watches the bundle without reports: an older sidecar the gates cannot account for).",
		}, []string{"status"}),
	}
	m.endpointServed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tether_ca_bundle_endpoint_served_total",
		Help: "Fetches the SPIFFE bundle endpoint answered with the bundle (status 200, written to the connection).",
	})
	m.endpointGate = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tether_ca_bundle_endpoint_gate_passes_timestamp_seconds",
		Help: "When the bundle endpoint gate lets the prepared generation activate: its first fetch plus the refresh hint and margin; 0 while nothing has fetched it, or when nothing is prepared or no bundle endpoint is served.",
	})
	if reg != nil {
		reg.MustRegister(m.endpointServed, m.endpointGate)
		reg.MustRegister(m.issuances, m.signSeconds, m.rootExpiry, m.intermediateExp, m.bundleSequence, m.rotations, m.renewalOverdue, m.revocations,
			m.reportsRefused, m.trusting, m.holding, m.reporting)
	}
	return m
}

func (m *metrics) observeState(st *State) {
	m.bundleSequence.Set(float64(st.BundleSequence))
	m.observeRevocations(st.Revocations)
	m.rootExpiry.Reset()
	m.intermediateExp.Reset()
	for _, g := range st.Generations {
		if g.State == Retired {
			continue
		}
		labels := prometheus.Labels{"generation": strconv.FormatUint(g.ID, 10), "state": string(g.State)}
		if len(g.Roots) > 0 {
			if c, err := x509.ParseCertificate(g.Roots[0]); err == nil {
				m.rootExpiry.With(labels).Set(float64(c.NotAfter.Unix()))
			}
		}
		if len(g.Chain) > 0 {
			if c, err := x509.ParseCertificate(g.Chain[0]); err == nil {
				m.intermediateExp.With(labels).Set(float64(c.NotAfter.Unix()))
			}
		}
	}
}

// observeRotation exports the counts of a RotationStatus.
func (m *metrics) observeRotation(rs RotationStatus) {
	m.trusting.Reset()
	m.holding.Reset()
	for _, g := range rs.Generations {
		labels := prometheus.Labels{"generation": strconv.FormatUint(g.ID, 10), "state": string(g.State)}
		m.trusting.With(labels).Set(float64(g.Trusting))
		m.holding.With(labels).Set(float64(g.Holding))
	}
	m.reporting.WithLabelValues("reporting").Set(float64(rs.Reporting - rs.Silent))
	m.reporting.WithLabelValues("silent").Set(float64(rs.Silent))
	m.reporting.WithLabelValues("not_reporting").Set(float64(len(rs.NotReporting)))
	if g := rs.BundleEndpoint; g != nil && !g.PassesAt.IsZero() {
		m.endpointGate.Set(float64(g.PassesAt.Unix()))
	} else {
		m.endpointGate.Set(0)
	}
}

// issuance records one Sign request.
func (m *metrics) issuance(kind string, err error, took time.Duration) {
	m.signSeconds.Observe(took.Seconds())
	m.issuances.WithLabelValues(kind, resultOf(err)).Inc()
}

func (m *metrics) rotation(step Step, err error) {
	m.rotations.WithLabelValues(string(step), resultOf(err)).Inc()
}

// resultOf names an error class for metric labels.
func resultOf(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrBadCSR):
		return "bad_csr"
	case errors.Is(err, ErrUnauthenticated):
		return "unauthenticated"
	case errors.Is(err, ErrRevoked):
		return "revoked"
	case errors.Is(err, ErrPermissionDenied):
		return "denied"
	case errors.Is(err, ErrUnavailable):
		return "unavailable"
	case errors.Is(err, ErrRotation):
		return "refused"
	default:
		return "error"
	}
}

func (m *metrics) observeRevocations(rs []Revocation) {
	for _, k := range []RevocationKind{RevokedID, RevokedSerial, RevokedJoinToken} {
		n := 0
		for _, r := range rs {
			if r.Kind == k {
				n++
			}
		}
		m.revocations.WithLabelValues(string(k)).Set(float64(n))
	}
}
