package kubesource

import (
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	tetherv1alpha1 "github.com/tether-mesh/tether/api/tether/v1alpha1"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

func remoteObj(ns, name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": tetherv1alpha1.SchemeGroupVersion.String(), "kind": "RemoteService",
		"metadata": map[string]any{"namespace": ns, "name": name}, "spec": spec,
	}}
}

func remoteSpec(mod func(map[string]any)) map[string]any {
	s := map[string]any{
		"trustDomain": "b.example",
		"ports":       []any{map[string]any{"port": int64(443), "targetPort": int64(8443), "name": "https"}},
		"endpoints": []any{map[string]any{
			"address": "192.0.2.10", "port": int64(15006), "identity": "spiffe://b.example/ns/pay/sa/api",
		}},
	}
	if mod != nil {
		mod(s)
	}
	return s
}

func endpoint(addr string, port int64, id string) map[string]any {
	return map[string]any{"address": addr, "port": port, "identity": id}
}

// TestKubeSourceRemoteServices installs the generated RemoteService CRD in
// a real kube-apiserver: its schema and CEL rules refuse each malformed
// object for its reason; discovery serves a good one as a service of
// b.example, and leaves out, with the reason logged and kept in the
// snapshot, one named like a Kubernetes Service of its namespace (a
// Service outside the mesh too) and one of this mesh's own trust domain
// (which the CRD cannot know).
func TestKubeSourceRemoteServices(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	crds := filepath.Join("..", "..", "..", "manifests", "crds")
	env.InstallCRD(t, filepath.Join(crds, "accesspolicies.tether.dev.yaml"))
	env.EnsureNamespace(t, "shop")

	// Discovery starts before the RemoteService CRD is installed (a chart
	// upgrade does not install new CRDs): it serves the rest, says so, and
	// watches RemoteServices once the CRD is there.
	reg, err := discovery.NewRegistry(td, policy.AllowMesh)
	if err != nil {
		t.Fatal(err)
	}
	logw := &testLogWriter{t: t}
	defer logw.stop()
	src := &KubeSource{Client: env.Client, Dynamic: dc, Debounce: 20 * time.Millisecond, CRDPoll: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logw, nil))}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(runCtx, reg) }()
	defer func() { stop(); <-done }()
	for reg.Snapshot().Version() == 0 {
		select {
		case <-reg.Changed():
		case <-ctx.Done():
			t.Fatal("no snapshot without the RemoteService CRD")
		}
	}
	if !logw.contains("the RemoteService CRD is not installed") {
		t.Error("discovery does not say that the RemoteService CRD is missing")
	}
	env.InstallCRD(t, filepath.Join(crds, "remoteservices.tether.dev.yaml"))
	remotes := dc.Resource(tetherv1alpha1.RemoteServiceGVR)
	create := func(obj *unstructured.Unstructured) error {
		for {
			_, err := remotes.Namespace(obj.GetNamespace()).Create(ctx, obj, metav1.CreateOptions{})
			if !apierrors.IsNotFound(err) || ctx.Err() != nil {
				return err
			}
			time.Sleep(50 * time.Millisecond) // the CRD is established, its endpoint not served yet
		}
	}

	for _, tc := range []struct {
		name string
		mod  func(map[string]any)
		want string
	}{
		{"no-trust-domain", func(s map[string]any) { delete(s, "trustDomain") }, "spec.trustDomain: Required"},
		{"identity-outside", func(s map[string]any) {
			s["endpoints"] = []any{endpoint("192.0.2.10", 15006, "spiffe://c.example/api")}
		}, "every endpoint's identity must be a SPIFFE ID in spec.trustDomain"},
		{"identity-prefix-trick", func(s map[string]any) {
			s["endpoints"] = []any{endpoint("192.0.2.10", 15006, "spiffe://b.example.evil.example/api")}
		}, "every endpoint's identity must be a SPIFFE ID in spec.trustDomain"},
		{"no-identity", func(s map[string]any) {
			s["endpoints"] = []any{map[string]any{"address": "192.0.2.10", "port": int64(15006)}}
		}, "spec.endpoints[0].identity: Required"},
		{"bad-identity", func(s map[string]any) {
			s["endpoints"] = []any{endpoint("192.0.2.10", 15006, "https://b.example/api")}
		}, "spec.endpoints[0].identity"},
		{"hostname-address", func(s map[string]any) {
			s["endpoints"] = []any{endpoint("api.b.example", 15006, "spiffe://b.example/api")}
		}, "must be a unicast IP address"},
		{"loopback-endpoint", func(s map[string]any) {
			s["endpoints"] = []any{endpoint("127.0.0.1", 15006, "spiffe://b.example/api")}
		}, "must be a unicast IP address"},
		{"no-port", func(s map[string]any) {
			s["endpoints"] = []any{map[string]any{"address": "192.0.2.10", "identity": "spiffe://b.example/api"}}
		}, "spec.endpoints[0].port: Required"},
		{"port-out-of-range", func(s map[string]any) {
			s["endpoints"] = []any{endpoint("192.0.2.10", 70000, "spiffe://b.example/api")}
		}, "spec.endpoints[0].port"},
		{"no-endpoints", func(s map[string]any) { s["endpoints"] = []any{} }, "spec.endpoints"},
		{"no-ports", func(s map[string]any) { s["ports"] = []any{} }, "spec.ports"},
		{"duplicate-ports", func(s map[string]any) {
			s["ports"] = []any{map[string]any{"port": int64(80)}, map[string]any{"port": int64(80), "targetPort": int64(81)}}
		}, "Duplicate value"},
		{"duplicate-port-names", func(s map[string]any) {
			s["ports"] = []any{map[string]any{"port": int64(80), "name": "web"}, map[string]any{"port": int64(81), "name": "web"}}
		}, "port names must be unique"},
		{"port-zero", func(s map[string]any) { s["ports"] = []any{map[string]any{"port": int64(0)}} }, "spec.ports[0].port"},
		{"loopback-address", func(s map[string]any) { s["addresses"] = []any{"127.0.0.9"} }, "must be a unicast IP address (not loopback"},
		{"bad-address", func(s map[string]any) { s["addresses"] = []any{"10.0.0.300"} }, "must be a unicast IP address"},
		{"unknown-field", func(s map[string]any) { s["gateway"] = "x" }, `unknown field "spec.gateway"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obj := remoteObj("shop", tc.name, remoteSpec(tc.mod))
			_, err := remotes.Namespace("shop").Create(ctx, obj, metav1.CreateOptions{FieldValidation: "Strict"})
			if err == nil {
				t.Fatalf("the API server stored %s", tc.name)
			}
			t.Logf("refused: %v", err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("refused with %q, want it to say %q", err, tc.want)
			}
		})
	}

	// A Service outside the mesh (no endpoints with the sidecar) holds
	// shop/web: a RemoteService named web does not take its name.
	if _, err := env.Client.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 443}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, o := range []*unstructured.Unstructured{
		remoteObj("shop", "pay", remoteSpec(func(s map[string]any) { s["addresses"] = []any{"10.200.0.7"} })),
		remoteObj("shop", "web", remoteSpec(nil)),
		remoteObj("shop", "own", remoteSpec(func(s map[string]any) {
			s["trustDomain"] = "cluster.local"
			s["endpoints"] = []any{endpoint("192.0.2.12", 15006, "spiffe://cluster.local/ns/shop/sa/api")}
		})),
	} {
		if err := create(o); err != nil {
			t.Fatalf("create %s: %v", o.GetName(), err)
		}
	}

	payKey := discovery.ServiceKey{Namespace: "shop", Name: "pay"}
	waitSnap := func(what string, cond func(*discovery.Snapshot) bool) *discovery.Snapshot {
		t.Helper()
		for {
			snap := reg.Snapshot()
			if cond(snap) {
				return snap
			}
			select {
			case <-snap.Changed():
			case <-ctx.Done():
				t.Fatalf("timed out waiting for %s; services %v, refused %v", what, snap.Services(), snap.RefusedRemoteServices())
			}
		}
	}
	snap := waitSnap("shop/pay served, shop/web and shop/own refused", func(s *discovery.Snapshot) bool {
		_, ok := s.Service(payKey)
		return ok && len(s.RefusedRemoteServices()) == 2
	})
	pay, _ := snap.Service(payKey)
	if pay.Remote.Name() != "b.example" || !slices.Equal(pay.ClusterIPs, []netip.Addr{netip.MustParseAddr("10.200.0.7")}) ||
		len(pay.Ports) != 1 || pay.Ports[0].Port != 443 || pay.Ports[0].TargetPort != 8443 ||
		len(pay.Endpoints) != 1 || pay.Endpoints[0].Port != 15006 || pay.Endpoints[0].ID.String() != "spiffe://b.example/ns/pay/sa/api" {
		t.Errorf("shop/pay = %+v", pay)
	}
	if _, ok := snap.Service(discovery.ServiceKey{Namespace: "shop", Name: "web"}); ok {
		t.Error("the RemoteService shop/web is served although a Kubernetes Service has the name")
	}
	reasons := map[string]string{}
	for _, f := range snap.RefusedRemoteServices() {
		reasons[f.Key.String()] = f.Reason
	}
	if !strings.Contains(reasons["shop/web"], "a Kubernetes Service shop/web has the name") {
		t.Errorf("shop/web refusal = %q", reasons["shop/web"])
	}
	if !strings.Contains(reasons["shop/own"], "trustDomain cluster.local is this mesh's own") {
		t.Errorf("shop/own refusal = %q", reasons["shop/own"])
	}
	if !logw.contains("remote service refused", "shop/web", "has the name") {
		t.Error("the refusal of shop/web is not logged")
	}

	// Deleting it stops serving it; deleting the Service lets web in.
	if err := remotes.Namespace("shop").Delete(ctx, "pay", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.CoreV1().Services("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitSnap("pay gone and web served", func(s *discovery.Snapshot) bool {
		_, pay := s.Service(payKey)
		web, ok := s.Service(discovery.ServiceKey{Namespace: "shop", Name: "web"})
		return !pay && ok && !web.Remote.IsZero()
	})
}
