package cli_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/flows"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// These tests give the CLI tables crafted to hold each case (both ends of
// a call, an end that refused it, other trust domains, pod ports, full
// tables, malformed edges, hundreds of callers): an httptest server
// answers GET /debug/flows with them, as tether-discovery does. The table
// of a real tether-discovery fed by real sidecars is read in
// test/mesh (TestSuggestEnforce) and on the real node (test/cluster,
// stage suggest).

// tableTime is the time of the tables the tests serve.
var tableTime = time.Date(2026, 12, 5, 21, 0, 0, 0, time.UTC)

// edge is an Edge of the test tables: src and dst are shortened as
// "ns/sa" (a workload ID of cluster.local) and "ns/service:port".
func edge(src, dst string, d flows.Decision, side flows.Side, n uint64, ago time.Duration, rule string) flows.Edge {
	if !strings.HasPrefix(src, "spiffe://") {
		ns, sa, _ := strings.Cut(src, "/")
		src = "spiffe://cluster.local/ns/" + ns + "/sa/" + sa
	}
	i := strings.LastIndex(dst, ":")
	name, port := dst[:i], dst[i+1:]
	ns, svc, _ := strings.Cut(name, "/")
	var p uint16
	fmt.Sscan(port, &p)
	e := flows.Edge{Key: flows.Key{Source: src, Namespace: ns, Service: svc, Port: p, Decision: d, Rule: rule, Side: side},
		Connections: n, FirstSeen: tableTime.Add(-ago - time.Minute), LastSeen: tableTime.Add(-ago)}
	if strings.HasPrefix(svc, "spiffe://") || strings.HasPrefix(svc, "pod=") {
		e.Service, e.Workload = "", strings.TrimPrefix(svc, "pod=")
	}
	return e
}

// serveTables serves each table on its own discovery stand-in and returns
// their URLs.
func serveTables(t *testing.T, tables ...any) []string {
	t.Helper()
	var urls []string
	for _, tb := range tables {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/debug/flows" {
				http.NotFound(w, r)
				return
			}
			if code, ok := tb.(int); ok {
				http.Error(w, "replica broken", code)
				return
			}
			json.NewEncoder(w).Encode(tb)
		}))
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	return urls
}

const suggestMesh = `
trustDomain: cluster.local
namespaces:
  - name: shop
  - name: other
services:
  - {name: web, namespace: shop, ports: [{port: 80}], endpoints: [{address: 127.0.0.1, serviceAccount: web}]}
  - {name: api, namespace: shop, ports: [{port: 8080}, {port: 9090}], endpoints: [{address: 127.0.0.2, serviceAccount: api}]}
  - {name: db, namespace: shop, ports: [{port: 5432}], endpoints: [{address: 127.0.0.3, serviceAccount: db}]}
  - {name: cache, namespace: shop, ports: [{port: 6379}], endpoints: [{address: 127.0.0.4, serviceAccount: cache}]}
  - {name: x, namespace: other, ports: [{port: 80}], endpoints: [{address: 127.0.0.5, serviceAccount: x}]}
`

const (
	byDefault = "mesh default allow-mesh"
	batchID   = "spiffe://cluster.local/vm/batch"
)

