package v1alpha1

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"

	"github.com/tether-mesh/tether/internal/kubetest"
)

// federationCRDPath is the TrustDomainFederation CRD controller-gen generates.
var federationCRDPath = filepath.Join("..", "..", "..", "charts", "tether", "crds", "tether.dev_trustdomainfederations.yaml")

const testPEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

// federationCases are TrustDomainFederation specs and the reason the API
// server must refuse each ("" for a valid one).
var federationCases = []struct {
	name string
	spec map[string]any
	want string
}{
	{"spiffe-profile", map[string]any{"trustDomain": "b.example", "bundleEndpointURL": "https://b.example:8444",
		"profile": "https_spiffe", "endpointSPIFFEID": "spiffe://b.example/tether/bundle-endpoint", "initialBundle": testPEM}, ""},
	{"default-profile", map[string]any{"trustDomain": "c.example", "bundleEndpointURL": "https://c.example/bundle",
		"endpointSPIFFEID": "spiffe://c.example/spire/server", "initialBundle": `{"keys":[]}`}, ""},
	{"web-profile", map[string]any{"trustDomain": "d.example", "bundleEndpointURL": "https://bundle.d.example/", "profile": "https_web"}, ""},
	{"endpoint-elsewhere", map[string]any{"trustDomain": "e.example", "bundleEndpointURL": "https://e.example/",
		"endpointSPIFFEID": "spiffe://hub.example/bundle-endpoint"}, ""},
	{"plaintext-url", map[string]any{"trustDomain": "b.example", "bundleEndpointURL": "http://b.example/", "profile": "https_web"}, "spec.bundleEndpointURL"},
	{"userinfo-url", map[string]any{"trustDomain": "b.example", "bundleEndpointURL": "https://user@b.example/", "profile": "https_web"}, "spec.bundleEndpointURL"},
	{"spiffe-without-id", map[string]any{"trustDomain": "b.example", "bundleEndpointURL": "https://b.example/", "profile": "https_spiffe", "initialBundle": testPEM}, "endpointSPIFFEID is required"},
	{"web-with-id", map[string]any{"trustDomain": "b.example", "bundleEndpointURL": "https://b.example/", "profile": "https_web",
		"endpointSPIFFEID": "spiffe://b.example/x"}, "not allowed with https_web"},
	{"spiffe-without-initial", map[string]any{"trustDomain": "b.example", "bundleEndpointURL": "https://b.example/",
		"endpointSPIFFEID": "spiffe://b.example/tether/bundle-endpoint"}, "initialBundle is required"},
	{"unknown-profile", map[string]any{"trustDomain": "b.example", "bundleEndpointURL": "https://b.example/", "profile": "http"}, "spec.profile"},
	{"bad-trust-domain", map[string]any{"trustDomain": "B.Example", "bundleEndpointURL": "https://b.example/", "profile": "https_web"}, "spec.trustDomain"},
	{"bad-endpoint-id", map[string]any{"trustDomain": "b.example", "bundleEndpointURL": "https://b.example/",
		"endpointSPIFFEID": "https://b.example/x", "initialBundle": testPEM}, "spec.endpointSPIFFEID"},
	{"web-with-roots", map[string]any{"trustDomain": "f.example", "bundleEndpointURL": "https://bundle.f.example/", "profile": "https_web", "webRoots": testPEM}, ""},
	{"spiffe-with-roots", map[string]any{"trustDomain": "b.example", "bundleEndpointURL": "https://b.example/",
		"endpointSPIFFEID": "spiffe://b.example/tether/bundle-endpoint", "initialBundle": testPEM, "webRoots": testPEM}, "webRoots are for profile https_web only"},
	{"empty-roots", map[string]any{"trustDomain": "b.example", "bundleEndpointURL": "https://b.example/", "profile": "https_web", "webRoots": ""}, "spec.webRoots"},
	{"no-url", map[string]any{"trustDomain": "b.example", "profile": "https_web"}, "spec.bundleEndpointURL"},
}

// TestTrustDomainFederationCRDAgainstAPIServer installs the generated CRD
// in a real kube-apiserver: valid federations are stored (cluster-scoped,
// the profile defaulted, read back into the Go types), each malformed one
// is refused for its reason, the trust domain is immutable, and the status
// subresource takes tether-ca's refresh state.
func TestTrustDomainFederationCRDAgainstAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	env.InstallCRD(t, federationCRDPath)
	feds := dc.Resource(TrustDomainFederationGVR)
	create := func(obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
		for {
			got, err := feds.Create(ctx, obj, metav1.CreateOptions{})
			if !apierrors.IsNotFound(err) || ctx.Err() != nil {
				return got, err
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, c := range federationCases {
		t.Run(c.name, func(t *testing.T) {
			obj := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": SchemeGroupVersion.String(), "kind": "TrustDomainFederation",
				"metadata": map[string]any{"name": c.name}, "spec": c.spec,
			}}
			got, err := create(obj)
			if c.want != "" {
				if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("create = %v, want an Invalid error containing %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			if got.GetNamespace() != "" {
				t.Fatalf("stored in namespace %q; the resource is cluster-scoped", got.GetNamespace())
			}
			var f TrustDomainFederation
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &f); err != nil {
				t.Fatal(err)
			}
			want, _ := c.spec["profile"].(string)
			if want == "" {
				want = "https_spiffe"
			}
			if f.Spec.Profile != want || f.Spec.TrustDomain != c.spec["trustDomain"] {
				t.Fatalf("stored spec = %+v, want profile %s", f.Spec, want)
			}
		})
	}

	// The trust domain cannot be changed under a federation's name.
	got, err := feds.Get(ctx, "web-profile", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = unstructured.SetNestedField(got.Object, "z.example", "spec", "trustDomain")
	if _, err := feds.Update(ctx, got, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "immutable") {
		t.Fatalf("changing trustDomain = %v, want Invalid (immutable)", err)
	}

	// The status subresource takes the refresh state; the spec is not
	// changed through it.
	got, err = feds.Get(ctx, "spiffe-profile", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.NewTime(time.Now().Truncate(time.Second))
	f := TrustDomainFederation{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &f); err != nil {
		t.Fatal(err)
	}
	f.Status = TrustDomainFederationStatus{LastRefresh: &now, Sequence: 42, LastError: ""}
	f.Spec.BundleEndpointURL = "https://attacker.example/"
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&f)
	if err != nil {
		t.Fatal(err)
	}
	updated, err := feds.UpdateStatus(ctx, &unstructured.Unstructured{Object: obj}, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("update status: %v", err)
	}
	if seq, _, _ := unstructured.NestedInt64(updated.Object, "status", "sequence"); seq != 42 {
		t.Fatalf("status.sequence = %d, want 42", seq)
	}
	if url, _, _ := unstructured.NestedString(updated.Object, "spec", "bundleEndpointURL"); url != "https://b.example:8444" {
		t.Fatalf("a status update changed the spec's URL to %q", url)
	}
}
