package policy

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/kubetest"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"
)

const crdFile = "accesspolicies.tether.dev.yaml"

func loadCRD(t *testing.T) *unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "..", "manifests", "crds", crdFile))
	if err != nil {
		t.Fatal(err)
	}
	obj := map[string]any{}
	if err := yaml.Unmarshal(data, &obj); err != nil {
		t.Fatalf("parse %s: %v", crdFile, err)
	}
	return &unstructured.Unstructured{Object: obj}
}

// TestCRDManifestMatchesTypes checks, without an API server, that the CRD
// names the group, version, kind and resource the Go types use.
func TestCRDManifestMatchesTypes(t *testing.T) {
	crd := loadCRD(t).Object
	get := func(path ...string) string {
		s, _, _ := unstructured.NestedString(crd, path...)
		return s
	}
	checks := map[string][2]string{
		"metadata.name":     {get("metadata", "name"), Resource + "." + GroupName},
		"spec.group":        {get("spec", "group"), GroupName},
		"spec.names.kind":   {get("spec", "names", "kind"), Kind},
		"spec.names.plural": {get("spec", "names", "plural"), Resource},
		"spec.scope":        {get("spec", "scope"), "Namespaced"},
	}
	for field, c := range checks {
		if c[0] != c[1] {
			t.Errorf("%s = %q, want %q", field, c[0], c[1])
		}
	}
	versions, _, _ := unstructured.NestedSlice(crd, "spec", "versions")
	if len(versions) != 1 || versions[0].(map[string]any)["name"] != Version {
		t.Errorf("versions = %v, want exactly %s", versions, Version)
	}
}

// apiCase is a policy as a client would send it, with whether it is valid.
type apiCase struct {
	name  string
	spec  map[string]any
	valid bool
}

var apiCases = []apiCase{
	{"valid-all-kinds", map[string]any{
		"destination": map[string]any{"service": "web", "ports": []any{int64(8080), int64(9090)}},
		"sources": []any{
			map[string]any{"serviceAccount": map[string]any{"name": "frontend"}},
			map[string]any{"serviceAccount": map[string]any{"name": "batch", "namespace": "jobs"}},
			map[string]any{"namespace": "monitoring"},
			map[string]any{"spiffeID": "spiffe://example.org/vm/billing"},
		},
	}, true},
	{"valid-no-ports", map[string]any{
		"destination": map[string]any{"service": "db"},
		"sources":     []any{map[string]any{"namespace": "shop"}},
	}, true},
	{"no-sources", map[string]any{
		"destination": map[string]any{"service": "web"},
		"sources":     []any{},
	}, false},
	{"sources-missing", map[string]any{
		"destination": map[string]any{"service": "web"},
	}, false},
	{"two-kinds", map[string]any{
		"destination": map[string]any{"service": "web"},
		"sources": []any{map[string]any{
			"namespace": "shop", "spiffeID": "spiffe://example.org/x",
		}},
	}, false},
	{"no-kind", map[string]any{
		"destination": map[string]any{"service": "web"},
		"sources":     []any{map[string]any{}},
	}, false},
	{"port-0", map[string]any{
		"destination": map[string]any{"service": "web", "ports": []any{int64(0)}},
		"sources":     []any{map[string]any{"namespace": "shop"}},
	}, false},
	{"port-70000", map[string]any{
		"destination": map[string]any{"service": "web", "ports": []any{int64(70000)}},
		"sources":     []any{map[string]any{"namespace": "shop"}},
	}, false},
	{"port-twice", map[string]any{
		"destination": map[string]any{"service": "web", "ports": []any{int64(80), int64(80)}},
		"sources":     []any{map[string]any{"namespace": "shop"}},
	}, false},
	{"spiffeid-without-scheme", map[string]any{
		"destination": map[string]any{"service": "web"},
		"sources":     []any{map[string]any{"spiffeID": "example.org/ns/shop/sa/web"}},
	}, false},
	{"missing-service", map[string]any{
		"destination": map[string]any{"ports": []any{int64(80)}},
		"sources":     []any{map[string]any{"namespace": "shop"}},
	}, false},
	{"missing-destination", map[string]any{
		"sources": []any{map[string]any{"namespace": "shop"}},
	}, false},
	{"service-account-without-name", map[string]any{
		"destination": map[string]any{"service": "web"},
		"sources":     []any{map[string]any{"serviceAccount": map[string]any{"namespace": "shop"}}},
	}, false},
	{"bad-namespace", map[string]any{
		"destination": map[string]any{"service": "web"},
		"sources":     []any{map[string]any{"namespace": "Shop_1"}},
	}, false},
	{"bad-service", map[string]any{
		"destination": map[string]any{"service": "Web.svc"},
		"sources":     []any{map[string]any{"namespace": "shop"}},
	}, false},
}