// shopTable is what the sidecars of suggestMesh reported.
func shopTable() flows.Table {
	return flows.Table{Time: tableTime, Replica: "discovery-0", MaxEdges: 1000, Edges: []flows.Edge{
		// web -> api:8080, seen by both ends.
		edge("shop/web", "shop/api:8080", flows.Allow, flows.Caller, 10, time.Minute, ""), // a caller may log no rule
		edge("shop/web", "shop/api:8080", flows.Allow, flows.Destination, 9, time.Minute, byDefault),
		// api -> db:5432.
		edge("shop/api", "shop/db:5432", flows.Allow, flows.Destination, 4, 2*time.Minute, byDefault),
		// A VM's job on api's other port, audit-denied.
		edge(batchID, "shop/api:9090", flows.AuditDeny, flows.Destination, 2, 5*time.Minute, "would-be: AccessPolicy shop/strict"),
		// web -> db refused by web's own sidecar.
		edge("shop/web", "shop/db:5432", flows.Deny, flows.Caller, 3, time.Minute, "AccessPolicy shop/db-only-api"),
		// scanner -> db: its sidecar let it out, db's refused it.
		edge("shop/scanner", "shop/db:5432", flows.Allow, flows.Caller, 1, time.Minute, byDefault),
		edge("shop/scanner", "shop/db:5432", flows.Deny, flows.Destination, 1, time.Minute, "namespace default deny"),
		// A caller of another trust domain.
		edge("spiffe://evil.example/ns/shop/sa/web", "shop/api:8080", flows.Allow, flows.Destination, 1, time.Minute, byDefault),
		// Straight to db's pod on a port no Service covers.
		edge("shop/web", "shop/pod=spiffe://cluster.local/ns/shop/sa/db:15000", flows.Allow, flows.Destination, 1, time.Minute, byDefault),
		// An old call, three hours ago.
		edge("shop/ops", "shop/api:8080", flows.Allow, flows.Destination, 7, 3*time.Hour, byDefault),
		// Another namespace.
		edge("shop/web", "other/x:80", flows.Allow, flows.Destination, 5, time.Minute, byDefault),
	}}
}

// docs splits multi-document YAML into its policies; comments and empty
// documents are skipped.
func docs(t *testing.T, out string) []policy.AccessPolicy {
	t.Helper()
	var ps []policy.AccessPolicy
	for _, doc := range strings.Split(out, "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("document %q: %v", doc, err)
		}
		if obj == nil {
			continue
		}
		var p policy.AccessPolicy
		if err := yaml.UnmarshalStrict([]byte(doc), &p); err != nil {
			t.Fatalf("document is not an AccessPolicy: %v\n%s", err, doc)
		}
		if p.APIVersion != "tether.dev/v1alpha1" || p.Kind != "AccessPolicy" {
			t.Errorf("document of kind %s %s:\n%s", p.APIVersion, p.Kind, doc)
		}
		ps = append(ps, p)
	}
	return ps
}

// decider answers, from mesh with the policies added, whether src may
// reach ns/svc:port.
func decider(t *testing.T, mesh string, ps []policy.AccessPolicy) func(src, dst string) bool {
	d := decision(t, mesh, ps)
	return func(src, dst string) bool { return d(src, dst).Allowed }
}

// decision is decider's whole decision.
func decision(t *testing.T, mesh string, ps []policy.AccessPolicy) func(src, dst string) policy.Decision {
	t.Helper()
	mf, err := discovery.LoadMeshFile(meshFile(t, mesh))
	if err != nil {
		t.Fatal(err)
	}
	reg, err := discovery.NewRegistry(mf.TrustDomain, policy.AllowMesh)
	if err != nil {
		t.Fatal(err)
	}
	mf.State.Policies = append(mf.State.Policies, ps...)
	if err := reg.Update(mf.State); err != nil {
		t.Fatal(err)
	}
	snap := reg.Snapshot()
	return func(src, dst string) policy.Decision {
		if !strings.HasPrefix(src, "spiffe://") {
			ns, sa, _ := strings.Cut(src, "/")
			src = "spiffe://cluster.local/ns/" + ns + "/sa/" + sa
		}
		name, port, _ := strings.Cut(dst, ":")
		ns, svc, _ := strings.Cut(name, "/")
		var p uint16
		fmt.Sscan(port, &p)
		return snap.Engine().Decide(spiffeid.RequireFromString(src), ns, svc, p)
	}
}

