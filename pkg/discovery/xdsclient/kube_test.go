package xdsclient_test

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/kubesource"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/discovery/xdsclient"
)

func ptr[T any](v T) *T { return &v }

func accessPolicy(name, service string, ports []any, sa string) *unstructured.Unstructured {
	spec := map[string]any{
		"destination": map[string]any{"service": service},
		"sources":     []any{map[string]any{"serviceAccount": map[string]any{"name": sa}}},
	}
	if ports != nil {
		spec["destination"].(map[string]any)["ports"] = ports
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": policy.SchemeGroupVersion.String(), "kind": policy.Kind,
		"metadata": map[string]any{"name": name, "namespace": "shop"},
		"spec":     spec,
	}}
}

// TestClientAgainstKubernetes: objects created through a real
// kube-apiserver reach a KubeSource, a Registry, tether-discovery's xDS
// server and the client's View, which matches the registry and follows an
// AccessPolicy change within a second.
func TestClientAgainstKubernetes(t *testing.T) {
	env := kubetest.Start(t)
	env.InstallCRD(t, filepath.Join("..", "..", "..", "manifests", "crds", "accesspolicies.tether.dev.yaml"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}

	env.EnsureMeshPod(t, "shop", "web", "web-1")
	env.EnsureMeshPod(t, "shop", "api", "api-1")
	core := env.Client.CoreV1()
	svc := func(name string) *corev1.Service {
		s, err := core.Services("shop").Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	apiSvc := svc("api")
	webSvc := svc("web")
	slice := func(name, addr, pod string) {
		_, err := env.Client.DiscoveryV1().EndpointSlices("shop").Create(ctx, &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{
				Addresses:  []string{addr},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: pod},
			}},
			Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr[int32](8080), Protocol: ptr(corev1.ProtocolTCP)}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	slice("api", "10.1.0.1", "api-1")
	slice("web", "10.1.0.2", "web-1")
	policies := dc.Resource(policy.SchemeGroupVersionResource).Namespace("shop")
	for { // the resource can be served a moment after Established
		_, err = policies.Create(ctx, accessPolicy("api-from-web", "api", []any{int64(80)}, "web"), metav1.CreateOptions{})
		if !apierrors.IsNotFound(err) || ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("create AccessPolicy: %v", err)
	}

	// KubeSource → Registry (mesh default deny) → xDS server → client.
	reg, err := discovery.NewRegistry(testutil.TrustDomain, wire.Deny)
	if err != nil {
		t.Fatal(err)
	}
	srcCtx, stopSrc := context.WithCancel(ctx)
	srcDone := make(chan error, 1)
	go func() {
		srcDone <- (&kubesource.KubeSource{Client: env.Client, Dynamic: dc, Debounce: 50 * time.Millisecond,
			Logger: slog.New(slog.DiscardHandler)}).Run(srcCtx, reg)
	}()
	defer func() {
		stopSrc()
		if err := <-srcDone; err != nil {
			t.Errorf("KubeSource.Run = %v", err)
		}
	}()

	p := newPKI(t)
	d := startDiscovery(t, p, reg, "")
	c := runClient(t, p, d.addr, webID, nil)

	v, took := c.waitView(t, 30*time.Second, "shop/api reachable", func(v *xdsclient.View) bool {
		_, err := v.Outbound(apiKey, 80)
		return err == nil
	})
	t.Logf("first view with shop/api after %s", took.Round(time.Millisecond))

	t.Run("view matches the registry", func(t *testing.T) {
		want, err := xdsclient.NewViewFor(webID, resources(t, reg.Snapshot(), webID))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := keys(v.Services()), keys(want.Services()); !slices.Equal(got, want) {
			t.Fatalf("services = %v, want %v", got, want)
		}
		api, _ := v.Service(apiKey)
		var clusterIPs []netip.Addr
		for _, a := range apiSvc.Spec.ClusterIPs {
			clusterIPs = append(clusterIPs, netip.MustParseAddr(a))
		}
		if len(clusterIPs) == 0 || !slices.Equal(api.Addrs, clusterIPs) {
			t.Errorf("api addrs = %v, want the Service's ClusterIPs %v", api.Addrs, clusterIPs)
		}
		if !slices.Equal(api.IDs, []spiffeid.ID{apiID}) {
			t.Errorf("api IDs = %v, want [%s] (from pod api-1's service account)", api.IDs, apiID)
		}
		wantPort := xdsclient.Port{Name: "http", Port: 80, TargetPort: 8080, Allowed: true, Rule: "AccessPolicy shop/api-from-web"}
		if !slices.Equal(api.Ports, []xdsclient.Port{wantPort}) {
			t.Errorf("api ports = %+v, want [%+v]", api.Ports, wantPort)
		}
		dst, err := v.Outbound(apiKey, 80)
		if err != nil || dst.Addr != "10.1.0.1:8080" || dst.Port != 8080 {
			t.Errorf("Outbound(api:80) = %+v, %v", dst, err)
		}
		if svc, port, ok := v.LookupAddr(netip.AddrPortFrom(clusterIPs[0], 80)); !ok || svc.Key != apiKey || port.TargetPort != 8080 {
			t.Errorf("LookupAddr(ClusterIP:80) = %v %+v %v", svc.Key, port, ok)
		}
		if rec, ok := v.Lookup("api.shop.svc.cluster.local."); !ok || !rec.Reachable || !slices.Equal(rec.Addrs, clusterIPs) {
			t.Errorf("Lookup(api) = %+v, %v", rec, ok)
		}
		// web itself: no policy names it and shop has no default, so the
		// mesh default deny lets nobody in, and web may not call itself.
		// The view holds no form of a hidden service's name, only its
		// addresses.
		if rec, ok := v.Lookup("web.shop.svc.cluster.local."); ok {
			t.Errorf("Lookup(web) = %+v, want no entry (hidden)", rec)
		}
		if ip := netip.MustParseAddr(webSvc.Spec.ClusterIP); !v.HiddenAddr(ip) {
			t.Errorf("HiddenAddr(web's ClusterIP %s) = false, want true", ip)
		}
		if d := v.Authorize(apiID, 8080); d.Allowed {
			t.Errorf("web's inbound lets api in under deny: %+v", d)
		}
	})

	// An AccessPolicy change reaches the view within a second.
	pol, err := policies.Get(ctx, "api-from-web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := unstructured.SetNestedSlice(pol.Object, []any{map[string]any{"serviceAccount": map[string]any{"name": "other"}}}, "spec", "sources"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := policies.Update(ctx, pol, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitView(t, 5*time.Second, "shop/api unreachable", func(v *xdsclient.View) bool {
		_, err := v.Outbound(apiKey, 80)
		_, ok := v.Lookup("api.shop.svc.cluster.local.")
		return errors.Is(err, xdsclient.ErrUnknownService) && !ok && v.HiddenAddr(netip.MustParseAddr(apiSvc.Spec.ClusterIP))
	})
	if took := time.Since(start); took > time.Second {
		t.Errorf("the policy change took %s to reach the view, want < 1s", took)
	} else {
		t.Logf("policy change (api no longer reachable) reached the view after %s", took.Round(time.Millisecond))
	}

	// A new AccessPolicy for web's own service changes its inbound rules.
	start = time.Now()
	if _, err := policies.Create(ctx, accessPolicy("web-from-api", "web", nil, "api"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitView(t, 5*time.Second, "api allowed into web", func(v *xdsclient.View) bool {
		return v.Authorize(apiID, 8080).Allowed
	})
	if took := time.Since(start); took > time.Second {
		t.Errorf("the new policy took %s to reach the view, want < 1s", took)
	} else {
		t.Logf("new policy (api → web) reached the view after %s", took.Round(time.Millisecond))
	}
	if d := c.View().Authorize(testutil.ID("/ns/shop/sa/other"), 8080); d.Allowed {
		t.Errorf("web's inbound lets in a source no policy names: %+v", d)
	}
}
