package meshkube

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// CAMetrics is what tether-ca's /metrics tells of its state.
type CAMetrics struct {
	BundleSequence uint64
	// IntermediateRenewalOverdue: the signing intermediate is past its
	// renewal time and not renewed (the upstream fails).
	IntermediateRenewalOverdue bool
	// Generations not retired, by ID.
	Generations []Generation
}

// Generation is one root generation as the CA's metrics show it.
type Generation struct {
	ID                  uint64
	State               string
	RootExpires         time.Time
	IntermediateExpires time.Time
}

// ParseCAMetrics reads the CA's state from its Prometheus metrics: the
// bundle sequence, and the root and intermediate expiry of every
// generation not retired.
func ParseCAMetrics(r io.Reader) (*CAMetrics, error) {
	mfs, err := parseMetrics(r)
	if err != nil {
		return nil, err
	}
	seq, ok := mfs["tether_ca_bundle_sequence"]
	if !ok || len(seq.GetMetric()) == 0 {
		return nil, errors.New("/metrics has no tether_ca_bundle_sequence: is this tether-ca?")
	}
	c := &CAMetrics{BundleSequence: uint64(seq.GetMetric()[0].GetGauge().GetValue())}
	if o := mfs["tether_ca_intermediate_renewal_overdue"].GetMetric(); len(o) > 0 && o[0].GetGauge().GetValue() > 0 {
		c.IntermediateRenewalOverdue = true
	}
	gens := map[uint64]*Generation{}
	for name, set := range map[string]func(*Generation, float64){
		"tether_ca_root_expiry_timestamp_seconds":         func(g *Generation, v float64) { g.RootExpires = unix(int64(v)) },
		"tether_ca_intermediate_expiry_timestamp_seconds": func(g *Generation, v float64) { g.IntermediateExpires = unix(int64(v)) },
	} {
		for _, m := range mfs[name].GetMetric() {
			var id uint64
			var state string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "generation":
					id, _ = strconv.ParseUint(l.GetValue(), 10, 64)
				case "state":
					state = l.GetValue()
				}
			}
			g, ok := gens[id]
			if !ok {
				g = &Generation{ID: id, State: state}
				gens[id] = g
			}
			set(g, m.GetGauge().GetValue())
		}
	}
	for _, g := range gens {
		c.Generations = append(c.Generations, *g)
	}
	slices.SortFunc(c.Generations, func(a, b Generation) int { return cmp.Compare(a.ID, b.ID) })
	return c, nil
}

// SidecarMetrics is what a sidecar's /metrics tells of its identity.
type SidecarMetrics struct {
	// SVIDExpiry is the NotAfter of the SVID the sidecar holds (zero
	// before its first).
	SVIDExpiry time.Time
	// CAReachable: the latest exchange with tether-ca succeeded; false
	// means the SVID cannot be renewed now.
	CAReachable bool
	// XDSConnected: the sidecar's stream to discovery is up (false when
	// the metric is absent: discovery off).
	XDSConnected, HasXDS bool
}

// ParseSidecarMetrics reads a sidecar's /metrics.
func ParseSidecarMetrics(r io.Reader) (*SidecarMetrics, error) {
	mfs, err := parseMetrics(r)
	if err != nil {
		return nil, err
	}
	exp, ok := mfs[sidecarMetricName]
	if !ok || len(exp.GetMetric()) == 0 {
		return nil, fmt.Errorf("/metrics has no %s: is this tether-sidecar?", sidecarMetricName)
	}
	s := &SidecarMetrics{SVIDExpiry: unix(int64(exp.GetMetric()[0].GetGauge().GetValue()))}
	if m := mfs["tether_sidecar_ca_reachable"].GetMetric(); len(m) > 0 {
		s.CAReachable = m[0].GetGauge().GetValue() > 0
	}
	if m := mfs["tether_sidecar_xds_connected"].GetMetric(); len(m) > 0 {
		s.HasXDS, s.XDSConnected = true, m[0].GetGauge().GetValue() > 0
	}
	return s, nil
}

func parseMetrics(r io.Reader) (map[string]*dto.MetricFamily, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("read /metrics: %w", err)
	}
	return mfs, nil
}

func unix(s int64) time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(s, 0).UTC()
}