func TestPolicySuggest(t *testing.T) {
	mesh := meshFile(t, suggestMesh)
	urls := serveTables(t, shopTable())
	out, errOut, code := run(t, "policy", "suggest", "-n", "shop", "--mesh", mesh, "--discovery-admin", urls[0])
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	t.Logf("output:\n%s", out)
	ps := docs(t, out)
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
		if err := p.Validate(); err != nil {
			t.Errorf("policy %s: %v", p.Name, err)
		}
		if p.Namespace != "shop" || p.Labels["tether.dev/suggested"] != "true" {
			t.Errorf("policy %s: namespace %q, labels %v", p.Name, p.Namespace, p.Labels)
		}
	}
	// api's callers used different ports: one policy per port set.
	if want := []string{"tether-suggested-api-8080", "tether-suggested-api-9090", "tether-suggested-db"}; !slices.Equal(names, want) {
		t.Fatalf("policies %v, want %v", names, want)
	}
	want := []policy.AccessPolicySpec{
		{Destination: policy.Destination{Service: "api", Ports: []int32{8080}}, Sources: []policy.Source{
			{ServiceAccount: &policy.ServiceAccountSource{Name: "ops", Namespace: "shop"}},
			{ServiceAccount: &policy.ServiceAccountSource{Name: "web", Namespace: "shop"}}}, Mode: policy.Enforce},
		{Destination: policy.Destination{Service: "api", Ports: []int32{9090}}, Sources: []policy.Source{{SpiffeID: batchID}}, Mode: policy.Enforce},
		{Destination: policy.Destination{Service: "db", Ports: []int32{5432}}, Sources: []policy.Source{
			{ServiceAccount: &policy.ServiceAccountSource{Name: "api", Namespace: "shop"}}}, Mode: policy.Enforce},
	}
	for i, p := range ps {
		got, _ := json.Marshal(p.Spec)
		w, _ := json.Marshal(want[i])
		if !bytes.Equal(got, w) {
			t.Errorf("policy %s:\n got %s\nwant %s", p.Name, got, w)
		}
	}
	for _, s := range []string{
		"shop/web -> shop/db:5432: denied while enforced (deny, 3 connection(s)",
		"shop/scanner -> shop/db:5432: denied while enforced",
		"spiffe://evil.example/ns/shop/sa/web -> shop/api:8080: the caller is outside trust domain cluster.local",
		"shop/web -> pod of shop/db:15000: a call straight to a pod's port that no Service covers",
		"shop/cache (decided now by mesh default allow-mesh)",
		"shop/web (decided now by mesh default allow-mesh)",
		"shop/web -> api:8080: allow, 10 connection(s), last seen 2026-12-05T20:59:00Z",
		"spiffe://cluster.local/vm/batch -> api:9090: audit-deny, 2 connection(s)",
	} {
		if !strings.Contains(out, "#   "+s) {
			t.Errorf("the output does not say, in a comment, %q", s)
		}
	}
	if strings.Contains(out, "other/") || strings.Contains(out, "x:80") {
		t.Errorf("the output names namespace other, which -n shop leaves out")
	}

	// The suggestions allow exactly the calls observed: with them in
	// force, every caller and port of the namespace's Services that was
	// not observed passing is denied.
	allowed := decider(t, suggestMesh, ps)
	passed := []string{"shop/web>shop/api:8080", "shop/ops>shop/api:8080", batchID + ">shop/api:9090", "shop/api>shop/db:5432"}
	for _, src := range []string{"shop/web", "shop/api", "shop/db", "shop/ops", "shop/scanner", "shop/cache", "other/x", batchID} {
		for _, dst := range []string{"shop/api:8080", "shop/api:9090", "shop/db:5432"} {
			if got, want := allowed(src, dst), slices.Contains(passed, src+">"+dst); got != want {
				t.Errorf("with the suggestions in force, %s -> %s allowed=%v, want %v", src, dst, got, want)
			}
		}
	}

	t.Run("mode audit", func(t *testing.T) {
		out, errOut, code := run(t, "policy", "suggest", "-n", "shop", "--mode", "audit", "--mesh", mesh, "--discovery-admin", urls[0])
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		ps := docs(t, out)
		for _, p := range ps {
			if p.Spec.Mode != policy.Audit {
				t.Errorf("policy %s: mode %q, want Audit", p.Name, p.Spec.Mode)
			}
		}
		// Audit policies decide nothing: web -> db stays allowed by the
		// default, and is audit-denied by the would-be decision.
		d := decision(t, suggestMesh, ps)
		if got := d("shop/web", "shop/db:5432"); !got.Allowed || !got.AuditDenied || got.AuditRule == "" {
			t.Errorf("web -> db under the audit suggestions: %+v, want allowed and audit-denied", got)
		}
		if got := d("shop/api", "shop/db:5432"); !got.Allowed || got.AuditDenied {
			t.Errorf("api -> db under the audit suggestions: %+v, want allowed, not audit-denied", got)
		}
		_, errOut, code = run(t, "policy", "suggest", "-n", "shop", "--mode", "Enforce", "--mesh", mesh, "--discovery-admin", urls[0])
		if code != 2 || !strings.Contains(errOut, `--mode: unknown policy mode "Enforce": use enforce or audit`) {
			t.Errorf("--mode Enforce: exit %d, %q", code, errOut)
		}
	})

	t.Run("since", func(t *testing.T) {
		out, _, code := run(t, "policy", "suggest", "-n", "shop", "--since", "1h", "--mesh", mesh, "--discovery-admin", urls[0])
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
		ps := docs(t, out)
		if len(ps) != 3 || len(ps[0].Spec.Sources) != 1 || ps[0].Spec.Sources[0].ServiceAccount.Name != "web" {
			t.Errorf("--since 1h kept the call of three hours ago: %+v", ps[0].Spec.Sources)
		}
		if !strings.Contains(out, "(since 2026-12-05T20:00:00Z, until 2026-12-05T21:00:00Z;") {
			t.Errorf("the header does not give the window:\n%s", out)
		}
		// Nothing within the last 30 seconds.
		_, errOut, code := run(t, "policy", "suggest", "-n", "shop", "--since", "30s", "--mesh", mesh, "--discovery-admin", urls[0])
		if code != 1 || !strings.Contains(errOut, "nothing to suggest: no call into namespace shop that can be allowed was observed since 2026-12-05T20:59:30Z") {
			t.Errorf("exit %d, stderr %q", code, errOut)
		}
	})

	t.Run("diff", func(t *testing.T) {
		inForce := suggestMesh + `
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: api-open, namespace: shop}
    spec:
      destination: {service: api}
      sources: [{namespace: shop}]
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: db-only-api, namespace: shop}
    spec:
      destination: {service: db, ports: [5432]}
      sources: [{serviceAccount: {name: api}}]
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: cache-from-api, namespace: shop}
    spec:
      destination: {service: cache, ports: [6379]}
      sources: [{serviceAccount: {name: api}}]
      mode: Audit
`
		out, errOut, code := run(t, "policy", "suggest", "-n", "shop", "--diff", "--mesh", meshFile(t, inForce), "--discovery-admin", urls[0])
		if code != 0 {
			t.Fatalf("exit %d, stderr %q", code, errOut)
		}
		want := `--- in force: the AccessPolicies of namespace shop
+++ suggested: the calls observed (everything in discovery's table, until 2026-12-05T21:00:00Z)
@@ shop/api @@
- namespace shop all ports  (AccessPolicy shop/api-open)
+ serviceAccount shop/ops port 8080  (AccessPolicy shop/tether-suggested-api-8080)
+ serviceAccount shop/web port 8080  (AccessPolicy shop/tether-suggested-api-8080)
+ spiffeID spiffe://cluster.local/vm/batch port 9090  (AccessPolicy shop/tether-suggested-api-9090)
@@ shop/cache: no call observed; nothing suggested @@
- serviceAccount shop/api port 6379  (AccessPolicy shop/cache-from-api, mode Audit: enforces nothing yet)
@@ shop/db @@
  serviceAccount shop/api port 5432
3 added, 2 removed, in 3 Service(s); 4 observed call(s) not suggested (tether policy suggest without --diff says why)
`
		if out != want {
			t.Errorf("--diff:\n%s\nwant\n%s", out, want)
		}
		// Without policies in force, everything is added.
		out, _, _ = run(t, "policy", "suggest", "-n", "shop", "--diff", "--mesh", mesh, "--discovery-admin", urls[0])
		if !strings.Contains(out, "@@ shop/db: no AccessPolicy; decided now by mesh default allow-mesh @@\n+ serviceAccount shop/api port 5432") {
			t.Errorf("--diff without policies in force:\n%s", out)
		}
	})
}

