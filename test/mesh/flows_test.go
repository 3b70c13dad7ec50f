//go:build linux

package mesh

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/pkg/discovery/flows"
)

// TestObservedTraffic: web calls api (allowed) three times and secret
// (denied) twice, once by service (web's own sidecar refuses) and once as
// a fixed peer (secret's sidecar refuses). The sidecars report what they
// saw over their mTLS connection to discovery, whose GET /debug/flows then
// holds each edge from each side that saw it, with its count. web reports
// only at shutdown (its interval is an hour): its edges arrive with the
// report it sends as it stops.
func TestObservedTraffic(t *testing.T) {
	needMesh(t)
	ca := startCA(t)
	apiApp, secretApp := startApp(t, "api"), startApp(t, "secret")
	services := []svc{
		{name: "api", sa: "api", ip: "10.96.0.31", port: 8080, app: apiApp.addr, endpoint: loopback(t), allowFrom: []string{"web"}},
		{name: "secret", sa: "secret", ip: "10.96.0.32", port: 8443, app: secretApp.addr, endpoint: loopback(t), allowFrom: []string{"api"}},
	}
	d := startDiscovery(t, ca, meshYAML(services...))
	fast := []string{"--flow-report-interval", "1s"}
	startSidecar(t, ca, d, sidecarSpec{sa: "api", inbound: services[0].endpoint, app: apiApp.addr, extra: fast})
	startSidecar(t, ca, d, sidecarSpec{sa: "secret", inbound: services[1].endpoint, app: secretApp.addr, extra: fast})
	web := startSidecar(t, ca, d, sidecarSpec{sa: "web", extra: []string{"--flow-report-interval", "1h"},
		outbound: []string{"default/api:8080", "default/secret:8443", services[1].endpoint + "@" + workloadID("default", "secret").String()}})

	eventually(t, "web → api", 30*time.Second, func() error { return call(web.outbound[0], "api") })
	for range 2 {
		if err := call(web.outbound[0], "api"); err != nil {
			t.Fatalf("web → api: %v", err)
		}
	}
	if err := refused(web.outbound[1]); err != nil {
		t.Errorf("web → secret by service: %v", err)
	}
	if err := refused(web.outbound[2]); err != nil {
		t.Errorf("web → secret as a fixed peer: %v", err)
	}
	if n := secretApp.accepted.Load(); n != 0 {
		t.Errorf("secret's app accepted %d connections", n)
	}

	webID, apiSvc, secretSvc := workloadID("default", "web").String(), "default/api:8080", "default/secret:8443"
	want := map[string]uint64{
		"caller " + webID + " " + apiSvc + " allow":        3,
		"destination " + webID + " " + apiSvc + " allow":   3,
		"caller " + webID + " " + secretSvc + " deny":      1,
		"destination " + webID + " " + secretSvc + " deny": 1,
	}
	// api and secret report within a second; web has not reported yet.
	eventually(t, "api's and secret's reports", 20*time.Second, func() error {
		got := flowEdges(t, d)
		for k, n := range want {
			if strings.HasPrefix(k, "destination ") && got[k] != n {
				return fmt.Errorf("edges %v", got)
			}
		}
		return nil
	})
	if got := flowEdges(t, d); len(got) != 2 {
		t.Errorf("before web stops, discovery holds %v: want only the destinations' edges (web reports hourly)", got)
	}
	if err := web.p.terminate(15 * time.Second); err != nil {
		t.Fatalf("stopping web's sidecar: %v", err)
	}
	eventually(t, "web's report at shutdown", 10*time.Second, func() error {
		got := flowEdges(t, d)
		if fmt.Sprint(sorted(got)) != fmt.Sprint(sorted(want)) {
			return fmt.Errorf("edges:\n%s\nwant:\n%s", strings.Join(sorted(got), "\n"), strings.Join(sorted(want), "\n"))
		}
		return nil
	})
	_, body, _ := get(d.admin, "/debug/flows")
	t.Logf("GET /debug/flows:\n%s", body)
	if m, err := scrape(d.admin); err != nil || metric(m, "tether_discovery_flow_edges") != 4 ||
		metric(m, "tether_discovery_flow_reports_refused_total", `reason="not_seen"`) != 0 {
		t.Errorf("discovery's flow metrics (%v):\n%s", err, grepLines(m, "tether_discovery_flow"))
	}
}

// flowEdges reads discovery's table: "side source namespace/service:port
// decision" → connections.
func flowEdges(t *testing.T, d *discoveryProc) map[string]uint64 {
	t.Helper()
	code, body, err := get(d.admin, "/debug/flows")
	if err != nil || code != 200 {
		t.Fatalf("GET /debug/flows: %d %v %s", code, err, body)
	}
	var tab flows.Table
	if err := json.Unmarshal([]byte(body), &tab); err != nil {
		t.Fatalf("GET /debug/flows: %v\n%s", err, body)
	}
	out := map[string]uint64{}
	for _, e := range tab.Edges {
		out[fmt.Sprintf("%s %s %s/%s:%d %s", e.Side, e.Source, e.Namespace, e.Service, e.Port, e.Decision)] += e.Connections
	}
	return out
}

func sorted(m map[string]uint64) []string {
	var out []string
	for k, n := range m {
		out = append(out, fmt.Sprintf("%s x%d", k, n))
	}
	sort.Strings(out)
	return out
}

// grepLines returns the lines of text that contain substr.
func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
