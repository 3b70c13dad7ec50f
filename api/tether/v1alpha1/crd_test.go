package v1alpha1

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/internal/kubetest"
)

// crdPath is the CRD controller-gen generates from this package.
var crdPath = filepath.Join("..", "..", "..", "charts", "tether", "crds", "tether.dev_accesspolicies.yaml")

func loadCRD(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile(crdPath)
	if err != nil {
		t.Fatal(err)
	}
	obj := map[string]any{}
	if err := yaml.Unmarshal(data, &obj); err != nil {
		t.Fatalf("parse %s: %v", crdPath, err)
	}
	return obj
}

// TestCRDManifestMatchesTypes checks, without an API server, that the CRD
// names the group, version, kind and resource the Go constants use.
func TestCRDManifestMatchesTypes(t *testing.T) {
	crd := loadCRD(t)
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
	if len(versions) != 1 {
		t.Fatalf("versions = %v, want exactly %s", versions, Version)
	}
	v := versions[0].(map[string]any)
	if v["name"] != Version || v["served"] != true || v["storage"] != true {
		t.Errorf("version %v served=%v storage=%v, want %s served and stored", v["name"], v["served"], v["storage"], Version)
	}
}

// apiCase is a policy spec as a client would send it. want is empty for a
// valid policy; for an invalid one, a piece of the API server's message
// that names the field and the reason.
type apiCase struct {
	name string
	spec map[string]any
	want string
}

func dest(service string, ports ...any) map[string]any {
	d := map[string]any{"service": service}
	if ports != nil {
		d["ports"] = ports
	}
	return d
}

func spec(d map[string]any, sources ...any) map[string]any {
	if sources == nil {
		sources = []any{}
	}
	return map[string]any{"destination": d, "sources": sources}
}

func withMode(s map[string]any, mode any) map[string]any {
	s["mode"] = mode
	return s
}

func fromNS(ns string) map[string]any { return map[string]any{"namespace": ns} }
func fromID(id string) map[string]any { return map[string]any{"spiffeID": id} }
func fromTD(td string) map[string]any { return map[string]any{"trustDomain": td} }
func fromSA(name, ns string) map[string]any {
	sa := map[string]any{"name": name}
	if ns != "" {
		sa["namespace"] = ns
	}
	return map[string]any{"serviceAccount": sa}
}

func ports(n int) []any {
	p := make([]any, n)
	for i := range p {
		p[i] = int64(i + 1)
	}
	return p
}

func sources(n int) []any {
	s := make([]any, n)
	for i := range s {
		s[i] = fromNS(fmt.Sprintf("ns%d", i))
	}
	return s
}

// exactlyOne is how the API server reports the CEL rule on the first source.
const exactlyOne = "spec.sources[0]: Invalid value: set exactly one of serviceAccount, namespace, spiffeID or trustDomain"