// TestPolicySuggestRefuses: what cannot be answered fully is an error,
// and nothing goes to stdout for kubectl apply to read.
func TestPolicySuggestRefuses(t *testing.T) {
	mesh := meshFile(t, suggestMesh)
	full := shopTable()
	full.Dropped = 12
	allDenied := flows.Table{Time: tableTime, Edges: []flows.Edge{
		edge("shop/web", "shop/db:5432", flows.Deny, flows.Caller, 3, time.Minute, "AccessPolicy shop/db-only-api"),
		edge("shop/web", "shop/pod=spiffe://cluster.local/ns/shop/sa/db:15000", flows.Allow, flows.Destination, 1, time.Minute, byDefault),
	}}
	badDecision := shopTable()
	badDecision.Edges[0].Decision = "maybe"
	badSource := shopTable()
	badSource.Edges[0].Source = "web"
	urls := serveTables(t, flows.Table{Time: tableTime, Replica: "empty"}, shopTable(), http.StatusInternalServerError, full, allDenied, badDecision, badSource, "not a table")
	empty, good, broken, dropped, denied, badDec, badSrc, garbage := urls[0], urls[1], urls[2], urls[3], urls[4], urls[5], urls[6], urls[7]

	for _, c := range []struct {
		name   string
		args   []string
		code   int
		stderr []string
	}{
		{"no observations", []string{"--discovery-admin", empty}, 1, []string{
			"nothing to suggest: no call into namespace shop that can be allowed was observed in discovery's table (0 edge(s) read from " + empty + ")",
			"is the namespace labelled for the mesh"}},
		{"only denied and pod-port calls", []string{"--discovery-admin", denied}, 1, []string{
			"nothing to suggest", "the calls seen:\n  shop/web -> pod of shop/db:15000: a call straight to a pod's port",
			"shop/web -> shop/db:5432: denied while enforced"}},
		{"a replica that cannot be read", []string{"--discovery-admin", good, "--discovery-admin", broken}, 1, []string{
			"tether-discovery replica " + broken + ": GET /debug/flows: 500 Internal Server Error: replica broken"}},
		{"unknown decision", []string{"--discovery-admin", badDec}, 1, []string{`GET /debug/flows: edge 0: invalid flow report: decision "maybe": want allow, deny or audit-deny`}},
		{"source not a SPIFFE ID", []string{"--discovery-admin", badSrc}, 1, []string{`edge 0: invalid flow report: source "web" is not a SPIFFE ID`}},
		{"not JSON", []string{"--discovery-admin", garbage}, 1, []string{"not the expected JSON"}},
		{"unknown namespace, nothing observed", []string{"--discovery-admin", good, "-n", "nope"}, 1, []string{"no call into namespace nope"}},
		{"no namespace", []string{"--discovery-admin", good, "-n", ""}, 2, []string{"--namespace is required"}},
		{"negative since", []string{"--discovery-admin", good, "--since", "-1h"}, 2, []string{"--since must not be negative"}},
		{"mesh without discovery", []string{}, 2, []string{"--mesh reads policies from a mesh.yaml; give the observed traffic's source too: --discovery-admin URL"}},
		{"bad URL", []string{"--discovery-admin", "ftp://x"}, 2, []string{"want an http URL"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"policy", "suggest", "-n", "shop", "--mesh", mesh}, c.args...)
			out, errOut, code := run(t, args...)
			if code != c.code || out != "" {
				t.Errorf("exit %d, stdout %q; want exit %d and nothing on stdout", code, out, c.code)
			}
			for _, s := range c.stderr {
				if !strings.Contains(errOut, s) {
					t.Errorf("stderr %q does not contain %q", errOut, s)
				}
			}
		})
	}

	t.Run("a full table warns", func(t *testing.T) {
		out, errOut, code := run(t, "policy", "suggest", "-n", "shop", "--mesh", mesh, "--discovery-admin", dropped)
		want := "tether: warning: the observed traffic is incomplete (" + dropped + ": its edge table was full and dropped 12 edge(s) (bound 1000)); calls may be missing"
		if code != 0 || len(docs(t, out)) != 3 || !strings.Contains(errOut, want) {
			t.Errorf("exit %d, stderr %q; want exit 0, the policies and %q", code, errOut, want)
		}
	})

	t.Run("two replicas merge", func(t *testing.T) {
		one := flows.Table{Time: tableTime, Replica: "d-0", Edges: []flows.Edge{
			edge("shop/web", "shop/api:8080", flows.Allow, flows.Destination, 9, time.Minute, byDefault)}}
		two := flows.Table{Time: tableTime, Replica: "d-1", Edges: []flows.Edge{
			edge("shop/web", "shop/api:8080", flows.Allow, flows.Destination, 4, 2*time.Minute, byDefault),
			edge("shop/api", "shop/db:5432", flows.Allow, flows.Destination, 1, time.Minute, byDefault)}}
		u := serveTables(t, one, two)
		out, errOut, code := run(t, "policy", "suggest", "-n", "shop", "--mesh", mesh, "--discovery-admin", u[0], "--discovery-admin", u[1])
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if ps := docs(t, out); len(ps) != 2 || !strings.Contains(out, "shop/web -> api:8080: allow, 13 connection(s)") ||
			!strings.Contains(out, "replicas read: "+u[0]+", "+u[1]) {
			t.Errorf("the two replicas' tables are not merged:\n%s", out)
		}
	})
}

