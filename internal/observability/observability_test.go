package observability_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tether-mesh/tether/internal/observability"
)

// repoRoot is the directory of go.mod above the test's directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

// catalog is every metric the binaries define.
func catalog(t *testing.T) map[string]observability.Metric {
	t.Helper()
	metrics, err := observability.Scan(repoRoot(t), "cmd", "internal", "pkg")
	if err != nil {
		t.Fatal(err)
	}
	return metrics
}

func TestScanFindsTheMetrics(t *testing.T) {
	metrics := catalog(t)
	for _, want := range []observability.Metric{
		{Name: "tether_sidecar_authz_denials_total", Type: "counter", Labels: []string{"direction", "source_id", "destination", "reason"}},
		{Name: "tether_ca_sign_duration_seconds", Type: "histogram"},
		{Name: "tether_ca_root_expiry_timestamp_seconds", Type: "gauge", Labels: []string{"generation", "state"}},
		{Name: "tether_discovery_svid_expiry_timestamp_seconds", Type: "gauge"}, // a GaugeFunc
		{Name: "tether_discovery_registry_services", Type: ""},                  // a custom collector's Desc
		{Name: "tether_sidecar_dns_queries_total", Type: "counter", Labels: []string{"type", "result"}},
	} {
		got, ok := metrics[want.Name]
		if !ok {
			t.Errorf("%s not found", want.Name)
			continue
		}
		if got.Type != want.Type || !slices.Equal(got.Labels, want.Labels) || got.Help == "" || got.Pos == "" {
			t.Errorf("%s: %+v, want type %q labels %v", want.Name, got, want.Type, want.Labels)
		}
	}
	for name, m := range metrics {
		if !strings.HasPrefix(name, "tether_") {
			t.Errorf("%s (%s) is not named tether_<part>_...", name, m.Pos)
		}
	}
	if len(metrics) < 30 {
		t.Errorf("only %d metrics found", len(metrics))
	}
}

