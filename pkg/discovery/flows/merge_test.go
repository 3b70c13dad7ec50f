package flows

import (
	"reflect"
	"testing"
	"time"
)

func TestMerge(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 20, 0, 0, 0, time.UTC)
	web := Key{Source: "spiffe://td/ns/a/sa/web", Namespace: "a", Service: "api", Port: 80, Decision: Allow, Rule: "r", Side: Destination}
	webCaller := web
	webCaller.Side = Caller
	denied := web
	denied.Decision, denied.Rule = Deny, "no AccessPolicy allows"
	one := Table{Time: t0, Replica: "d-0", MaxEdges: 10, Dropped: 1, Edges: []Edge{
		{Key: web, Connections: 3, FirstSeen: t0.Add(time.Minute), LastSeen: t0.Add(5 * time.Minute)},
		{Key: denied, Connections: 1, FirstSeen: t0, LastSeen: t0},
	}}
	two := Table{Time: t0.Add(time.Second), Replica: "d-1", MaxEdges: 10, DroppedReports: 2, Edges: []Edge{
		{Key: webCaller, Connections: 2, FirstSeen: t0, LastSeen: t0},
		{Key: web, Connections: 4, FirstSeen: t0, LastSeen: t0.Add(2 * time.Minute)},
	}}
	oneBefore := append([]Edge(nil), one.Edges...)
	got := Merge(one, two)
	want := Table{Time: t0.Add(time.Second), Replica: "d-0,d-1", MaxEdges: 20, Dropped: 1, DroppedReports: 2, Edges: []Edge{
		// Sorted by Key: the deny before the allows, caller before destination.
		{Key: webCaller, Connections: 2, FirstSeen: t0, LastSeen: t0},
		{Key: web, Connections: 7, FirstSeen: t0, LastSeen: t0.Add(5 * time.Minute)},
		{Key: denied, Connections: 1, FirstSeen: t0, LastSeen: t0},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Merge:\n got %+v\nwant %+v", got, want)
	}
	if !reflect.DeepEqual(one.Edges, oneBefore) {
		t.Errorf("Merge modified its argument: %+v", one.Edges)
	}
	if got := Merge(); got.Edges != nil || got.Replica != "" || !got.Time.IsZero() {
		t.Errorf("Merge of nothing: %+v", got)
	}
	// A single table comes back as it was.
	if got := Merge(one); !reflect.DeepEqual(got.Edges, []Edge{one.Edges[0], one.Edges[1]}) || got.Replica != "d-0" {
		t.Errorf("Merge of one table: %+v", got)
	}
}
