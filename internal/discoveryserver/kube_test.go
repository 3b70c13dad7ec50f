package discoveryserver

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	tetherv1alpha1 "github.com/tether-mesh/tether/api/tether/v1alpha1"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

func ptr[T any](v T) *T { return &v }

// docRBAC returns the ClusterRole and ClusterRoleBinding that
// docs/discovery.md gives under "Kubernetes permissions", so the test
// proves the documented permissions are enough.
func docRBAC(t *testing.T) (*rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "docs", "discovery.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(data), "\n## Kubernetes permissions\n")
	if !ok {
		t.Fatal("docs/discovery.md has no section Kubernetes permissions")
	}
	var block []string
	for _, line := range strings.Split(rest, "\n") {
		if code, ok := strings.CutPrefix(line, "    "); ok {
			block = append(block, code)
		} else if len(block) > 0 && strings.TrimSpace(line) != "" {
			break
		}
	}
	docs := strings.Split(strings.Join(block, "\n"), "\n---\n")
	if len(docs) != 2 {
		t.Fatalf("docs/discovery.md permissions block has %d YAML documents, want ClusterRole and ClusterRoleBinding", len(docs))
	}
	var role rbacv1.ClusterRole
	var binding rbacv1.ClusterRoleBinding
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &role); err != nil || role.Kind != "ClusterRole" {
		t.Fatalf("docs/discovery.md ClusterRole: %v (kind %q)", err, role.Kind)
	}
	if err := yaml.UnmarshalStrict([]byte(docs[1]), &binding); err != nil || binding.Kind != "ClusterRoleBinding" {
		t.Fatalf("docs/discovery.md ClusterRoleBinding: %v (kind %q)", err, binding.Kind)
	}
	return &role, &binding
}

// serviceAccountKubeconfig grants the documented RBAC to
// tether-system/tether-discovery and writes a kubeconfig that
// authenticates as it.
func serviceAccountKubeconfig(t *testing.T, env *kubetest.Env) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	role, binding := docRBAC(t)
	if _, err := env.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	rc := env.ServiceAccountConfig(t, "tether-system", "tether-discovery")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: rc.Host, CertificateAuthorityData: rc.CAData}
	cfg.AuthInfos["discovery"] = &clientcmdapi.AuthInfo{Token: rc.BearerToken}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "discovery"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestKubeMode runs discovery against a real kube-apiserver, with the