// TestPolicySuggestInjection: the table's strings come from the mesh; one
// with a line break could write lines of its own, objects even, into the
// YAML an operator pipes to kubectl apply. Discovery keeps no such edge,
// so a table holding one is refused whole (and the comments are made
// safe anyway, commentSafe).
func TestPolicySuggestInjection(t *testing.T) {
	mesh := meshFile(t, suggestMesh)
	for name, evil := range map[string]string{
		"line break": "x\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: pwned, namespace: shop}",
		"U+2028":     "x\u2028kind: Secret",
		"NEL":        "x\u0085kind: Secret",
	} {
		t.Run(name, func(t *testing.T) {
			tb := shopTable()
			tb.Edges = append(tb.Edges, edge("shop/web", "shop/db:5432", flows.Deny, flows.Destination, 1, time.Minute, evil))
			url := serveTables(t, tb)[0]
			for _, args := range [][]string{{"suggest", "-n", "shop"}, {"graph", "--observed"}, {"graph", "--observed", "-o", "dot"}} {
				out, errOut, code := run(t, append(append([]string{"policy"}, args...), "--mesh", mesh, "--discovery-admin", url)...)
				if code != 1 || out != "" || !strings.Contains(errOut, "edge 11: invalid flow report: rule") {
					t.Errorf("%v: exit %d, stdout %q, stderr %q; want the table refused", args, code, out, errOut)
				}
			}
		})
	}
}

