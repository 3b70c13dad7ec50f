package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/pkg/discovery/flows"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
	"github.com/tether-mesh/tether/pkg/proxy"
)

func testRecorder(t *testing.T, v *xdsclient.View) (*flowRecorder, *prometheus.Registry) {
	t.Helper()
	var view atomic.Pointer[xdsclient.View]
	view.Store(v)
	reg := prometheus.NewRegistry()
	return newFlowRecorder(&view, reg), reg
}

// TestFlowKeys: what the proxy's entries become in the summary. api's
// view (enforceMesh) covers its port 8080 by Service api:8080; no Service
// covers 7777.
func TestFlowKeys(t *testing.T) {
	r, _ := testRecorder(t, viewOf(t, enforceMesh, apiID))
	web, api := webID.String(), apiID.String()
	entries := []proxy.Entry{
		{Direction: "outbound", SourceID: api, Target: "default/db:5432", Decision: "allow", Rule: "api-to-db"},
		{Direction: "outbound", SourceID: api, Target: "default/db:5432", Decision: "allow", Rule: "api-to-db"},
		{Direction: "outbound", SourceID: api, Target: "default/web:80", Decision: "deny", Rule: "no AccessPolicy allows it"},
		{Direction: "outbound", SourceID: api, Target: "default/web:80", Decision: "audit-deny", Rule: "would be denied"},
		{Direction: "inbound", SourceID: web, DestID: api, Port: 8080, Decision: "allow", Rule: "chain"},
		{Direction: "inbound", SourceID: web, DestID: api, Port: 7777, Decision: "deny", Rule: "inbound default deny"},
		{Direction: "inbound", SourceID: web, DestID: api, Port: 8080, Decision: "deny", Rule: "bad\nrule"},
		// Left out: not a mesh service, an error, a refusal without a
		// rule, no identity, no port.
		{Direction: "outbound", SourceID: api, Target: "93.184.216.34:443", Decision: "deny", Rule: "registry-only"},
		{Direction: "outbound", SourceID: api, Target: "default/db:5432", Decision: "error", Reason: "connect: refused"},
		{Direction: "inbound", SourceID: web, DestID: api, Port: 8080, Decision: "deny", Reason: "tunnel: protocol error"},
		{Direction: "inbound", DestID: api, Port: 8080, Decision: "allow", Reason: "permissive: plaintext passed through"},
		{Direction: "inbound", SourceID: web, DestID: api, Decision: "deny", Rule: "x", Reason: "no destination"},
	}
	for i := range entries {
		r.observe(&entries[i])
	}
	edges, dropped := r.agg.Flush()
	var got []string
	for _, e := range edges {
		dest := e.Namespace + "/" + e.Service
		if e.Workload != "" {
			dest = e.Namespace + " workload " + e.Workload
		}
		got = append(got, fmt.Sprintf("%s %s %s:%d %s %q x%d", e.Side, e.Source, dest, e.Port, e.Decision, e.Rule, e.Connections))
		if err := e.Validate(e.LastSeen); err != nil {
			t.Errorf("edge %+v: %v", e, err)
		}
	}
	want := []string{
		`caller ` + api + ` default/db:5432 allow "api-to-db" x2`,
		`caller ` + api + ` default/web:80 audit-deny "would be denied" x1`,
		`caller ` + api + ` default/web:80 deny "no AccessPolicy allows it" x1`,
		// Sorted by key: no service ("") before api.
		`destination ` + web + ` default workload ` + api + `:7777 deny "inbound default deny" x1`,
		`destination ` + web + ` default/api:8080 allow "chain" x1`,
		`destination ` + web + ` default/api:8080 deny "bad?rule" x1`,
	}
	if dropped != 0 || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("summary (%d dropped):\n%s\nwant:\n%s", dropped, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestFlowSummaryFull: past its bound, the summary counts what it drops.
func TestFlowSummaryFull(t *testing.T) {
	r, reg := testRecorder(t, nil)
	r.agg = flows.NewAggregator(1)
	for _, target := range []string{"default/a:1", "default/b:1", "default/c:1", "default/a:1"} {
		r.observe(&proxy.Entry{Direction: "outbound", SourceID: apiID.String(), Target: target, Decision: "allow"})
	}
	if n := gatherCounter(t, reg, "tether_sidecar_flows_dropped_total", map[string]string{"reason": "full"}); n != 2 {
		t.Errorf("dropped{full} = %v, want 2", n)
	}
	if edges, dropped := r.agg.Flush(); len(edges) != 1 || edges[0].Connections != 2 || dropped != 2 {
		t.Errorf("flush: %+v, %d dropped", edges, dropped)
	}
}

func TestBatchReports(t *testing.T) {
	var edges []flows.Edge
	for i := range 5000 {
		k := flows.Key{Source: webID.String(), Namespace: "default", Service: "api", Port: uint16(1 + i), Decision: flows.Allow,
			Rule: strings.Repeat("r", flows.MaxRuleLength), Side: flows.Caller}
		edges = append(edges, flows.Edge{Key: k, Connections: 1})
	}
	batches := batchReports(flows.ToProto(edges))
	total := 0
	for _, b := range batches {
		b.Unsummed = 1 << 40
		if n := proto.Size(b); n > flows.MaxReportBytes || len(b.Edges) > flows.MaxReportEdges {
			t.Errorf("batch of %d edges, %d bytes: over the bounds", len(b.Edges), n)
		}
		total += len(b.Edges)
	}
	if total != len(edges) || len(batches) < 3 {
		t.Errorf("%d batches carry %d edges, want all %d in at least 3", len(batches), total, len(edges))
	}
	if got := batchReports(nil); len(got) != 1 || len(got[0].Edges) != 0 {
		t.Errorf("no edges: %v", got)
	}
}

// fakeFlows answers Report with the codes it is given, in turn, and
// keeps what it took.
type fakeFlows struct {
	codes []codes.Code
	took  []*discoveryv1.FlowReport
}

func (f *fakeFlows) Report(_ context.Context, in *discoveryv1.FlowReport, _ ...grpc.CallOption) (*discoveryv1.FlowReportResponse, error) {
	code := codes.OK
	if len(f.codes) > 0 {
		code, f.codes = f.codes[0], f.codes[1:]
	}
	if code != codes.OK {
		return nil, status.Error(code, "no")
	}
	f.took = append(f.took, in)
	return &discoveryv1.FlowReportResponse{Taken: uint32(len(in.Edges))}, nil
}

// TestSendFlowsDeltas: reports carry what was seen since the last one
// delivered; one not delivered goes with the next; one refused is
// dropped and counted.
func TestSendFlowsDeltas(t *testing.T) {
	r, reg := testRecorder(t, nil)
	s := &Sidecar{flows: r, log: slog.New(slog.DiscardHandler)}
	f := &fakeFlows{codes: []codes.Code{codes.Unavailable, codes.OK, codes.PermissionDenied, codes.OK}}
	see := func(n int) {
		for range n {
			r.observe(&proxy.Entry{Direction: "outbound", SourceID: webID.String(), Target: "default/api:8080", Decision: "allow"})
		}
	}
	see(2)
	s.sendFlows(context.Background(), f) // Unavailable: kept
	see(3)
	s.sendFlows(context.Background(), f) // OK: 5
	see(4)
	s.sendFlows(context.Background(), f) // refused: 4 dropped
	s.sendFlows(context.Background(), f) // nothing to send
	see(1)
	s.sendFlows(context.Background(), f) // OK: 1
	var got []uint64
	for _, rep := range f.took {
		got = append(got, connections(rep))
	}
	if fmt.Sprint(got) != "[5 1]" {
		t.Errorf("delivered reports counted %v connections, want [5 1]", got)
	}
	if n := gatherCounter(t, reg, "tether_sidecar_flows_dropped_total", map[string]string{"reason": "refused"}); n != 4 {
		t.Errorf("dropped{refused} = %v, want 4", n)
	}
	for result, want := range map[string]float64{"ok": 2, "retry": 1, "refused": 1} {
		if n := gatherCounter(t, reg, "tether_sidecar_flow_reports_total", map[string]string{"result": result}); n != want {
			t.Errorf("reports{%s} = %v, want %v", result, n, want)
		}
	}
}

func TestFlowReportIntervalFlag(t *testing.T) {
	for _, bad := range []string{"-1s", "500ms"} {
		_, err := ParseFlags([]string{"--join-token", "tjt_x", "--inbound", "127.0.0.1:1=127.0.0.1:2", "--flow-report-interval", bad}, func(string) string { return "" })
		if err == nil || !strings.Contains(err.Error(), "--flow-report-interval") {
			t.Errorf("--flow-report-interval %s: %v", bad, err)
		}
	}
	c, err := ParseFlags([]string{"--join-token", "tjt_x", "--inbound", "127.0.0.1:1=127.0.0.1:2"}, func(string) string { return "" })
	if err != nil || c.FlowReportInterval != DefaultFlowReportInterval {
		t.Errorf("default: %v, %v", c.FlowReportInterval, err)
	}
}
