//go:build linux

package mesh

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/internal/cli"
)

// TestSuggestEnforce: under the allow-mesh default, web calls api and db,
// and api calls db; a real tether-discovery keeps what the sidecars
// report. `tether policy suggest` (the CLI, in process) reads discovery's
// table from its admin port and proposes policies; written into the
// mesh.yaml, enforcing, the same calls pass with no denial at any end,
// while batch, which never called api, is refused.
func TestSuggestEnforce(t *testing.T) {
	needMesh(t)
	ca := startCA(t)
	apiApp, dbApp := startApp(t, "api"), startApp(t, "db")
	services := []svc{
		{name: "api", sa: "api", ip: "10.96.0.41", port: 8080, app: apiApp.addr, endpoint: loopback(t)},
		{name: "db", sa: "db", ip: "10.96.0.42", port: 5432, app: dbApp.addr, endpoint: loopback(t)},
	}
	open := strings.Replace(meshYAML(services...), "defaultPolicy: deny", "defaultPolicy: allow-mesh", 1)
	d := startDiscovery(t, ca, open)
	fast := []string{"--flow-report-interval", "1s"}
	apiSC := startSidecar(t, ca, d, sidecarSpec{sa: "api", inbound: services[0].endpoint, app: apiApp.addr, outbound: []string{"default/db:5432"}, extra: fast})
	dbSC := startSidecar(t, ca, d, sidecarSpec{sa: "db", inbound: services[1].endpoint, app: dbApp.addr, extra: fast})
	web := startSidecar(t, ca, d, sidecarSpec{sa: "web", outbound: []string{"default/api:8080", "default/db:5432"}, extra: fast})
	batch := startSidecar(t, ca, d, sidecarSpec{sa: "batch", outbound: []string{"default/api:8080"}, extra: fast})
	traffic := func() error {
		for _, c := range []struct{ addr, app string }{{web.outbound[0], "api"}, {web.outbound[1], "db"}, {apiSC.outbound[0], "db"}} {
			if err := call(c.addr, c.app); err != nil {
				return fmt.Errorf("%s: %w", c.app, err)
			}
		}
		return nil
	}
	eventually(t, "the calls pass under allow-mesh", 30*time.Second, traffic)

	suggest := func(args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		code := (&cli.App{Stdout: &out, Stderr: &errOut}).Main(context.Background(),
			append([]string{"policy", "suggest", "-n", "default", "--mesh", d.file, "--discovery-admin", "http://" + d.admin}, args...))
		return out.String(), errOut.String(), code
	}
	var out string
	// Each sidecar reports every second: until all three have, the table
	// (and so the suggestion) lacks some calls.
	eventually(t, "suggestions for api (web) and db (web, api)", 20*time.Second, func() error {
		o, errOut, code := suggest()
		if code != 0 {
			return fmt.Errorf("exit %d: %s", code, errOut)
		}
		for _, want := range []string{"#   default/web -> api:8080: allow", "#   default/web -> db:5432: allow", "#   default/api -> db:5432: allow"} {
			if !strings.Contains(o, want) {
				return fmt.Errorf("no %q in:\n%s", want, o)
			}
		}
		out = o
		return nil
	})
	t.Logf("tether policy suggest -n default:\n%s", out)
	if strings.Contains(out, "name: batch") {
		t.Fatalf("batch, which called nothing, is suggested:\n%s", out)
	}

	// Enforce them: the suggestions go into the mesh.yaml's policies.
	var b strings.Builder
	b.WriteString(open)
	for _, doc := range strings.Split(out, "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		if obj == nil {
			continue
		}
		j, _ := json.Marshal(obj)
		fmt.Fprintf(&b, "  - %s\n", j)
	}
	sidecars := []*sidecarProc{web, apiSC, dbSC, batch}
	updates := make([]float64, len(sidecars))
	for i, s := range sidecars {
		updates[i] = metric(s.metrics(t), "tether_sidecar_xds_updates_total")
	}
	d.write(t, b.String())
	// A call made before the policies reach the sidecars would pass, and
	// be observed: wait until every sidecar took an update, and a moment
	// for the rest of the push.
	eventually(t, "every sidecar updated", 20*time.Second, func() error {
		for i, s := range sidecars {
			if n := metric(s.metrics(t), "tether_sidecar_xds_updates_total"); n <= updates[i] {
				return fmt.Errorf("%s: %v updates, as before the new mesh.yaml", s.name, n)
			}
		}
		return nil
	})
	time.Sleep(time.Second)
	if err := refused(batch.outbound[0]); err != nil {
		t.Errorf("batch -> api, never observed, under the suggested policies: %v", err)
	}

	denials := func() (n float64) {
		for _, s := range []*sidecarProc{web, apiSC, dbSC} {
			n += metric(s.metrics(t), "tether_sidecar_authz_denials_total")
		}
		return n
	}
	before := denials()
	for range 3 {
		if err := traffic(); err != nil {
			t.Errorf("the same calls under the suggested policies: %v", err)
		}
	}
	if after := denials(); after != before {
		t.Errorf("the sidecars of web, api and db denied %v connection(s) during the replay", after-before)
	}
	if n := metric(batch.metrics(t), "tether_sidecar_authz_denials_total"); n < 1 {
		t.Errorf("batch's sidecar counted %v denials, want its refused call", n)
	}
	// The observed graph: batch's refused call and the chain's allowed ones.
	eventually(t, "graph --observed shows batch -> api denied", 20*time.Second, func() error {
		var out, errOut bytes.Buffer
		code := (&cli.App{Stdout: &out, Stderr: &errOut}).Main(context.Background(),
			[]string{"policy", "graph", "--observed", "-n", "default", "-o", "json", "--mesh", d.file, "--discovery-admin", "http://" + d.admin})
		var g struct {
			Edges []struct {
				Source, Destination, Decision string
				PolicyAllows                  bool
			} `json:"edges"`
		}
		if err := json.Unmarshal(out.Bytes(), &g); err != nil || code != 0 {
			return fmt.Errorf("exit %d: %v %s", code, err, errOut.String())
		}
		seen := map[string]bool{}
		for _, e := range g.Edges {
			seen[fmt.Sprintf("%s %s %s %v", e.Source, e.Destination, e.Decision, e.PolicyAllows)] = true
		}
		for _, want := range []string{workloadID("default", "batch").String() + " default/api deny false", workloadID("default", "web").String() + " default/api allow true"} {
			if !seen[want] {
				return fmt.Errorf("no edge %q in %v", want, seen)
			}
		}
		return nil
	})
	// --diff against the mesh.yaml, which now holds them: nothing added.
	diff, errOut, code := suggest("--diff")
	if code != 0 || !strings.Contains(diff, "\n0 added, 0 removed, in 2 Service(s)") {
		t.Errorf("--diff once applied: exit %d (%s):\n%s", code, errOut, diff)
	}
}
