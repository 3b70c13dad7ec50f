package injector

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/internal/kubetest"
)

// manifestsDir is the repository's manifests/ folder.
const manifestsDir = "../../manifests"

// render runs kustomize (the library kubectl -k uses) on a folder of
// manifests/ and returns the objects, in order.
func render(t testing.TB, dir string) []*unstructured.Unstructured {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(manifestsDir, dir))
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := rm.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		m := map[string]any{}
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	return objs
}

func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// applier server-side applies objects as `kubectl apply --server-side`.
type applier struct {
	dc     dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

func newApplier(t testing.TB, env *kubetest.Env) *applier {
	t.Helper()
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{dc: dc, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))}
}

// apply applies objs, Namespaces and CRDs first (waiting until their types
// are served); dryRun asks the API server to validate without storing.
func (a *applier) apply(t testing.TB, objs []*unstructured.Unstructured, dryRun bool) {
	t.Helper()
	rank := func(o *unstructured.Unstructured) int {
		switch o.GetKind() {
		case "Namespace", "CustomResourceDefinition":
			return 0
		}
		return 1
	}
	ordered := append([]*unstructured.Unstructured{}, objs...)
	for pass := 0; pass < 2; pass++ {
		for _, o := range ordered {
			if rank(o) != pass {
				continue
			}
			if err := a.applyOne(o, dryRun); err != nil {
				t.Errorf("server-side apply %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
			}
		}
	}
}

func (a *applier) applyOne(o *unstructured.Unstructured, dryRun bool) error {
	gvk := o.GroupVersionKind()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var m *meta.RESTMapping
	for {
		var err error
		m, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err == nil {
			break
		}
		if !meta.IsNoMatchError(err) || ctx.Err() != nil {
			return err
		}
		a.mapper.Reset() // a CRD just applied: wait until it is served
		time.Sleep(100 * time.Millisecond)
	}
	data, err := json.Marshal(o.Object)
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: "tether-install", Force: new(bool)}
	*opts.Force = true
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var ri dynamic.ResourceInterface = a.dc.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = a.dc.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	_, err = ri.Patch(ctx, o.GetName(), types.ApplyPatchType, data, opts)
	return err
}

// TestManifestsRender checks, without an API server, the contract the
// manifests promise (issue 5): replicas, PDBs, the webhook's selectors and
// policies, the injector's image.
func TestManifestsRender(t *testing.T) {
	base := render(t, "base")
	for _, name := range []string{"tether-ca", "tether-discovery", "tether-injector"} {
		d := find(base, "Deployment", name)
		if d == nil {
			t.Fatalf("no Deployment %s", name)
		}
		if r, _, _ := unstructured.NestedFieldNoCopy(d.Object, "spec", "replicas"); fmt.Sprint(r) != "2" {
			t.Errorf("%s has %v replicas, want 2", name, r)
		}
		if find(base, "PodDisruptionBudget", name) == nil || find(base, "Service", name) == nil || find(base, "ServiceAccount", name) == nil {
			t.Errorf("%s lacks a PodDisruptionBudget, Service or ServiceAccount", name)
		}
	}
	if find(base, "CustomResourceDefinition", "accesspolicies.tether.dev") == nil {
		t.Error("AccessPolicy CRD not in the base")
	}
	mwc := find(base, "MutatingWebhookConfiguration", "tether-injector")
	hooks, _, _ := unstructured.NestedSlice(mwc.Object, "webhooks")
	h := hooks[0].(map[string]any)
	for field, want := range map[string]string{"sideEffects": "None", "reinvocationPolicy": "IfNeeded", "timeoutSeconds": "5", "failurePolicy": "Fail"} {
		if got := fmt.Sprint(h[field]); got != want {
			t.Errorf("webhook %s = %v, want %v", field, got, want)
		}
	}
	sel, _ := json.Marshal(h["namespaceSelector"])
	for _, want := range []string{`"tether.dev/inject"`, `"enabled"`, `"tether-system"`, `"kube-system"`, `"NotIn"`} {
		if !strings.Contains(string(sel), want) {
			t.Errorf("namespaceSelector %s lacks %s", sel, want)
		}
	}
	// tether.dev/inject=required: every pod (no objectSelector) goes to
	// /mutate-required, which refuses opt-outs; failing closed.
	if len(hooks) != 2 {
		t.Fatalf("%d webhooks, want inject and inject-required", len(hooks))
	}
	r := hooks[1].(map[string]any)
	rsel, _ := json.Marshal(r["namespaceSelector"])
	path, _, _ := unstructured.NestedString(r, "clientConfig", "service", "path")
	if r["objectSelector"] != nil || path != "/mutate-required" || fmt.Sprint(r["failurePolicy"]) != "Fail" ||
		!strings.Contains(string(rsel), `"required"`) || !strings.Contains(string(rsel), `"kube-system"`) {
		t.Errorf("required webhook: path %q, selectors %s / %v, failurePolicy %v", path, rsel, r["objectSelector"], r["failurePolicy"])
	}
	// The injector injects the image it runs from.
	inj := find(base, "Deployment", "tether-injector")
	ctrs, _, _ := unstructured.NestedSlice(inj.Object, "spec", "template", "spec", "containers")
	c := ctrs[0].(map[string]any)
	env, _ := json.Marshal(c["env"])
	if !strings.Contains(string(env), `"value":"`+c["image"].(string)+`"`) {
		t.Errorf("TETHER_IMAGE %s is not the injector's image %s", env, c["image"])
	}

	cm := render(t, "overlays/cert-manager")
	if find(cm, "Certificate", "tether-injector") == nil || find(cm, "Issuer", "tether-root") == nil {
		t.Error("cert-manager overlay lacks the injector Certificate or the tether-root Issuer")
	}
	if find(cm, "ClusterRole", "tether-injector") != nil || find(cm, "Role", "tether-injector") != nil {
		t.Error("with cert-manager the injector needs no RBAC of its own")
	}
	cmw := find(cm, "MutatingWebhookConfiguration", "tether-injector")
	if cmw.GetAnnotations()["cert-manager.io/inject-ca-from"] != "tether-system/tether-injector" {
		t.Error("cert-manager overlay: no cainjector annotation on the webhook")
	}
	args, _ := json.Marshal(find(cm, "Deployment", "tether-ca").Object)
	if !strings.Contains(string(args), "--upstream-issuer=Issuer/tether-root") {
		t.Error("cert-manager overlay: tether-ca does not take its intermediate from tether-root")
	}
}

// TestManifestsApply server-side applies the base and the cert-manager
// overlay to a real API server.
func TestManifestsApply(t *testing.T) {
	env := kubetest.Start(t)
	a := newApplier(t, env)
	a.apply(t, render(t, "base"), false)
	if t.Failed() {
		return
	}
	env.InstallCRD(t, "testdata/cert-manager.io_issuers.yaml")
	env.InstallCRD(t, "testdata/cert-manager.io_certificates.yaml")
	a.apply(t, render(t, "overlays/cert-manager"), true)
	// Applying again changes nothing and is accepted (upgrades).
	a.apply(t, render(t, "base"), false)
}