func TestScanRefusesWhatItCannotRead(t *testing.T) {
	dir := t.TempDir()
	src := `package x
import "github.com/prometheus/client_golang/prometheus"
var name = "tether_x_total"
var c = prometheus.NewCounter(prometheus.CounterOpts{Name: name})
`
	if err := os.WriteFile(filepath.Join(dir, "x.go"), []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := observability.Scan(dir, "."); err == nil || !strings.Contains(err.Error(), "x.go:4") || !strings.Contains(err.Error(), "not a string literal") {
		t.Errorf("Scan of a metric named by a variable: %v", err)
	}
}

func TestParseExpr(t *testing.T) {
	for _, tc := range []struct {
		expr     string
		metrics  []string
		labels   [][]string
		grouping []string
	}{
		{`rate(tether_a_total[5m])`, []string{"tether_a_total"}, [][]string{nil}, nil},
		{`sum by (kind, result) (rate(tether_a_total{result!="ok", kind=~"x|y"}[$__rate_interval]))`,
			[]string{"tether_a_total"}, [][]string{{"result", "kind"}}, []string{"kind", "result"}},
		{`histogram_quantile(0.99, sum by (le) (rate(tether_h_seconds_bucket[$__rate_interval])))`,
			[]string{"tether_h_seconds_bucket"}, [][]string{nil}, []string{"le"}},
		{`min(tether_e > 0) - time()`, []string{"tether_e"}, [][]string{nil}, nil},
		{`sum without(instance) (tether_a) / on(job) group_left tether_b{state="a \"}\" b"}`,
			[]string{"tether_a", "tether_b"}, [][]string{nil, {"state"}}, []string{"instance", "job"}},
		{`bottomk(10, tether_e{pod="$pod"} offset 5m)`, []string{"tether_e"}, [][]string{{"pod"}}, nil},
		{`count(tether_a) and tether_b unless tether_c`, []string{"tether_a", "tether_b", "tether_c"}, [][]string{nil, nil, nil}, nil},
	} {
		r, err := observability.ParseExpr(tc.expr)
		if err != nil {
			t.Errorf("%s: %v", tc.expr, err)
			continue
		}
		var metrics []string
		var labels [][]string
		for _, s := range r.Selectors {
			metrics, labels = append(metrics, s.Metric), append(labels, s.Labels)
		}
		if !slices.Equal(metrics, tc.metrics) || !slices.EqualFunc(labels, tc.labels, slices.Equal) || !slices.Equal(r.Grouping, tc.grouping) {
			t.Errorf("%s: metrics %v labels %v grouping %v; want %v %v %v", tc.expr, metrics, labels, r.Grouping, tc.metrics, tc.labels, tc.grouping)
		}
	}
}

// TestCheckCatchesMistakes: the check the dashboard test relies on fails
// on a misspelt metric or label.
func TestCheckCatchesMistakes(t *testing.T) {
	metrics := catalog(t)
	for _, tc := range []struct{ expr, want string }{
		{`sum(rate(tether_sidecar_authz_denial_total[5m]))`, "metric tether_sidecar_authz_denial_total is not defined"},
		{`sum by (source) (rate(tether_sidecar_authz_denials_total[5m]))`, "grouping label source is not a label"},
		{`rate(tether_sidecar_authz_denials_total{dest="x"}[5m])`, "has no label dest"},
		{`rate(tether_ca_issuances_total_bucket[5m])`, "is not defined"},
		{`histogram_quantile(0.9, rate(tether_ca_sign_duration_bucket[5m]))`, "is not defined"},
		{`up{job="tether"}`, "metric up is not defined"},
		{`sum by (le) (rate(tether_ca_issuances_total[5m]))`, "grouping label le"},
	} {
		errs := observability.Check(tc.expr, metrics)
		if len(errs) == 0 || !strings.Contains(errs[0].Error(), tc.want) {
			t.Errorf("Check(%s) = %v, want an error with %q", tc.expr, errs, tc.want)
		}
	}
	for _, ok := range []string{
		`histogram_quantile(0.99, sum by (le, direction) (rate(tether_sidecar_handshake_duration_seconds_bucket[5m])))`,
		`sum(rate(tether_ca_sign_duration_seconds_count[5m])) by (instance)`,
	} {
		if errs := observability.Check(ok, metrics); len(errs) > 0 {
			t.Errorf("Check(%s) = %v", ok, errs)
		}
	}
}

// panel is the part of a Grafana panel the test reads.
type panel struct {
	ID         int             `json:"id"`
	Title      string          `json:"title"`
	Type       string          `json:"type"`
	Datasource json.RawMessage `json:"datasource"`
	Targets    []struct {
		Expr       string          `json:"expr"`
		Datasource json.RawMessage `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

// TestDashboardUsesDefinedMetrics parses the Grafana dashboard and checks
// every PromQL expression against the metrics the code defines, and that
// it covers what an operator needs.
func TestDashboardUsesDefinedMetrics(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "manifests", "observability", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID        string  `json:"uid"`
		Title      string  `json:"title"`
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct{ Name, Type, Query string } `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Error("the dashboard needs a uid and a title")
	}
	if !slices.ContainsFunc(dash.Templating.List, func(v struct{ Name, Type, Query string }) bool {
		return v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus"
	}) {
		t.Error("no Prometheus datasource variable named datasource")
	}
	metrics := catalog(t)
	used := map[string]bool{}
	ids := map[int]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			if !strings.Contains(string(p.Datasource), "${datasource}") {
				t.Errorf("panel %q does not use the datasource variable: %s", p.Title, p.Datasource)
			}
			for _, tg := range p.Targets {
				for _, err := range observability.Check(tg.Expr, metrics) {
					t.Errorf("panel %q: %v", p.Title, err)
				}
				refs, _ := observability.ParseExpr(tg.Expr)
				for _, s := range refs.Selectors {
					used[strings.TrimSuffix(s.Metric, "_bucket")] = true
				}
			}
		}
	}
	walk(dash.Panels)
	// What the dashboard is for: issuance, sign latency, CA expiry,
	// sidecar connections, bytes and handshakes, denials, xDS, DNS, SVID
	// expiry.
	for _, m := range []string{
		"tether_ca_issuances_total", "tether_ca_sign_duration_seconds", "tether_ca_root_expiry_timestamp_seconds",
		"tether_ca_intermediate_expiry_timestamp_seconds", "tether_sidecar_connections_total", "tether_sidecar_bytes_total",
		"tether_sidecar_handshake_duration_seconds", "tether_sidecar_authz_denials_total", "tether_discovery_xds_streams",
		"tether_discovery_xds_pushes_total", "tether_sidecar_dns_queries_total", "tether_sidecar_svid_expiry_timestamp_seconds",
	} {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
}

// TestDocsListEveryMetric: docs/observability.md names every metric the
// code defines, and no other.
func TestDocsListEveryMetric(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "observability.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	metrics := catalog(t)
	for name, m := range metrics {
		if !strings.Contains(doc, "`"+name+"`") {
			t.Errorf("docs/observability.md does not list %s (%s)", name, m.Pos)
		}
	}
	for _, name := range regexp.MustCompile(`\btether_[a-z0-9_]*[a-z0-9]\b`).FindAllString(doc, -1) {
		if _, ok := metrics[name]; !ok {
			t.Errorf("docs/observability.md names %s, which the code does not define", name)
		}
	}
}