// apiCases hold every rule of the schema: each CEL rule, pattern, length,
// bound, list type, enum and required field, on both sides of its limit.
var apiCases = []apiCase{
	{"valid-all-kinds", spec(dest("web", int64(8080), int64(9090)),
		fromSA("frontend", ""), fromSA("batch", "jobs"), fromNS("monitoring"), fromID("spiffe://example.org/vm/billing")), ""},
	{"valid-no-ports", spec(dest("db"), fromNS("shop")), ""},
	{"valid-empty-ports", spec(dest("db", []any{}...), fromNS("shop")), ""},
	{"valid-limits", map[string]any{
		"destination": map[string]any{"service": "a" + strings.Repeat("b", 62), "ports": append(ports(MaxPorts-1), int64(65535))},
		"sources": append(sources(MaxSources-3),
			fromSA("a."+strings.Repeat("b", 251), strings.Repeat("c", 63)),
			fromNS(strings.Repeat("d", 63)),
			fromID("spiffe://example.org/"+strings.Repeat("e", 2048-len("spiffe://example.org/")))),
	}, ""},
	{"valid-audit", withMode(spec(dest("web"), fromNS("shop")), "Audit"), ""},
	{"valid-enforce", withMode(spec(dest("web"), fromNS("shop")), "Enforce"), ""},
	{"valid-sa-dotted", spec(dest("web"), fromSA("web.v2", "")), ""},
	{"valid-spiffeid-trust-domain-only", spec(dest("web"), fromID("spiffe://example.org")), ""},
	{"valid-trust-domain", spec(dest("web"), fromTD("b.example"), fromID("spiffe://b.example/ns/default/sa/api")), ""},
	{"valid-trust-domain-longest", spec(dest("web"), fromTD(strings.Repeat("a", 255))), ""},

	// Required fields.
	{"spec-missing", nil, "spec: Required value"},
	{"destination-missing", map[string]any{"sources": []any{fromNS("shop")}}, "spec.destination: Required value"},
	{"service-missing", spec(map[string]any{"ports": []any{int64(80)}}, fromNS("shop")), "spec.destination.service: Required value"},
	{"sources-missing", map[string]any{"destination": dest("web")}, "spec.sources: Required value"},
	{"service-account-without-name", spec(dest("web"), map[string]any{"serviceAccount": map[string]any{"namespace": "shop"}}),
		"spec.sources[0].serviceAccount.name: Required value"},

	// The CEL rule on each source: exactly one kind.
	{"no-kind", spec(dest("web"), map[string]any{}), exactlyOne},
	{"two-kinds-namespace-spiffeid", spec(dest("web"), map[string]any{"namespace": "shop", "spiffeID": "spiffe://example.org/x"}), exactlyOne},
	{"two-kinds-sa-namespace", spec(dest("web"), map[string]any{"serviceAccount": map[string]any{"name": "a"}, "namespace": "shop"}), exactlyOne},
	{"two-kinds-sa-spiffeid", spec(dest("web"), map[string]any{"serviceAccount": map[string]any{"name": "a"}, "spiffeID": "spiffe://example.org/x"}), exactlyOne},
	{"three-kinds", spec(dest("web"), map[string]any{
		"serviceAccount": map[string]any{"name": "a"}, "namespace": "shop", "spiffeID": "spiffe://example.org/x"}), exactlyOne},
	{"two-kinds-namespace-trust-domain", spec(dest("web"), map[string]any{"namespace": "shop", "trustDomain": "b.example"}), exactlyOne},
	{"two-kinds-spiffeid-trust-domain", spec(dest("web"), map[string]any{"spiffeID": "spiffe://b.example/x", "trustDomain": "b.example"}), exactlyOne},
	{"two-kinds-sa-trust-domain", spec(dest("web"), map[string]any{"serviceAccount": map[string]any{"name": "a"}, "trustDomain": "b.example"}), exactlyOne},
	{"second-source-two-kinds", spec(dest("web"), fromNS("shop"), map[string]any{"namespace": "shop", "spiffeID": "spiffe://example.org/x"}),
		strings.Replace(exactlyOne, "[0]", "[1]", 1)},

	// The mode enum (absent: defaulted to Enforce, see checkStored).
	{"mode-unknown", withMode(spec(dest("web"), fromNS("shop")), "DryRun"), `spec.mode: Unsupported value: "DryRun": supported values: "Enforce", "Audit"`},
	{"mode-lower-case", withMode(spec(dest("web"), fromNS("shop")), "audit"), `spec.mode: Unsupported value: "audit"`},
	{"mode-not-a-string", withMode(spec(dest("web"), fromNS("shop")), true), `spec.mode: Invalid value: "boolean": spec.mode in body must be of type string`},

	// Lists.
	{"no-sources", spec(dest("web")), "spec.sources: Invalid value: 0: spec.sources in body should have at least 1 items"},
	{"too-many-sources", map[string]any{"destination": dest("web"), "sources": sources(MaxSources + 1)}, "spec.sources: Too many: 257: must have at most 256 items"},
	{"too-many-ports", spec(dest("web", ports(MaxPorts+1)...), fromNS("shop")), "spec.destination.ports: Too many: 65: must have at most 64 items"},
	{"port-twice", spec(dest("web", int64(80), int64(80)), fromNS("shop")), "spec.destination.ports[1]: Duplicate value: 80"},

	// Bounds and types.
	{"port-0", spec(dest("web", int64(0)), fromNS("shop")), "spec.destination.ports[0]: Invalid value: 0: spec.destination.ports[0] in body should be greater than or equal to 1"},
	{"port-negative", spec(dest("web", int64(-1)), fromNS("shop")), "should be greater than or equal to 1"},
	{"port-70000", spec(dest("web", int64(70000)), fromNS("shop")), "spec.destination.ports[0]: Invalid value: 70000: spec.destination.ports[0] in body should be less than or equal to 65535"},
	{"port-string", spec(dest("web", "80"), fromNS("shop")), `spec.destination.ports[0]: Invalid value: "string": spec.destination.ports[0] in body must be of type integer`},

	// Patterns and lengths.
	{"bad-service", spec(dest("Web.svc"), fromNS("shop")), "spec.destination.service in body should match"},
	{"service-starts-with-digit", spec(dest("1web"), fromNS("shop")), "spec.destination.service in body should match"},
	{"service-empty", spec(dest(""), fromNS("shop")), "spec.destination.service in body should be at least 1 chars long"},
	{"service-too-long", spec(dest(strings.Repeat("a", 64)), fromNS("shop")), "spec.destination.service: Too long: may not be more than 63"},
	{"bad-namespace", spec(dest("web"), fromNS("Shop_1")), "spec.sources[0].namespace in body should match"},
	{"namespace-empty", spec(dest("web"), fromNS("")), "spec.sources[0].namespace in body should be at least 1 chars long"},
	{"namespace-too-long", spec(dest("web"), fromNS(strings.Repeat("a", 64))), "spec.sources[0].namespace: Too long: may not be more than 63"},
	{"bad-sa-name", spec(dest("web"), fromSA("Front_End", "")), "spec.sources[0].serviceAccount.name in body should match"},
	{"sa-name-too-long", spec(dest("web"), fromSA(strings.Repeat("a", 254), "")), "spec.sources[0].serviceAccount.name: Too long: may not be more than 253"},
	{"bad-sa-namespace", spec(dest("web"), fromSA("web", "-jobs")), "spec.sources[0].serviceAccount.namespace in body should match"},
	{"sa-namespace-too-long", spec(dest("web"), fromSA("web", strings.Repeat("a", 64))), "spec.sources[0].serviceAccount.namespace: Too long: may not be more than 63"},
	{"spiffeid-without-scheme", spec(dest("web"), fromID("example.org/ns/shop/sa/web")), "spec.sources[0].spiffeID in body should match"},
	{"spiffeid-upper-case-trust-domain", spec(dest("web"), fromID("spiffe://Example.org/x")), "spec.sources[0].spiffeID in body should match"},
	{"spiffeid-trailing-slash", spec(dest("web"), fromID("spiffe://example.org/x/")), "spec.sources[0].spiffeID in body should match"},
	{"trust-domain-upper-case", spec(dest("web"), fromTD("B.example")), "spec.sources[0].trustDomain in body should match"},
	{"trust-domain-with-scheme", spec(dest("web"), fromTD("spiffe://b.example")), "spec.sources[0].trustDomain in body should match"},
	{"trust-domain-with-path", spec(dest("web"), fromTD("b.example/ns")), "spec.sources[0].trustDomain in body should match"},
	{"trust-domain-empty", spec(dest("web"), fromTD("")), "spec.sources[0].trustDomain in body should be at least 1 chars long"},
	{"trust-domain-too-long", spec(dest("web"), fromTD(strings.Repeat("a", 256))), "spec.sources[0].trustDomain: Too long: may not be more than 255"},
	{"spiffeid-too-long", spec(dest("web"), fromID("spiffe://example.org/"+strings.Repeat("e", 2048))), "spec.sources[0].spiffeID: Too long: may not be more than 2048"},
}

