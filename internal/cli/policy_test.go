package cli_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const testMesh = `
trustDomain: cluster.local
namespaces:
  - name: payments
    defaultPolicy: same-namespace
services:
  - name: web
    ports: [{name: http, port: 80, targetPort: 8080}]
    endpoints: [{address: 127.0.0.1, serviceAccount: web}]
  - name: api
    ports: [{name: http, port: 8080}, {name: admin, port: 9090}]
    endpoints: [{address: 127.0.0.2, serviceAccount: api}]
  - name: ledger
    namespace: payments
    ports: [{port: 5432}]
    endpoints: [{address: 127.0.0.3, serviceAccount: ledger}]
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: api-from-web, namespace: default}
    spec:
      destination: {service: api, ports: [8080]}
      sources:
        - serviceAccount: {name: web}
        - spiffeID: spiffe://cluster.local/batch/report
`

func meshFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPolicyCheck(t *testing.T) {
	mesh := meshFile(t, testMesh)
	for _, c := range []struct {
		name     string
		args     []string
		code     int
		stdout   []string // lines, in order
		stderrIn string
	}{
		{"allowed by policy", []string{"--from", "default/web", "--to", "default/api:8080"}, 0,
			[]string{"allowed default/web -> default/api:8080: AccessPolicy default/api-from-web"}, ""},
		{"port by name", []string{"--from", "default/web", "--to", "default/api:http"}, 0,
			[]string{"allowed default/web -> default/api:8080: AccessPolicy default/api-from-web"}, ""},
		{"spiffe id source", []string{"--from", "spiffe://cluster.local/batch/report", "--to", "default/api:8080"}, 0,
			[]string{"allowed spiffe://cluster.local/batch/report -> default/api:8080: AccessPolicy default/api-from-web"}, ""},
		{"denied by policy", []string{"--from", "default/api", "--to", "default/api:8080"}, 1,
			[]string{"denied default/api -> default/api:8080: no AccessPolicy allows spiffe://cluster.local/ns/default/sa/api to default/api:8080"}, "tether: denied"},
		{"every port", []string{"--from", "default/web", "--to", "default/api"}, 1,
			[]string{"allowed default/web -> default/api:8080: AccessPolicy default/api-from-web",
				"denied default/web -> default/api:9090: no AccessPolicy allows spiffe://cluster.local/ns/default/sa/web to default/api:9090"}, "on 1 of 2 port(s)"},
		{"mesh default", []string{"--from", "payments/ledger", "--to", "default/web"}, 0,
			[]string{"allowed payments/ledger -> default/web:80: mesh default allow-mesh"}, ""},
		{"mesh default flag", []string{"--from", "payments/ledger", "--to", "default/web", "--default-policy", "deny"}, 1,
			[]string{"denied payments/ledger -> default/web:80: mesh default deny"}, ""},
		{"mesh default in audit mode", []string{"--from", "payments/ledger", "--to", "default/web", "--default-policy", "deny", "--default-policy-mode", "audit"}, 0,
			[]string{"allowed payments/ledger -> default/web:80: allow-mesh (the mesh default deny is in audit mode)"}, ""},
		{"namespace default denies", []string{"--from", "default/web", "--to", "payments/ledger:5432"}, 1,
			[]string{"denied default/web -> payments/ledger:5432: namespace default same-namespace (annotation tether.dev/default-policy on payments)"}, ""},
		{"namespace default allows", []string{"--from", "payments/batch", "--to", "payments/ledger"}, 0,
			[]string{"allowed payments/batch -> payments/ledger:5432: namespace default same-namespace (annotation tether.dev/default-policy on payments)"}, ""},
		{"trust domain flag overrides the file", []string{"--from", "spiffe://cluster.local/ns/default/sa/web", "--to", "default/web", "--trust-domain", "other.org"}, 1,
			[]string{"denied spiffe://cluster.local/ns/default/sa/web -> default/web:80: source spiffe://cluster.local/ns/default/sa/web is outside trust domain other.org, " +
				"and no AccessPolicy names default/web: its default (mesh default allow-mesh) never admits a caller of another trust domain; an AccessPolicy source with its spiffeID or trustDomain does"}, ""},
		{"unknown service with port", []string{"--from", "default/web", "--to", "default/cache:6379"}, 1,
			nil, "service default/cache does not exist in " + mesh + "; services in namespace default: api, web"},
		{"unknown service without port", []string{"--from", "default/web", "--to", "default/cache"}, 1,
			nil, "service default/cache does not exist in"},
		{"unknown namespace", []string{"--from", "default/web", "--to", "shop/api"}, 1,
			nil, "service shop/api does not exist in " + mesh + "; there is no namespace shop"},
		{"unknown port", []string{"--from", "default/web", "--to", "default/api:7"}, 1,
			nil, `has no port "7"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := run(t, append([]string{"policy", "check", "--mesh", mesh}, c.args...)...)
			if code != c.code {
				t.Errorf("exit %d, want %d; stderr %s", code, c.code, errOut)
			}
			want := ""
			if c.stdout != nil {
				want = strings.Join(c.stdout, "\n") + "\n"
			}
			if out != want {
				t.Errorf("stdout\n%s\nwant\n%s", out, want)
			}
			if !strings.Contains(errOut, c.stderrIn) {
				t.Errorf("stderr %q does not contain %q", errOut, c.stderrIn)
			}
		})
	}
}

func TestPolicyErrors(t *testing.T) {
	mesh := meshFile(t, testMesh)
	bad := meshFile(t, strings.Replace(testMesh, "sources:", "sourcez:", 1))
	invalid := meshFile(t, strings.Replace(testMesh, "{name: web}", "{name: Web!}", 1))
	missing := filepath.Join(t.TempDir(), "none.yaml")
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no from", []string{"policy", "check", "--mesh", mesh, "--to", "a/c"}, 2, `required flag(s) "from" not set`},
		{"bad to", []string{"policy", "check", "--mesh", mesh, "--from", "a/b", "--to", "api"}, 2, "want NAMESPACE/SERVICE[:PORT]"},
		{"empty port", []string{"policy", "check", "--mesh", mesh, "--from", "a/b", "--to", "a/c:"}, 2, "empty port"},
		{"bad from", []string{"policy", "check", "--mesh", mesh, "--from", "web", "--to", "a/c"}, 2, "want NAMESPACE/SERVICEACCOUNT"},
		{"unknown flag", []string{"policy", "check", "--nope"}, 2, "unknown flag: --nope"},
		{"positional", []string{"policy", "graph", "--mesh", mesh, "extra"}, 2, `tether policy graph takes no arguments, got ["extra"]`},
		{"bad default", []string{"policy", "graph", "--mesh", mesh, "--default-policy", "open"}, 2, `unknown default policy "open"`},
		{"bad trust domain", []string{"policy", "graph", "--mesh", mesh, "--trust-domain", "Not A Domain"}, 2, "--trust-domain"},
		{"bad default mode", []string{"policy", "graph", "--mesh", mesh, "--default-policy-mode", "Audit"}, 2, `--default-policy-mode: unknown policy mode "Audit": use enforce or audit`},
		{"mesh and kubeconfig", []string{"policy", "check", "--mesh", mesh, "--kubeconfig", "kc", "--from", "a/b", "--to", "a/c"}, 2, "give one or the other"},
		{"mesh and context", []string{"policy", "graph", "--mesh", mesh, "--context", "prod"}, 2, "give one or the other"},
		{"bad timeout", []string{"policy", "graph", "--mesh", mesh, "--timeout", "0s"}, 2, "--timeout must be positive"},
		{"missing kubeconfig", []string{"policy", "check", "--kubeconfig", missing, "--from", "a/b", "--to", "a/c"}, 1, "kubeconfig: stat " + missing},
		{"bad from before reading", []string{"policy", "check", "--kubeconfig", missing, "--from", "a/b/c", "--to", "a/c"}, 2, `--from "a/b/c"`},
		{"bad spiffe id", []string{"policy", "check", "--mesh", mesh, "--from", "spiffe://Not A Domain/x", "--to", "a/c"}, 2, `--from "spiffe://Not A Domain/x"`},
		{"bad source segment", []string{"policy", "check", "--mesh", mesh, "--from", "default/we b", "--to", "a/c"}, 2, "--from: identity of default/we b"},
		{"graph unknown namespace", []string{"policy", "graph", "--mesh", mesh, "--namespace", "shop"}, 1, "namespace shop does not exist in " + mesh},
		{"missing file", []string{"policy", "graph", "--mesh", missing}, 1, "no such file"},
		{"bad file", []string{"policy", "check", "--mesh", bad, "--from", "a/b", "--to", "a/c:1"}, 1, `line 23: unknown field "sourcez"`},
		{"invalid policy", []string{"policy", "graph", "--mesh", invalid}, 1, `AccessPolicy default/api-from-web: spec.sources[0].serviceAccount.name: "Web!" is not a valid service account name`},
		{"unknown subcommand", []string{"policy", "show"}, 2, `unknown command "show" for "tether policy" (its commands: check, graph`},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := run(t, c.args...)
			if code != c.code || !strings.Contains(errOut, c.want) {
				t.Errorf("exit %d (want %d), stderr %q, want it to contain %q", code, c.code, errOut, c.want)
			}
			if out != "" {
				t.Errorf("stdout %q", out)
			}
		})
	}
	out, errOut, code := run(t, "policy", "check", "-h")
	if code != 0 || errOut != "" || !strings.Contains(out, "Exit status: 0 allowed") || !strings.Contains(out, "      --from string") {
		t.Errorf("help: exit %d, stdout %s, stderr %q", code, out, errOut)
	}
}

func TestPolicyGraphTable(t *testing.T) {
	out, errOut, code := run(t, "policy", "graph", "--mesh", meshFile(t, testMesh))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	rows := tableRows(t, out)
	for _, want := range []string{
		"default/web default/api 8080 AccessPolicy default/api-from-web",
		"spiffe://cluster.local/batch/report default/api 8080 AccessPolicy default/api-from-web",
		"default/api default/web 80 mesh default allow-mesh",
		"payments/ledger payments/ledger 5432 namespace default same-namespace (annotation tether.dev/default-policy on payments)",
	} {
		if !rows[want] {
			t.Errorf("missing row %q in\n%s", want, out)
		}
	}
	for _, notWant := range []string{"default/api default/api", "default/web payments/ledger"} {
		for r := range rows {
			if strings.HasPrefix(r, notWant+" ") {
				t.Errorf("denied pair listed: %q", r)
			}
		}
	}
	// sources: web, api, ledger endpoints + batch/report from the policy;
	// 4 reach web, 2 reach api:8080, 1 reaches ledger.
	if len(rows) != 7 {
		t.Errorf("%d rows:\n%s", len(rows), out)
	}
}

func TestPolicyGraphDOT(t *testing.T) {
	out, errOut, code := run(t, "policy", "graph", "--mesh", meshFile(t, testMesh), "--dot")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	edges := dotEdges(t, out)
	if len(edges) != 7 {
		t.Errorf("%d edges:\n%s", len(edges), out)
	}
	for _, want := range []string{
		`	"default/web" -> "default/api" [label="8080", tooltip="AccessPolicy default/api-from-web"];`,
		`	"spiffe://cluster.local/batch/report" -> "default/api" [label="8080", tooltip="AccessPolicy default/api-from-web"];`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("missing edge %s in\n%s", want, out)
		}
	}
}

// tableRows checks the header of a `policy graph` table and returns its
// rows, each with its columns joined by one space.
func tableRows(t *testing.T, out string) map[string]bool {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if f := strings.Fields(lines[0]); strings.Join(f, " ") != "SOURCE DESTINATION PORTS RULE" {
		t.Errorf("header %q", lines[0])
	}
	rows := make(map[string]bool)
	for _, l := range lines[1:] {
		rows[strings.Join(strings.Fields(l), " ")] = true
	}
	return rows
}

// dotEdges checks that out is one Graphviz digraph of node and edge lines,
// each edge after the declarations of its nodes, and returns the edges.
func dotEdges(t *testing.T, out string) []string {
	t.Helper()
	if !strings.HasPrefix(out, "digraph mesh {\n") || !strings.HasSuffix(out, "}\n") || strings.Count(out, "{") != 1 || strings.Count(out, "}") != 1 {
		t.Fatalf("not one digraph block:\n%s", out)
	}
	body := strings.Split(strings.TrimSuffix(strings.TrimPrefix(out, "digraph mesh {\n"), "}\n"), "\n")
	quoted := `"(?:[^"\\]|\\.)*"`
	nodeRE := regexp.MustCompile(`^\t(` + quoted + `) \[shape=(box|ellipse)\];$`)
	edgeRE := regexp.MustCompile(`^\t(` + quoted + `) -> (` + quoted + `) \[label="[0-9]+(,[0-9]+)*", tooltip=` + quoted + `\];$`)
	nodes := make(map[string]bool)
	var edges []string
	for _, l := range body {
		switch {
		case l == "" || l == "\trankdir=LR;":
		case nodeRE.MatchString(l):
			nodes[nodeRE.FindStringSubmatch(l)[1]] = true
		case edgeRE.MatchString(l):
			m := edgeRE.FindStringSubmatch(l)
			if !nodes[m[1]] || !nodes[m[2]] {
				t.Errorf("edge before its nodes are declared: %q", l)
			}
			edges = append(edges, l)
		default:
			t.Errorf("line is neither node nor edge: %q", l)
		}
	}
	return edges
}

func TestPolicyMeshJSONAndNamespace(t *testing.T) {
	mesh := meshFile(t, testMesh)
	out, errOut, code := run(t, "policy", "check", "--mesh", mesh, "--from", "default/web", "--to", "default/api", "--json")
	want := `{
  "source": "spiffe://cluster.local/ns/default/sa/web",
  "destination": "default/api",
  "allowed": false,
  "ports": [
    {
      "port": 8080,
      "port_name": "http",
      "allowed": true,
      "rule": "AccessPolicy default/api-from-web"
    },
    {
      "port": 9090,
      "port_name": "admin",
      "allowed": false,
      "rule": "no AccessPolicy allows spiffe://cluster.local/ns/default/sa/web to default/api:9090"
    }
  ]
}
`
	if code != 1 || out != want || !strings.Contains(errOut, "tether: denied") {
		t.Errorf("--json: exit %d, stdout\n%s\nwant\n%s\nstderr %q", code, out, want, errOut)
	}

	out, errOut, code = run(t, "policy", "graph", "--mesh", mesh, "--namespace", "payments")
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	rows := tableRows(t, out)
	for _, want := range []string{
		"payments/ledger default/web 80 mesh default allow-mesh",
		"payments/ledger payments/ledger 5432 namespace default same-namespace (annotation tether.dev/default-policy on payments)",
	} {
		if !rows[want] {
			t.Errorf("missing row %q in\n%s", want, out)
		}
	}
	if len(rows) != 2 {
		t.Errorf("%d rows, want 2:\n%s", len(rows), out)
	}
}