func TestPolicySuggestNamesAndBounds(t *testing.T) {
	long := strings.Repeat("s", 30) + "-" + strings.Repeat("v", 32) // 63 characters
	long2 := strings.Repeat("s", 30) + "-" + strings.Repeat("w", 32)
	var b strings.Builder
	b.WriteString(suggestMesh)
	fmt.Fprintf(&b, "  - {name: %s, namespace: shop, ports: [{port: 80}], endpoints: [{address: 127.0.0.6, serviceAccount: a}]}\n", long)
	fmt.Fprintf(&b, "  - {name: %s, namespace: shop, ports: [{port: 80}], endpoints: [{address: 127.0.0.7, serviceAccount: a}]}\n", long2)
	mesh := meshFile(t, b.String())
	tb := flows.Table{Time: tableTime}
	tb.Edges = append(tb.Edges,
		edge("shop/web", "shop/"+long+":80", flows.Allow, flows.Destination, 1, time.Minute, byDefault),
		edge("shop/web", "shop/"+long2+":80", flows.Allow, flows.Destination, 1, time.Minute, byDefault))
	// 300 callers of db: more than one policy's MaxSources.
	for i := range 300 {
		tb.Edges = append(tb.Edges, edge(fmt.Sprintf("shop/sa-%03d", i), "shop/db:5432", flows.Allow, flows.Destination, 1, time.Minute, byDefault))
	}
	url := serveTables(t, tb)[0]
	out, errOut, code := run(t, "policy", "suggest", "-n", "shop", "--mesh", mesh, "--discovery-admin", url)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	ps := docs(t, out)
	names := map[string]int{}
	for _, p := range ps {
		if len(p.Name) > 63 {
			t.Errorf("name %q: %d characters", p.Name, len(p.Name))
		}
		if err := p.Validate(); err != nil {
			t.Error(err)
		}
		names[p.Name] = len(p.Spec.Sources)
	}
	if len(ps) != 4 || len(names) != 4 {
		t.Fatalf("%d policies with %d distinct names (%v), want 4: two for db (300 sources), one per long Service", len(ps), len(names), names)
	}
	if names["tether-suggested-db-1-1"] != policy.MaxSources || names["tether-suggested-db-1-2"] != 300-policy.MaxSources {
		t.Errorf("db's 300 sources split as %v", names)
	}
	// The same input gives the same names.
	again, _, _ := run(t, "policy", "suggest", "-n", "shop", "--mesh", mesh, "--discovery-admin", url)
	if again != out {
		t.Errorf("a second run printed something else")
	}
}

