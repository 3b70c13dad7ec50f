package flows

import (
	"time"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
)

// ToProto encodes edges for a FlowReport.
func ToProto(edges []Edge) []*discoveryv1.FlowEdge {
	out := make([]*discoveryv1.FlowEdge, len(edges))
	for i, e := range edges {
		out[i] = &discoveryv1.FlowEdge{
			Source: e.Source, Namespace: e.Namespace, Service: e.Service, Workload: e.Workload, Port: uint32(e.Port),
			Decision: string(e.Decision), Rule: e.Rule, Side: string(e.Side), Connections: e.Connections,
			FirstSeenUnixNano: e.FirstSeen.UnixNano(), LastSeenUnixNano: e.LastSeen.UnixNano(),
		}
	}
	return out
}

// FromProto decodes a FlowReport's edges. A port out of range becomes 0,
// which Validate refuses.
func FromProto(in []*discoveryv1.FlowEdge) []Edge {
	out := make([]Edge, len(in))
	for i, p := range in {
		port := p.GetPort()
		if port > 65535 {
			port = 0
		}
		out[i] = Edge{
			Key: Key{
				Source: p.GetSource(), Namespace: p.GetNamespace(), Service: p.GetService(), Workload: p.GetWorkload(),
				Port: uint16(port), Decision: Decision(p.GetDecision()), Rule: p.GetRule(), Side: Side(p.GetSide()),
			},
			Connections: p.GetConnections(),
			FirstSeen:   unixNano(p.GetFirstSeenUnixNano()),
			LastSeen:    unixNano(p.GetLastSeenUnixNano()),
		}
	}
	return out
}

func unixNano(n int64) time.Time {
	if n <= 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
