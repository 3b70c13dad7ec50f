package flows

import (
	"cmp"
	"slices"
	"strings"
)

// Merge combines the tables of several discovery replicas into one: edges
// with the same Key add their connections and widen their first and last
// seen; Dropped, DroppedReports and MaxEdges add up (each replica bounds
// its own table); Time is the latest and Replica lists the replicas, comma
// separated, in the order given. Each sidecar reports what it saw since
// its last report to the replica it is connected to, so replicas hold
// disjoint counts and adding them is exact. The edges come out sorted by
// Key, as a Table's are. Merge does not modify its arguments.
func Merge(tables ...Table) Table {
	var out Table
	byKey := make(map[Key]int)
	var replicas []string
	for _, t := range tables {
		if t.Time.After(out.Time) {
			out.Time = t.Time
		}
		replicas = append(replicas, t.Replica)
		out.Dropped += t.Dropped
		out.DroppedReports += t.DroppedReports
		out.MaxEdges += t.MaxEdges
		for _, e := range t.Edges {
			i, ok := byKey[e.Key]
			if !ok {
				byKey[e.Key] = len(out.Edges)
				out.Edges = append(out.Edges, e)
				continue
			}
			m := &out.Edges[i]
			m.Connections += e.Connections
			if !e.FirstSeen.IsZero() && (m.FirstSeen.IsZero() || e.FirstSeen.Before(m.FirstSeen)) {
				m.FirstSeen = e.FirstSeen
			}
			if e.LastSeen.After(m.LastSeen) {
				m.LastSeen = e.LastSeen
			}
		}
	}
	out.Replica = strings.Join(replicas, ",")
	slices.SortFunc(out.Edges, func(a, b Edge) int { return keyOrder(a.Key, b.Key) })
	return out
}

// keyOrder is the order of a Table's edges: source, namespace, service,
// workload, port, decision, rule, side.
func keyOrder(a, b Key) int {
	return cmp.Or(
		strings.Compare(a.Source, b.Source),
		strings.Compare(a.Namespace, b.Namespace),
		strings.Compare(a.Service, b.Service),
		strings.Compare(a.Workload, b.Workload),
		cmp.Compare(a.Port, b.Port),
		strings.Compare(string(a.Decision), string(b.Decision)),
		strings.Compare(a.Rule, b.Rule),
		strings.Compare(string(a.Side), string(b.Side)),
	)
}