func TestPolicyGraphObserved(t *testing.T) {
	mesh := meshFile(t, suggestMesh+`
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: db-only-api, namespace: shop}
    spec:
      destination: {service: db, ports: [5432]}
      sources: [{serviceAccount: {name: api}}, {serviceAccount: {name: report}}]
`)
	url := serveTables(t, shopTable())[0]
	out, errOut, code := run(t, "policy", "graph", "--observed", "-n", "shop", "--mesh", mesh, "--discovery-admin", url)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	t.Logf("\n%s", out)
	rows := regexp.MustCompile(`  +`).ReplaceAllString(out, " | ")
	for _, want := range []string{
		"SOURCE | DESTINATION | PORT | DECISION | CONNECTIONS | LAST SEEN | RULE\n",
		"shop/web | shop/api | 8080 | allow | 10 | 1m ago | mesh default allow-mesh\n",
		"shop/web | shop/db | 5432 | deny | 3 | 1m ago | AccessPolicy shop/db-only-api\n",
		"shop/scanner | shop/db | 5432 | allow | 1 | 1m ago | mesh default allow-mesh (now denied: no AccessPolicy allows spiffe://cluster.local/ns/shop/sa/scanner to shop/db:5432)\n",
		"spiffe://cluster.local/vm/batch | shop/api | 9090 | audit-deny | 2 | 5m ago | would-be: AccessPolicy shop/strict\n",
		"shop/web | shop/db (pod) | 15000 | allow | 1 | 1m ago |",
		// Allowed by policy, never observed.
		"shop/report | shop/db | 5432 | unused | - | - | AccessPolicy shop/db-only-api (allowed, never observed: a candidate to remove)\n",
		"shop/web | shop/cache | 6379 | unused | - | - | mesh default allow-mesh (allowed, never observed",
		// web's call into namespace other: its source is in shop.
		"shop/web | other/x | 80 | allow | 5 |",
	} {
		if !strings.Contains(rows, want) {
			t.Errorf("the graph does not have %q", want)
		}
	}
	// api -> db is allowed by db-only-api: never "unused".
	if strings.Contains(rows, "shop/api | shop/db | 5432 | unused") {
		t.Errorf("an observed pair is also listed unused")
	}
	// The observed allow of api -> db is allowed by db-only-api now too.
	if !strings.Contains(rows, "shop/api | shop/db | 5432 | allow | 4 | 2m ago | mesh default allow-mesh\n") {
		t.Errorf("api -> db is allowed by db-only-api now")
	}

	var g struct {
		Time     time.Time `json:"time"`
		Replicas []string  `json:"replicas"`
		Edges    []struct {
			Source, Destination, Decision string
			Port                          uint16
			Connections                   uint64
			PolicyAllows                  bool
			PolicyRule                    string
			Sides                         []string
		} `json:"edges"`
	}
	out, _, code = run(t, "policy", "graph", "--observed", "-n", "shop", "-o", "json", "--mesh", mesh, "--discovery-admin", url)
	if err := json.Unmarshal([]byte(out), &g); err != nil || code != 0 {
		t.Fatalf("exit %d, -o json: %v\n%s", code, err, out)
	}
	found := false
	for _, e := range g.Edges {
		if e.Source == "spiffe://cluster.local/ns/shop/sa/web" && e.Destination == "shop/api" && e.Port == 8080 && e.Decision == "allow" {
			found = e.Connections == 10 && e.PolicyAllows && slices.Equal(e.Sides, []string{"caller", "destination"})
		}
	}
	if !found || !g.Time.Equal(tableTime) || !slices.Equal(g.Replicas, []string{url}) {
		t.Errorf("-o json: %s", out)
	}

	out, _, _ = run(t, "policy", "graph", "--observed", "--dot", "-n", "shop", "--mesh", mesh, "--discovery-admin", url)
	for _, want := range []string{
		`"shop/web" -> "shop/db" [label="5432 deny ×3", tooltip="AccessPolicy shop/db-only-api", color="red", style=bold];`,
		`"spiffe://cluster.local/vm/batch" -> "shop/api" [label="9090 audit-deny ×2", tooltip="would-be: AccessPolicy shop/strict", color="orange", style=dashed];`,
		`"shop/report" -> "shop/db" [label="5432 unused", `,
		`color="grey", style=dotted];`,
		`"shop/db (pod)" [shape=octagon];`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("-o dot does not have %q:\n%s", want, out)
		}
	}

	// --since: the calls last seen before the window are left out; a
	// pair policy allows is then unused.
	out, _, _ = run(t, "policy", "graph", "--observed", "--since", "90s", "-n", "shop", "--mesh", mesh, "--discovery-admin", url)
	rows = regexp.MustCompile(`  +`).ReplaceAllString(out, " | ")
	if !strings.Contains(rows, "shop/api | shop/db | 5432 | unused") || strings.Contains(rows, "shop/ops") ||
		!strings.Contains(rows, "shop/web | shop/api | 8080 | allow | 10 |") {
		t.Errorf("--since 90s: want api -> db unused (last seen 2m ago), ops (3h ago) left out, web -> api (1m ago) kept:\n%s", out)
	}

	// An audit policy in force: web -> api passes, and would be denied.
	audited := meshFile(t, suggestMesh+`
policies:
  - apiVersion: tether.dev/v1alpha1
    kind: AccessPolicy
    metadata: {name: api-from-ops, namespace: shop}
    spec:
      destination: {service: api}
      sources: [{serviceAccount: {name: ops}}]
      mode: Audit
`)
	out, _, _ = run(t, "policy", "graph", "--observed", "-n", "shop", "--mesh", audited, "--discovery-admin", url)
	rows = regexp.MustCompile(`  +`).ReplaceAllString(out, " | ")
	if want := "shop/web | shop/api | 8080 | allow | 10 | 1m ago | mesh default allow-mesh (now audit-denied: no AccessPolicy allows"; !strings.Contains(rows, want) {
		t.Errorf("under an audit policy, the graph does not have %q:\n%s", want, out)
	}

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--since", "1h"}, 2, "--since is about the observed traffic: give --observed too"},
		{[]string{"--discovery-admin", url}, 2, "--discovery-admin is about the observed traffic"},
		{[]string{"--observed", "--discovery-admin", url, "-n", "nope"}, 1, "namespace nope does not exist in " + mesh},
		{[]string{"--observed"}, 2, "give the observed traffic's source too"},
	} {
		_, errOut, code := run(t, append([]string{"policy", "graph", "--mesh", mesh}, c.args...)...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", c.args, code, errOut, c.code, c.want)
		}
	}
}
