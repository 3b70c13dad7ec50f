package discoveryserver

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	discoveryv1 "github.com/tether-mesh/tether/api/discovery/v1"
	"github.com/tether-mesh/tether/pkg/discovery/flows"
)

// flowsClient reports flows to s as id, with an SVID from ca over mTLS.
func flowsClient(t *testing.T, s *Server, ca *testCA, id spiffeid.ID) discoveryv1.FlowsClient {
	t.Helper()
	tc := tlsconfig.MTLSClientConfig(ca.svid(t, id), ca.bundle(), tlsconfig.AuthorizeID(discoveryID))
	conn, err := grpc.NewClient(s.Addr("grpc").String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return discoveryv1.NewFlowsClient(conn)
}

func report(c discoveryv1.FlowsClient, unsummed uint64, edges ...flows.Edge) (*discoveryv1.FlowReportResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.Report(ctx, &discoveryv1.FlowReport{Edges: flows.ToProto(edges), Unsummed: unsummed})
}

func flowEdge(src spiffeid.ID, svc string, port uint16, dec flows.Decision, side flows.Side, n uint64) flows.Edge {
	now := time.Now()
	return flows.Edge{Key: flows.Key{Source: src.String(), Namespace: "default", Service: svc, Port: port, Decision: dec, Rule: "r", Side: side},
		Connections: n, FirstSeen: now.Add(-time.Second), LastSeen: now}
}

func (s *Server) flowTable(t *testing.T, query string) flows.Table {
	t.Helper()
	code, body := s.get(t, "/debug/flows"+query)
	if code != http.StatusOK {
		t.Fatalf("GET /debug/flows%s = %d %s", query, code, body)
	}
	var tab flows.Table
	if err := json.Unmarshal([]byte(body), &tab); err != nil {
		t.Fatalf("GET /debug/flows: %v\n%s", err, body)
	}
	return tab
}

// TestFlowReports sends reports over discovery's mTLS gRPC port as the
// sidecars of web and api would, and as lying or malformed ones would:
// only what each reporter can have seen reaches GET /debug/flows, and
// every refusal is counted.
func TestFlowReports(t *testing.T) {
	ca := startCA(t)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, mesh, meshYAML("127.0.0.2", true))
	cfg := baseConfig(t, ca, mesh)
	cfg.FlowMaxEdgesPerReporter = 3
	s := start(t, cfg)
	s.flowsGRPC.gate.burst = 100 // the rate limit is tested apart
	web, api := flowsClient(t, s, ca, webID), flowsClient(t, s, ca, apiID)

	// Both ends of web → api:80 (allowed) and web → db:5432 (denied at the caller).
	if _, err := report(web, 7, flowEdge(webID, "api", 80, flows.Allow, flows.Caller, 3), flowEdge(webID, "db", 5432, flows.Deny, flows.Caller, 1)); err != nil {
		t.Fatalf("web's report: %v", err)
	}
	if _, err := report(api, 0, flowEdge(webID, "api", 80, flows.Allow, flows.Destination, 3)); err != nil {
		t.Fatalf("api's report: %v", err)
	}
	// Deltas add up.
	if _, err := report(web, 0, flowEdge(webID, "api", 80, flows.Allow, flows.Caller, 2)); err != nil {
		t.Fatal(err)
	}

	refusals := []struct {
		name   string
		c      discoveryv1.FlowsClient
		code   codes.Code
		reason string
		edges  []flows.Edge
	}{
		{"web reporting a call api made", web, codes.PermissionDenied, "not_seen", []flows.Edge{flowEdge(apiID, "db", 5432, flows.Allow, flows.Caller, 1)}},
		{"web reporting a call into api, which it does not serve", web, codes.PermissionDenied, "not_seen", []flows.Edge{flowEdge(webID, "api", 80, flows.Deny, flows.Destination, 1)}},
		{"api reporting a port api does not have", api, codes.PermissionDenied, "not_seen", []flows.Edge{flowEdge(webID, "api", 81, flows.Deny, flows.Destination, 1)}},
		{"api reporting a call into another workload", api, codes.PermissionDenied, "not_seen", []flows.Edge{{
			Key:         flows.Key{Source: webID.String(), Namespace: "default", Workload: webID.String(), Port: 9, Decision: flows.Deny, Side: flows.Destination},
			Connections: 1, FirstSeen: time.Now(), LastSeen: time.Now()}}},
		{"a good edge then a lie: the whole report", web, codes.PermissionDenied, "not_seen", []flows.Edge{
			flowEdge(webID, "api", 80, flows.AuditDeny, flows.Caller, 1), flowEdge(apiID, "api", 80, flows.Allow, flows.Caller, 1)}},
		{"a bad decision", web, codes.InvalidArgument, "malformed", []flows.Edge{flowEdge(webID, "api", 80, "permit", flows.Caller, 1)}},
		{"too many edges", web, codes.InvalidArgument, "malformed", func() []flows.Edge {
			out := make([]flows.Edge, flows.MaxReportEdges+1)
			for i := range out {
				out[i] = flowEdge(webID, "api", 80, flows.Allow, flows.Caller, 1)
			}
			return out
		}()},
		{"over a MiB", web, codes.InvalidArgument, "oversize", func() []flows.Edge {
			out := make([]flows.Edge, 3000)
			for i := range out {
				out[i] = flowEdge(webID, "api", 80, flows.Allow, flows.Caller, 1)
				out[i].Rule = strings.Repeat("x", flows.MaxRuleLength)
			}
			return out
		}()},
	}
	for _, r := range refusals {
		before := s.metric(t, `tether_discovery_flow_reports_refused_total{reason="`+r.reason+`"}`)
		_, err := report(r.c, 0, r.edges...)
		if status.Code(err) != r.code {
			t.Errorf("%s: %v, want %s", r.name, err, r.code)
		}
		if after := s.metric(t, `tether_discovery_flow_reports_refused_total{reason="`+r.reason+`"}`); after != before+1 {
			t.Errorf("%s: refused{reason=%s} went from %v to %v", r.name, r.reason, before, after)
		}
	}

	tab := s.flowTable(t, "")
	got := map[string]uint64{}
	for _, e := range tab.Edges {
		got[e.Source+" "+e.Service+":"+string(rune('0'+e.Port%10))+" "+string(e.Decision)+" "+string(e.Side)] = e.Connections
	}
	want := map[string]uint64{
		webID.String() + " api:0 allow caller":      5,
		webID.String() + " db:2 deny caller":        1,
		webID.String() + " api:0 allow destination": 3,
	}
	if len(got) != len(want) {
		t.Errorf("table holds %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("edge %s: %d connections, want %d (table %v)", k, got[k], n, got)
		}
	}
	if tab.DroppedReports != uint64(len(refusals)) || tab.Unsummed != 7 || tab.MaxEdges != flows.DefaultMaxEdges || tab.Replica == "" {
		t.Errorf("table counters: droppedReports %d unsummed %d maxEdges %d replica %q; want %d, 7, %d, the host name",
			tab.DroppedReports, tab.Unsummed, tab.MaxEdges, tab.Replica, len(refusals), flows.DefaultMaxEdges)
	}

	// One reporter cannot fill the table: web has 2 edges of its share of 3.
	resp, err := report(web, 0, flowEdge(webID, "api", 80, flows.Deny, flows.Caller, 1), flowEdge(webID, "api", 80, flows.AuditDeny, flows.Caller, 1))
	if err != nil || resp.GetTaken() != 1 || resp.GetDropped() != 1 {
		t.Errorf("web over its share: %v, %v; want 1 taken, 1 dropped", resp, err)
	}
	if n := s.metric(t, "tether_discovery_flow_edges_dropped_total"); n != 1 {
		t.Errorf("edges dropped metric %v, want 1", n)
	}
	if n := s.metric(t, "tether_discovery_flow_edges"); n != 4 {
		t.Errorf("edges metric %v, want 4", n)
	}

	// Filters.
	if tab := s.flowTable(t, "?namespace=other&since=1h"); len(tab.Edges) != 0 {
		t.Errorf("namespace=other: %d edges", len(tab.Edges))
	}
	if tab := s.flowTable(t, "?namespace=default"); len(tab.Edges) != 4 {
		t.Errorf("namespace=default: %d edges, want 4", len(tab.Edges))
	}
	for _, q := range []string{"?since=-1h", "?since=soon", "?namespace=Not_A_Label", "?nmespace=default"} {
		if code, body := s.get(t, "/debug/flows"+q); code != http.StatusBadRequest {
			t.Errorf("GET /debug/flows%s = %d %s, want 400", q, code, body)
		}
	}
}

