package flows

import (
	"reflect"
	"testing"
	"time"
)

// TestMergeKeepsSides: the two ends of a call are distinct edges (the
// CLI's merge of ends counts the larger, not the sum), and Merge does not
// modify the tables it reads.
func TestMergeKeepsSides(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 20, 0, 0, 0, time.UTC)
	dst := Key{Source: "spiffe://td/ns/a/sa/web", Namespace: "a", Service: "api", Port: 80, Decision: Allow, Rule: "r", Side: Destination}
	caller := dst
	caller.Side = Caller
	one := Table{Time: t0, Replica: "d-0", Edges: []Edge{{Key: dst, Connections: 3, FirstSeen: t0.Add(time.Minute), LastSeen: t0.Add(5 * time.Minute)}}}
	two := Table{Time: t0, Replica: "d-1", Edges: []Edge{
		{Key: caller, Connections: 2, FirstSeen: t0, LastSeen: t0},
		{Key: dst, Connections: 4, FirstSeen: t0, LastSeen: t0.Add(2 * time.Minute)},
	}}
	before := append([]Edge(nil), one.Edges...)
	got := Merge(one, two).Edges
	want := []Edge{
		{Key: caller, Connections: 2, FirstSeen: t0, LastSeen: t0},
		{Key: dst, Connections: 7, FirstSeen: t0, LastSeen: t0.Add(5 * time.Minute)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Merge:\n got %+v\nwant %+v", got, want)
	}
	if !reflect.DeepEqual(one.Edges, before) {
		t.Errorf("Merge modified its argument: %+v", one.Edges)
	}
}