func (c apiCase) object(ns string) *unstructured.Unstructured {
	obj := map[string]any{
		"apiVersion": SchemeGroupVersion.String(),
		"kind":       Kind,
		"metadata":   map[string]any{"name": c.name, "namespace": ns},
	}
	if c.spec != nil {
		obj["spec"] = runtime.DeepCopyJSONValue(c.spec)
	}
	return &unstructured.Unstructured{Object: obj}
}

// TestValidateAgreesWithCRDCases runs the API-server cases through Validate
// alone, so the agreement is checked even where the binaries are missing.
// A case whose JSON does not fit the Go types counts as refused.
func TestValidateAgreesWithCRDCases(t *testing.T) {
	for _, c := range apiCases {
		t.Run(c.name, func(t *testing.T) {
			var p AccessPolicy
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(c.object("shop").Object, &p); err != nil {
				if c.want == "" {
					t.Fatalf("convert: %v", err)
				}
				return
			}
			err := p.Validate()
			if c.want == "" && err != nil {
				t.Fatalf("Validate() = %v, want nil", err)
			}
			if c.want != "" && !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("Validate() = %v, want ErrInvalidPolicy", err)
			}
		})
	}
}

// TestCRDAgainstAPIServer installs the generated CRD in a real
// kube-apiserver, and checks that valid policies are stored (and read back
// into the Go types) while each malformed one is rejected as Invalid for the
// reason its case names.
func TestCRDAgainstAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	env.InstallCRD(t, crdPath)

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
	valid := 0
	for _, c := range apiCases {
		if c.want == "" {
			valid++
		}
		t.Run(c.name, func(t *testing.T) {
			_, err := create(c.object(ns))
			if c.want != "" {
				if !apierrors.IsInvalid(err) {
					t.Fatalf("create = %v, want an Invalid error", err)
				}
				if !strings.Contains(err.Error(), c.want) {
					t.Fatalf("create = %v\nwant an error containing %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			checkStored(ctx, t, policies, c)
		})
	}
	list, err := policies.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != valid {
		t.Errorf("stored %d policies, want %d (only the valid ones)", len(list.Items), valid)
	}
	checkDiscovery(t, env)
	checkPrinterColumns(ctx, t, env)
}

// checkStored reads a stored policy back into the Go types and checks that
// it passes Validate and that its spec survives the round trip unchanged.
func checkStored(ctx context.Context, t *testing.T, policies dynamic.ResourceInterface, c apiCase) {
	t.Helper()
	got, err := policies.Get(ctx, c.name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	var p AccessPolicy
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &p); err != nil {
		t.Fatalf("convert stored object: %v", err)
	}
	if p.Name != c.name || p.Spec.Destination.Service == "" {
		t.Fatalf("stored policy = %+v", p)
	}
	if err := p.Validate(); err != nil {
		t.Fatalf("stored policy fails Validate: %v", err)
	}
	// The API server defaults an absent mode to Enforce.
	wantMode, _ := c.spec["mode"].(string)
	if wantMode == "" {
		wantMode = string(Enforce)
	}
	if string(p.Spec.Mode) != wantMode {
		t.Fatalf("stored mode = %q, want %q", p.Spec.Mode, wantMode)
	}
	stored := runtime.DeepCopyJSONValue(got.Object["spec"]).(map[string]any)
	// The Go types omit an empty ports list, which means the same as none.
	if ports, _, _ := unstructured.NestedSlice(stored, "destination", "ports"); len(ports) == 0 {
		unstructured.RemoveNestedField(stored, "destination", "ports")
	}
	back, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&p.Spec)
	if err != nil {
		t.Fatal(err)
	}
	if !equalJSON(t, back, stored) {
		t.Fatalf("spec did not survive a round trip through the Go types:\n got %v\nwant %v", back, stored)
	}
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
// the Service, Ports, Mode and Age columns.
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
	var names []string
	for _, c := range table.ColumnDefinitions {
		names = append(names, c.Name)
	}
	if want := []string{"Name", "Service", "Ports", "Mode", "Age"}; !slices.Equal(names, want) || len(table.Rows) != 1 {
		t.Fatalf("table columns %v, %d rows; want columns %v and one row", names, len(table.Rows), want)
	}
	cells := table.Rows[0].Cells
	if cells[1] != "web" || !strings.Contains(fmt.Sprint(cells[2]), "8080") || cells[3] != "Enforce" {
		t.Errorf("row %v: want Service web, Ports holding 8080 and Mode Enforce", cells)
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