// TestFlowReportRate: one identity at one address gets a burst of
// reports, then one a second; the rest are refused before they are read,
// with ResourceExhausted, and counted. Another identity is not held back.
func TestFlowReportRate(t *testing.T) {
	ca := startCA(t)
	mesh := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, mesh, meshYAML("127.0.0.2", true))
	s := start(t, baseConfig(t, ca, mesh))
	web, api := flowsClient(t, s, ca, webID), flowsClient(t, s, ca, apiID)
	ok, limited := 0, 0
	for range 20 {
		_, err := report(web, 0, flowEdge(webID, "api", 80, flows.Allow, flows.Caller, 1))
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.ResourceExhausted:
			limited++
		default:
			t.Fatalf("report: %v", err)
		}
	}
	// Burst of 5, plus a token a second while the 20 calls ran.
	if ok < 5 || ok > 8 || limited < 12 {
		t.Errorf("20 reports at once: %d accepted, %d rate-limited; want 5 to 8 accepted", ok, limited)
	}
	if n := s.metric(t, `tether_discovery_flow_reports_refused_total{reason="rate_limited"}`); n != float64(limited) {
		t.Errorf("rate_limited metric %v, want %d", n, limited)
	}
	if _, err := report(api, 0, flowEdge(webID, "api", 80, flows.Allow, flows.Destination, 1)); err != nil {
		t.Errorf("api, held back by web's flood: %v", err)
	}
	if tab := s.flowTable(t, ""); tab.Edges[0].Connections != uint64(ok) {
		t.Errorf("table counts %d, want the %d accepted", tab.Edges[0].Connections, ok)
	}
}