// permissions of docs/discovery.md: it is not ready before the
// AccessPolicy CRD exists, then serves each identity its scoped view of
// Services, EndpointSlices, Pods, Namespaces and AccessPolicies, and
// pushes changes within a second.
func TestKubeMode(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kubeconfig := serviceAccountKubeconfig(t, env)

	ca := startCA(t)
	cfg := baseConfig(t, ca, "")
	cfg.Registry, cfg.Kubeconfig, cfg.DefaultPolicy = RegistryKube, kubeconfig, "deny"
	s := startUnready(t, cfg)

	// Without the CRD the registry cannot sync: not ready, no xDS.
	testutil.Eventually(t, "discovery's SVID", 15*time.Second, func() bool { return s.Agent().Ready() == nil })
	time.Sleep(500 * time.Millisecond)
	if code, body := s.get(t, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "registry has not synced") {
		t.Fatalf("/readyz without the CRD = %d %q, want 503 registry has not synced", code, body)
	}

	env.InstallCRD(t, filepath.Join("..", "..", "manifests", "crds", "accesspolicies.tether.dev.yaml"))
	// With the RemoteService CRD, discovery watches remote services too:
	// the documented permissions must cover them.
	env.InstallCRD(t, filepath.Join("..", "..", "manifests", "crds", "remoteservices.tether.dev.yaml"))
	crdInstalled := time.Now()
	core := env.Client.CoreV1()
	env.EnsureMeshPod(t, "shop", "api", "api-1")
	env.EnsureMeshPod(t, "shop", "api", "api-2")
	env.EnsureMeshPod(t, "shop", "web", "web-1")
	api, err := core.Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	endpoint := func(addr, pod string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{
			Addresses:  []string{addr},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: pod},
		}
	}
	slicesAPI := env.Client.DiscoveryV1().EndpointSlices("shop")
	es, err := slicesAPI.Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "api-1", Labels: map[string]string{discoveryv1.LabelServiceName: "api"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{endpoint("10.1.0.1", "api-1")},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr[int32](8080), Protocol: ptr(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	policies := dc.Resource(policy.SchemeGroupVersionResource).Namespace("shop")
	pol := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": policy.SchemeGroupVersion.String(), "kind": policy.Kind,
		"metadata": map[string]any{"name": "web-to-api"},
		"spec": map[string]any{
			"destination": map[string]any{"service": "api", "ports": []any{int64(80)}},
			"sources":     []any{map[string]any{"serviceAccount": map[string]any{"name": "web"}}},
		},
	}}
	for { // the resource can be served a moment after Established
		_, err = policies.Create(ctx, pol, metav1.CreateOptions{})
		if !apierrors.IsNotFound(err) || ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("create AccessPolicy: %v", err)
	}

	testutil.Eventually(t, "ready once the CRD is installed", 60*time.Second, func() bool {
		code, _ := s.get(t, "/readyz")
		return code == http.StatusOK
	})
	t.Logf("ready %s after the CRD was installed", time.Since(crdInstalled).Round(time.Millisecond))
	// The first state may predate some of the objects: wait for all of them.
	testutil.Eventually(t, "registry with api's endpoint and the policy", 10*time.Second, func() bool {
		svc, ok := s.Registry().Snapshot().Service(discovery.ServiceKey{Namespace: "shop", Name: "api"})
		return ok && len(svc.Endpoints) == 1 && len(s.Registry().Snapshot().Policies()) == 1
	})
	webID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	apiID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/api")
	otherID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/other")

	web := connect(t, s, ca, webID)
	wv := web.subscribe()
	if got := wv.clusters(t); !slices.Equal(got, []string{"shop/api"}) {
		t.Fatalf("web's clusters = %v, want only shop/api", got)
	}
	if got := wv.sans(t, "shop/api"); !slices.Equal(got, []string{apiID.String()}) {
		t.Errorf("shop/api accepts servers %v, want %s (the Pods' ServiceAccount)", got, apiID)
	}
	if got := wv.endpoints(t, "shop/api"); !slices.Equal(got, []string{"10.1.0.1:8080"}) {
		t.Errorf("shop/api endpoints = %v, want 10.1.0.1:8080", got)
	}
	if nt := wv.names(t); len(nt.Services) != 1 || nt.Services[0].Fqdn != "api.shop.svc.cluster.local." ||
		!slices.Equal(nt.Services[0].Addresses, api.Spec.ClusterIPs) {
		t.Errorf("web's name table services = %v, want api.shop.svc.cluster.local. at %v", nt.Services, api.Spec.ClusterIPs)
	}
	av := connect(t, s, ca, apiID).subscribe()
	if got := av.principals(t, "inbound|15006"); !slices.Equal(got, []string{"exact:" + webID.String()}) {
		t.Errorf("api's inbound principals = %v, want only web", got)
	}
	other := connect(t, s, ca, otherID)
	ov := other.subscribe()
	if got := ov.clusters(t); len(got) != 0 {
		t.Errorf("an identity no policy names learns clusters %v", got)
	}
	if nt := ov.names(t); len(nt.Services) != 0 {
		t.Errorf("an identity no policy names learns names %v", nt.Services)
	}

	// A new endpoint reaches web within a second.
	es.Endpoints = append(es.Endpoints, endpoint("10.1.0.2", "api-2"))
	if _, err := slicesAPI.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	took := web.waitFor(wv, "the new endpoint at web", time.Second, func(v view) bool {
		return slices.Equal(v.endpoints(t, "shop/api"), []string{"10.1.0.1:8080", "10.1.0.2:8080"})
	})
	t.Logf("EndpointSlice update reached the sidecar in %s", took)
	if got := s.metric(t, "tether_discovery_registry_endpoints"); got != 2 {
		t.Errorf("endpoints metric = %v, want 2", got)
	}

	// Deleting the policy: deny by default, web loses api within a second.
	if err := policies.Delete(ctx, "web-to-api", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	took = web.waitFor(wv, "web losing api", time.Second, func(v view) bool { return len(v.clusters(t)) == 0 })
	t.Logf("AccessPolicy deletion reached the sidecar in %s", took)

	// The namespace annotation opens shop to the mesh: other gains api.
	patch := []byte(`{"metadata":{"annotations":{"` + policy.DefaultPolicyAnnotation + `":"allow-mesh"}}}`)
	if _, err := core.Namespaces().Patch(ctx, "shop", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	took = other.waitFor(ov, "other gaining api", time.Second, func(v view) bool {
		return slices.Equal(v.clusters(t), []string{"shop/api"})
	})
	t.Logf("namespace annotation reached the sidecar in %s", took)

	if got := s.metric(t, "tether_discovery_xds_streams"); got != 3 {
		t.Errorf("xds streams = %v, want 3", got)
	}
	if got := s.metric(t, "tether_discovery_registry_reload_errors_total"); got != 0 {
		t.Errorf("reload errors = %v, want 0", got)
	}
	// The RemoteService CRD came after discovery started: it watches
	// RemoteServices within its poll (10s), with the documented
	// permissions (without them the informer cannot sync).
	remote := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": tetherv1alpha1.SchemeGroupVersion.String(), "kind": "RemoteService",
		"metadata": map[string]any{"name": "pay", "namespace": "shop"},
		"spec": map[string]any{
			"trustDomain": "b.example",
			"ports":       []any{map[string]any{"port": int64(443)}},
			"endpoints":   []any{map[string]any{"address": "192.0.2.10", "port": int64(15006), "identity": "spiffe://b.example/ns/pay/sa/api"}},
		},
	}}
	if _, err := dc.Resource(tetherv1alpha1.RemoteServiceGVR).Namespace("shop").Create(ctx, remote, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create RemoteService: %v", err)
	}
	testutil.Eventually(t, "the RemoteService in the registry", 30*time.Second, func() bool {
		svc, ok := s.Registry().Snapshot().Service(discovery.ServiceKey{Namespace: "shop", Name: "pay"})
		return ok && svc.Remote.Name() == "b.example"
	})
}