func (c apiCase) object(ns string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": SchemeGroupVersion.String(),
		"kind":       Kind,
		"metadata":   map[string]any{"name": c.name, "namespace": ns},
		"spec":       runtime.DeepCopyJSONValue(c.spec),
	}}
}

// TestValidateAgreesWithCRDCases runs the API-server cases through Validate
// alone, so the agreement is checked even where the binaries are missing.
func TestValidateAgreesWithCRDCases(t *testing.T) {
	for _, c := range apiCases {
		t.Run(c.name, func(t *testing.T) {
			var p AccessPolicy
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(c.object("shop").Object, &p); err != nil {
				t.Fatalf("convert: %v", err)
			}
			err := p.Validate()
			if c.valid && err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			if !c.valid && !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("Validate() = %v, want ErrInvalidPolicy", err)
			}
		})
	}
}

// TestCRDAgainstAPIServer installs the CRD in a real kube-apiserver, and
// checks that valid policies are stored (and read back into the Go types)
// while each malformed one is rejected as Invalid.
func TestCRDAgainstAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	env.InstallCRD(t, filepath.Join("..", "..", "..", "manifests", "crds", crdFile))

	const ns = "default"
	policies := dc.Resource(SchemeGroupVersionResource).Namespace(ns)
	// The resource can be served a moment after Established; retry NotFound.
	create := func(obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
		for {
			got, err := policies.Create(ctx, obj, metav1.CreateOptions{})
			if !apierrors.IsNotFound(err) || ctx.Err() != nil {
				return got, err
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, c := range apiCases {
		t.Run(c.name, func(t *testing.T) {
			_, err := create(c.object(ns))
			if !c.valid {
				if !apierrors.IsInvalid(err) {
					t.Fatalf("create = %v, want an Invalid error", err)
				}
				t.Logf("rejected: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			got, err := policies.Get(ctx, c.name, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("get: %v", err)
			}
			var p AccessPolicy
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &p); err != nil {
				t.Fatalf("convert stored object: %v", err)
			}
			if p.Namespace != ns || p.Name != c.name || p.Spec.Destination.Service == "" {
				t.Fatalf("stored policy = %+v", p)
			}
			if err := p.Validate(); err != nil {
				t.Fatalf("stored policy fails Validate: %v", err)
			}
			back, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&p.Spec)
			if err != nil {
				t.Fatal(err)
			}
			if !equalJSON(t, back, got.Object["spec"]) {
				t.Fatalf("spec did not survive a round trip through the Go types:\n got %v\nwant %v", back, got.Object["spec"])
			}
		})
	}
	list, err := policies.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 2 {
		t.Errorf("stored %d policies, want 2 (only the valid ones)", len(list.Items))
	}
	checkDiscovery(t, env)
	checkPrinterColumns(ctx, t, env)
}

// checkDiscovery checks the short name and category kubectl uses.
func checkDiscovery(t *testing.T, env *kubetest.Env) {
	t.Helper()
	rl, err := env.Client.Discovery().ServerResourcesForGroupVersion(SchemeGroupVersion.String())
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	for _, r := range rl.APIResources {
		if r.Name != Resource {
			continue
		}
		if !r.Namespaced || !slices.Equal(r.ShortNames, []string{"ap"}) || !slices.Equal(r.Categories, []string{"tether"}) {
			t.Errorf("discovery: %s namespaced=%v shortNames=%v categories=%v; want namespaced, [ap], [tether]",
				r.Name, r.Namespaced, r.ShortNames, r.Categories)
		}
		return
	}
	t.Errorf("discovery does not list %s", Resource)
}

// checkPrinterColumns asks for the Table form kubectl get shows and checks
// the Service column.
func checkPrinterColumns(ctx context.Context, t *testing.T, env *kubetest.Env) {
	t.Helper()
	hc, err := rest.HTTPClientFor(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet,
		env.Config.Host+"/apis/tether.dev/v1alpha1/namespaces/default/accesspolicies/valid-all-kinds", nil)
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var table metav1.Table
	if err := json.NewDecoder(resp.Body).Decode(&table); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("table: HTTP %d, %v", resp.StatusCode, err)
	}
	col := -1
	for i, c := range table.ColumnDefinitions {
		if c.Name == "Service" {
			col = i
		}
	}
	if col < 0 || len(table.Rows) != 1 || table.Rows[0].Cells[col] != "web" {
		t.Fatalf("table columns %v rows %v; want a Service column holding web", table.ColumnDefinitions, table.Rows)
	}
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := yaml.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := yaml.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ja)) == strings.TrimSpace(string(jb))
}
