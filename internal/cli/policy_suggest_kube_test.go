package cli_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/pkg/discovery/flows"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// TestPolicySuggestKube: against a real kube-apiserver with the generated
// CRD, the suggestions are made from the mesh read from Kubernetes, each
// passes a server-side dry-run create (the CRD's schema and CEL rules),
// and --diff compares them with the AccessPolicies in the cluster. The
// observed traffic comes from a discovery stand-in (see serveTables).
func TestPolicySuggestKube(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env.InstallCRD(t, filepath.Join("..", "..", "manifests", "crds", "accesspolicies.tether.dev.yaml"))
	env.InstallCRD(t, filepath.Join("..", "..", "manifests", "crds", "remoteservices.tether.dev.yaml"))
	createMesh(ctx, t, env)
	kc := writeKubeconfig(t, "admin", map[string]*rest.Config{"admin": env.Config})
	const billing = "spiffe://cluster.local/vm/billing"
	url := serveTables(t, flows.Table{Time: tableTime, Replica: "discovery-0", Edges: []flows.Edge{
		edge("web/frontend", "shop/api:80", flows.Allow, flows.Destination, 20, time.Minute, "AccessPolicy shop/api-from-frontend"),
		edge(billing, "shop/api:80", flows.Allow, flows.Destination, 2, time.Minute, "AccessPolicy shop/api-from-frontend"),
		edge("ops/monitor", "shop/api:9090", flows.Allow, flows.Destination, 5, time.Minute, "AccessPolicy shop/api-from-ops"),
		edge("shop/api", "shop/db:5432", flows.Allow, flows.Destination, 9, time.Minute, "namespace default same-namespace (annotation tether.dev/default-policy on shop)"),
		edge("web/frontend", "shop/db:5432", flows.Deny, flows.Caller, 1, time.Minute, "namespace default same-namespace (annotation tether.dev/default-policy on shop)"),
	}})[0]

	out, errOut, code := run(t, "policy", "suggest", "-n", "shop", "--kubeconfig", kc, "--discovery-admin", url)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	ps := docs(t, out)
	if len(ps) != 3 {
		t.Fatalf("%d policies, want 3 (api port 80, api port 9090, db):\n%s", len(ps), out)
	}
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	res := dc.Resource(policy.SchemeGroupVersionResource).Namespace("shop")
	dryRun := func(p *policy.AccessPolicy) error {
		obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(p)
		if err != nil {
			t.Fatal(err)
		}
		_, err = res.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"})
		return err
	}
	for i := range ps {
		if err := dryRun(&ps[i]); err != nil {
			t.Errorf("the API server refuses suggested policy %s: %v", ps[i].Name, err)
		}
	}
	// The dry-run checks: a policy the CRD refuses is refused.
	bad := ps[0].DeepCopy()
	bad.Spec.Sources = append(bad.Spec.Sources, policy.Source{Namespace: "web", SpiffeID: billing})
	if err := dryRun(bad); err == nil || !strings.Contains(err.Error(), "set exactly one of serviceAccount, namespace, spiffeID or trustDomain") {
		t.Errorf("a source of two kinds passed the dry-run: %v", err)
	}
	list, err := res.List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 2 {
		t.Errorf("after the dry-runs: %d policies (%v), want the 2 of createMesh", len(list.Items), err)
	}

	out, errOut, code = run(t, "policy", "suggest", "-n", "shop", "--diff", "--kubeconfig", kc, "--discovery-admin", url)
	want := `@@ shop/api @@
- namespace ops all ports  (AccessPolicy shop/api-from-ops)
+ serviceAccount ops/monitor port 9090  (AccessPolicy shop/tether-suggested-api-9090)
  serviceAccount web/frontend port 80
  spiffeID spiffe://cluster.local/vm/billing port 80
@@ shop/db: no AccessPolicy; decided now by namespace default same-namespace (annotation tether.dev/default-policy on shop) @@
+ serviceAccount shop/api port 5432  (AccessPolicy shop/tether-suggested-db)
2 added, 1 removed, in 2 Service(s); 1 observed call(s) not suggested`
	if code != 0 || !strings.Contains(out, want) {
		t.Errorf("--diff: exit %d (%s):\n%s\nwant\n%s", code, errOut, out, want)
	}

	// graph --observed reads the same cluster.
	out, _, code = run(t, "policy", "graph", "--observed", "-n", "shop", "-o", "json", "--kubeconfig", kc, "--discovery-admin", url)
	var g struct {
		Edges []struct{ Source, Destination, Decision string } `json:"edges"`
	}
	if err := json.Unmarshal([]byte(out), &g); err != nil || code != 0 {
		t.Fatalf("graph --observed: exit %d: %v", code, err)
	}
	unused := 0
	for _, e := range g.Edges {
		if e.Decision == "unused" && e.Source == "spiffe://cluster.local/ns/ops/sa/monitor" && e.Destination == "shop/api" {
			unused++ // port 80: api-from-ops allows every port
		}
	}
	if unused != 1 {
		t.Errorf("graph --observed: monitor -> shop/api port 80 (allowed by api-from-ops, not observed) is not unused once: %s", out)
	}
}
