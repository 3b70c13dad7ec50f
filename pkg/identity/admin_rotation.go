package identity

import (
	"context"
	"time"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
)

// RotationStatus implements cav1.AdminServer.
func (a *AdminServer) RotationStatus(ctx context.Context, _ *cav1.RotationStatusRequest) (*cav1.RotationStatusResponse, error) {
	return RotationStatusMessage(a.ca.RotationStatus(ctx)), nil
}

// RotationStatusMessage is the wire form of a RotationStatus.
func RotationStatusMessage(rs RotationStatus) *cav1.RotationStatusResponse {
	m := &cav1.RotationStatusResponse{Reporting: int64(rs.Reporting), Replicas: rs.Replicas, StaleReplicas: rs.StaleReplicas, Incomplete: rs.Incomplete,
		ReportIntervalSeconds: int64(rs.Interval / time.Second), ReportTtlSeconds: int64(rs.TTL / time.Second)}
	for _, g := range rs.Generations {
		m.Generations = append(m.Generations, &cav1.GenerationCounts{Generation: g.ID, State: string(g.State), AnchorFingerprint: g.AnchorFingerprint,
			Trusting: int64(g.Trusting), Holding: int64(g.Holding)})
	}
	for _, n := range rs.NotReporting {
		m.NotReporting = append(m.NotReporting, &cav1.NotReporting{SpiffeId: n.ID, Peer: n.Peer, Replica: n.Replica, SinceUnix: n.Since.Unix()})
	}
	gens := map[string]uint64{}
	for _, g := range rs.Generations {
		gens[g.AnchorFingerprint] = g.ID
	}
	conv := func(rs2 []SidecarReport) []*cav1.SidecarReport {
		var out []*cav1.SidecarReport
		for _, r := range rs2 {
			sr := &cav1.SidecarReport{SpiffeId: r.ID, Instance: r.Instance, Version: r.Version, PeerIp: r.PeerIP, LastReportUnix: r.LastReport.Unix(),
				Holds: gens[r.Holds], ClaimMismatch: r.ClaimMismatch, Replica: r.Replica, BundleSequence: r.BundleSequence,
				Silent: r.Silent(rs.At, rs.TTL), SvidNotAfterUnix: r.SVIDNotAfter.Unix()}
			for _, fp := range r.Trusted {
				if id, ok := gens[fp]; ok {
					sr.Trusts = append(sr.Trusts, id)
				}
			}
			out = append(out, sr)
		}
		return out
	}
	m.ActivateLaggards, m.RetireLaggards = conv(rs.ActivateLaggards), conv(rs.RetireLaggards)
	if rs.ActivateBlocked != nil {
		m.ActivateBlocked = rs.ActivateBlocked.Error()
	}
	if rs.RetireBlocked != nil {
		m.RetireBlocked = rs.RetireBlocked.Error()
	}
	m.BundleEndpointGate = endpointGateMessage(rs.BundleEndpoint)
	return m
}

// endpointGateMessage is the wire form of a BundleEndpointGate (nil: none).
func endpointGateMessage(g *BundleEndpointGate) *cav1.BundleEndpointGate {
	if g == nil {
		return nil
	}
	m := &cav1.BundleEndpointGate{Generation: g.Generation, ServedSequence: g.Served.Sequence,
		RefreshHintSeconds: int64(g.RefreshHint / time.Second), MarginSeconds: int64(g.Margin / time.Second)}
	if !g.Served.At.IsZero() {
		m.FirstServedUnix, m.PassesUnix = g.Served.At.Unix(), g.PassesAt.Unix()
	}
	if g.Blocked != nil {
		m.Blocked = g.Blocked.Error()
	}
	return m
}