func TestReportGateInFlight(t *testing.T) {
	now := time.Unix(0, 0)
	g := newReportGate(func() time.Time { return now })
	var releases []func()
	for i := range reportsInFlight {
		r, reason := g.admit(string(rune('a' + i)))
		if reason != "" {
			t.Fatalf("report %d refused: %s", i, reason)
		}
		releases = append(releases, r)
	}
	if _, reason := g.admit("z"); reason != refusedBusy {
		t.Errorf("over the in-flight bound: %q, want busy", reason)
	}
	releases[0]()
	releases[0]() // twice: no effect
	if _, reason := g.admit("z"); reason != "" {
		t.Errorf("after a release: %q", reason)
	}
	if _, reason := g.admit("y"); reason != refusedBusy {
		t.Errorf("a double release freed two slots: %q", reason)
	}
	// Full buckets are forgotten when the map is full; others stay.
	for i := range maxReportBuckets + 1 {
		g.buckets[string(rune(1000+i))] = &bucket{tokens: reportBurst, at: now}
	}
	g.buckets["spent"] = &bucket{tokens: 0, at: now}
	g.pruneLocked(now)
	if _, ok := g.buckets["spent"]; !ok || len(g.buckets) > 30 {
		t.Errorf("prune kept %d buckets (spent kept: %v)", len(g.buckets), ok)
	}
}
