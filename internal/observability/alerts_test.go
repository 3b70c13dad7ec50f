package observability_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/internal/observability"
)

// TestAlertRulesUseDefinedMetrics parses the Prometheus alerting rules
// and checks every expression against the metrics the code defines, that
// every rule says what to do, that docs/observability.md describes each
// alert, and that the alerts an operator needs are there.
func TestAlertRulesUseDefinedMetrics(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "manifests", "observability", "prometheus-rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(b, &file); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "observability.md"))
	if err != nil {
		t.Fatal(err)
	}
	metrics := catalog(t)
	exprs := map[string]string{}
	for _, g := range file.Groups {
		if g.Name == "" {
			t.Error("a rule group without a name")
		}
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.For == "" {
				t.Errorf("group %s: rule %q needs alert, expr and for", g.Name, r.Alert)
			}
			if _, dup := exprs[r.Alert]; dup {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			exprs[r.Alert] = r.Expr
			for _, err := range observability.Check(r.Expr, metrics) {
				t.Errorf("alert %s: %v", r.Alert, err)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("alert %s: severity %q, want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: needs a summary and a description", r.Alert)
			}
			if !strings.Contains(string(doc), "`"+r.Alert+"`") {
				t.Errorf("docs/observability.md does not describe alert %s", r.Alert)
			}
		}
	}
	dash, err := os.ReadFile(filepath.Join(repoRoot(t), "manifests", "observability", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dash), `"expr": "max(tether_ca_intermediate_renewal_overdue)"`) {
		t.Error("the dashboard does not show tether_ca_intermediate_renewal_overdue")
	}
	for alert, metric := range map[string]string{
		"TetherCAIntermediateRenewalOverdue": "tether_ca_intermediate_renewal_overdue",
		"TetherCAIntermediateExpiringSoon":   "tether_ca_intermediate_expiry_timestamp_seconds",
	} {
		refs, _ := observability.ParseExpr(exprs[alert])
		found := false
		for _, s := range refs.Selectors {
			found = found || s.Metric == metric
		}
		if !found {
			t.Errorf("no alert %s on %s", alert, metric)
		}
	}
}

// TestAlertRulesFire runs the rules through promtool (the stock Prometheus
// tool: `promtool check rules`, then `promtool test rules` on series where
// the intermediate's renewal becomes overdue and its end nears): each alert
// fires when it should, not before. Skipped without promtool (Debian
// package prometheus; `make deps` installs it).
func TestAlertRulesFire(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (apt-get install prometheus, or make deps)")
	}
	rules := filepath.Join(repoRoot(t), "manifests", "observability", "prometheus-rules.yaml")
	if out, err := exec.Command(promtool, "check", "rules", rules).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	// Overdue from 2m (for 15m: fires from 17m). The intermediate ends at
	// 90000s (25h) of the test's clock: less than a day left from 60m, so
	// (for 5m) the second alert fires from 65m; at 70m 85800s are left.
	tests := `rule_files:
  - ` + rules + `
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'tether_ca_intermediate_renewal_overdue{instance="ca-0"}'
        values: '0 0 1x80'
      - series: 'tether_ca_intermediate_expiry_timestamp_seconds{generation="1",state="active",instance="ca-0"}'
        values: '90000x80'
    alert_rule_test:
      - eval_time: 10m
        alertname: TetherCAIntermediateRenewalOverdue
        exp_alerts: []
      - eval_time: 20m
        alertname: TetherCAIntermediateRenewalOverdue
        exp_alerts:
          - exp_labels: {severity: warning, instance: ca-0}
            exp_annotations:
              summary: tether-ca has not renewed its signing intermediate on time
              description: "ca-0: the signing intermediate is past its renewal time (1/3 of its life left) and has not been renewed. Every SVID is cut short to the intermediate's end, and once it ends the CA issues nothing. ` + "`tether ca status`" + ` says since when; the CA's log says why (in upstream mode, usually a denied or failed cert-manager CertificateRequest). ` + "`tether ca rotate renew-intermediate`" + ` tries now."
      - eval_time: 62m
        alertname: TetherCAIntermediateExpiringSoon
        exp_alerts: []
      - eval_time: 70m
        alertname: TetherCAIntermediateExpiringSoon
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations:
              summary: tether-ca's signing intermediate ends within a day
              description: "The active signing intermediate ends in 23h 50m 0s. Every SVID is cut short to its end, and after it the mesh's identities expire. Renew it (` + "`tether ca rotate renew-intermediate`" + `), or, if it ends with its root, rotate the root (` + "`tether ca rotate prepare`" + `, then ` + "`activate`" + `)."
`
	// Root rotation: 3 sidecars report (one silent); the prepared root is
	// trusted by 2 from 5m on, then by all 3 from 50m: the alert fires
	// from 35m (30m after 5m) and stops once all trust it.
	tests += `  - interval: 1m
    input_series:
      - series: 'tether_ca_sidecars{status="reporting",instance="ca-0"}'
        values: '2x80'
      - series: 'tether_ca_sidecars{status="silent",instance="ca-0"}'
        values: '1x80'
      - series: 'tether_ca_sidecars_trusting{generation="2",state="prepared",instance="ca-0"}'
        values: '_x4 2x45 3x30'
    alert_rule_test:
      - eval_time: 30m
        alertname: TetherCARotationWaitingForSidecars
        exp_alerts: []
      - eval_time: 40m
        alertname: TetherCARotationWaitingForSidecars
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              summary: a prepared root has not reached every sidecar for 30 minutes
              description: "Only 2 reporting sidecars trust the prepared root. Root rotation (manual or scheduled) does not activate it until every reporting sidecar does. ` + "`tether ca rotate status`" + ` names the laggards (SPIFFE ID, pod, version, last report); a laggard is usually cut off from tether-ca (network, or its pod is stuck). A sidecar whose pod is gone is forgotten when its SVID expires."
      - eval_time: 60m
        alertname: TetherCARotationWaitingForSidecars
        exp_alerts: []
`
	path := filepath.Join(t.TempDir(), "rules_test.yaml")
	if err := os.WriteFile(path, []byte(tests), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "test", "rules", path).CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}
