package kubesource

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
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
	"k8s.io/client-go/tools/cache"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/inject"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// testLogWriter sends log lines to t.Log until the test stops it, and
// keeps them for contains.
type testLogWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
	all  bytes.Buffer
}

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all.Write(p)
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testLogWriter) stop() { w.mu.Lock(); w.done = true; w.mu.Unlock() }

// contains reports whether a line logged so far contains every one of parts.
func (w *testLogWriter) contains(parts ...string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for line := range strings.Lines(w.all.String()) {
		found := true
		for _, p := range parts {
			found = found && strings.Contains(line, p)
		}
		if found {
			return true
		}
	}
	return false
}

func ptr[T any](v T) *T { return &v }

func kubeSlice(ns, name, svc string, eps []discoveryv1.Endpoint, ports ...discoveryv1.EndpointPort) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports:       ports,
	}
}

func kubeEndpoint(addr, ns, pod string, ready *bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{addr},
		Conditions: discoveryv1.EndpointConditions{Ready: ready},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod},
	}
}

// TestKubeSource runs a KubeSource against a real kube-apiserver: it checks
// that the first snapshot maps Services, EndpointSlices, Pods, Namespaces
// and AccessPolicies, keeping only the Services and endpoints of Pods with
// the sidecar, then that each change reaches a new snapshot in under a
// second.
func TestKubeSource(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	logw := &testLogWriter{t: t}
	defer logw.stop()
	logger := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug}))

	// Without the CRD the policy informer cannot sync: Run says so.
	t.Run("not synced", func(t *testing.T) {
		reg, err := discovery.NewRegistry(td, policy.AllowMesh)
		if err != nil {
			t.Fatal(err)
		}
		c, stop := context.WithTimeout(ctx, time.Second)
		defer stop()
		src := &KubeSource{Client: env.Client, Dynamic: dc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		err = src.Run(c, reg)
		if !errors.Is(err, ErrNotSynced) || !strings.Contains(err.Error(), "accesspolicies.tether.dev") ||
			strings.Contains(err.Error(), "services") {
			t.Fatalf("Run = %v, want ErrNotSynced naming only accesspolicies.tether.dev", err)
		}
		t.Logf("Run: %v", err)
	})

	env.InstallCRD(t, filepath.Join("..", "..", "..", "manifests", "crds", "accesspolicies.tether.dev.yaml"))
	core := env.Client.CoreV1()
	if _, err := core.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "shop", Annotations: map[string]string{DefaultPolicyAnnotation: "deny"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	env.EnsureMeshPod(t, "shop", "api", "api-1")
	env.EnsureMeshPod(t, "shop", "api", "api-2")
	env.EnsureMeshPod(t, "shop", "db", "db-1")
	env.EnsureMeshPod(t, "web", "frontend", "front-1")
	// Outside the mesh: legacy/plain's pod has no sidecar (an unlabelled
	// namespace); shop/cart is being rolled out with the sidecar, cart-1 has
	// it and cart-old not yet.
	env.EnsurePod(t, "legacy", "plain", "plain-1")
	env.EnsureMeshPod(t, "shop", "cart", "cart-1")
	env.EnsurePod(t, "shop", "cart", "cart-old")

	api, err := core.Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), AppProtocol: ptr("http")},
			{Name: "grpc", Port: 9090, TargetPort: intstr.FromString("grpc-port"), AppProtocol: ptr("kubernetes.io/h2c")},
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := core.Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "db"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "pg", Port: 5432}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	esAPI := kubeSlice("shop", "api-1", "api", []discoveryv1.Endpoint{
		kubeEndpoint("10.1.0.1", "shop", "api-1", ptr(true)),
		kubeEndpoint("10.1.0.9", "shop", "ghost", ptr(true)), // no such Pod yet
	},
		discoveryv1.EndpointPort{Name: ptr("http"), Port: ptr[int32](8080), Protocol: ptr(corev1.ProtocolTCP)},
		discoveryv1.EndpointPort{Name: ptr("grpc"), Port: ptr[int32](9091), Protocol: ptr(corev1.ProtocolTCP)},
	)
	slicesAPI := env.Client.DiscoveryV1().EndpointSlices("shop")
	if esAPI, err = slicesAPI.Create(ctx, esAPI, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := slicesAPI.Create(ctx, kubeSlice("shop", "db-1", "db", []discoveryv1.Endpoint{
		kubeEndpoint("10.1.0.3", "shop", "db-1", nil), // nil ready = ready
	}, discoveryv1.EndpointPort{Name: ptr("pg"), Port: ptr[int32](5432)}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	httpPort := corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}
	for _, svc := range []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "legacy", Name: "plain"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{httpPort}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{httpPort}}},
	} {
		if _, err := core.Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The API server's own Service: its endpoints have no targetRef. (The
	// test API server does not write them: this is what a cluster's looks
	// like.)
	apiServerEndpoint := discoveryv1.Endpoint{Addresses: []string{"192.0.2.10"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}}
	for _, es := range []*discoveryv1.EndpointSlice{
		kubeSlice("default", "kubernetes", "kubernetes", []discoveryv1.Endpoint{apiServerEndpoint},
			discoveryv1.EndpointPort{Name: ptr("https"), Port: ptr[int32](6443), Protocol: ptr(corev1.ProtocolTCP)}),
		kubeSlice("legacy", "plain-1", "plain", []discoveryv1.Endpoint{kubeEndpoint("10.2.0.1", "legacy", "plain-1", ptr(true))}),
		kubeSlice("shop", "cart-1", "cart", []discoveryv1.Endpoint{
			kubeEndpoint("10.1.0.21", "shop", "cart-1", ptr(true)),
			kubeEndpoint("10.1.0.20", "shop", "cart-old", ptr(true)),
		}),
	} {
		if _, err := env.Client.DiscoveryV1().EndpointSlices(es.Namespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	policies := dc.Resource(policy.SchemeGroupVersionResource).Namespace("shop")
	pol := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": policy.SchemeGroupVersion.String(), "kind": policy.Kind,
		"metadata": map[string]any{"name": "frontend-to-api"},
		"spec": map[string]any{
			"destination": map[string]any{"service": "api", "ports": []any{int64(80)}},
			"sources":     []any{map[string]any{"serviceAccount": map[string]any{"name": "frontend", "namespace": "web"}}},
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

	reg, err := discovery.NewRegistry(td, policy.AllowMesh)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	go func() {
		runErr <- (&KubeSource{Client: env.Client, Dynamic: dc, Debounce: 100 * time.Millisecond, Logger: logger}).Run(runCtx, reg)
	}()
	defer func() {
		stopRun()
		if err := <-runErr; err != nil {
			t.Errorf("Run = %v after cancel, want nil", err)
		}
	}()

	frontend := spiffeid.RequireFromString("spiffe://cluster.local/ns/web/sa/frontend")
	apiID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/api")
	dbID := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/db")
	addrs := func(s *discovery.Snapshot, key discovery.ServiceKey) []string {
		svc, ok := s.Service(key)
		if !ok {
			return nil
		}
		var out []string
		for _, e := range svc.Endpoints {
			out = append(out, e.Addr.String()+"="+e.ServiceAccount)
		}
		return out
	}
	apiKey, dbKey := discovery.ServiceKey{Namespace: "shop", Name: "api"}, discovery.ServiceKey{Namespace: "shop", Name: "db"}
	plainKey, cartKey := discovery.ServiceKey{Namespace: "legacy", Name: "plain"}, discovery.ServiceKey{Namespace: "shop", Name: "cart"}
	kubernetesKey := discovery.ServiceKey{Namespace: "default", Name: "kubernetes"}
	allowed := func(s *discovery.Snapshot, src spiffeid.ID, key discovery.ServiceKey, port uint16) bool {
		return s.Engine().Decide(src, key.Namespace, key.Name, port).Allowed
	}

	// waitFor waits up to limit for a snapshot satisfying ok.
	waitFor := func(t *testing.T, limit time.Duration, ok func(*discovery.Snapshot) bool) (*discovery.Snapshot, time.Duration) {
		t.Helper()
		start := time.Now()
		deadline := time.After(limit)
		for {
			s := reg.Snapshot()
			if ok(s) {
				return s, time.Since(start)
			}
			select {
			case <-s.Changed():
			case <-deadline:
				t.Fatalf("no matching snapshot within %v; last (version %d): services %+v namespace defaults %v policies %d",
					limit, s.Version(), s.Services(), s.NamespaceDefaults(), len(s.Policies()))
			}
		}
	}

	s, took := waitFor(t, 15*time.Second, func(s *discovery.Snapshot) bool {
		_, ok := s.Service(dbKey)
		return len(addrs(s, apiKey)) > 0 && ok && len(s.Policies()) == 1
	})
	t.Logf("first full snapshot (version %d) after %v", s.Version(), took)

	t.Run("initial snapshot", func(t *testing.T) {
		svc, _ := s.Service(apiKey)
		var wantIPs []netip.Addr
		for _, a := range api.Spec.ClusterIPs {
			wantIPs = append(wantIPs, netip.MustParseAddr(a))
		}
		if len(wantIPs) == 0 || !reflect.DeepEqual(svc.ClusterIPs, wantIPs) {
			t.Errorf("api cluster IPs = %v, want %v", svc.ClusterIPs, wantIPs)
		}
		wantPorts := []discovery.Port{
			{Name: "http", Port: 80, TargetPort: 8080, AppProtocol: "http"},
			{Name: "grpc", Port: 9090, TargetPort: 9091, AppProtocol: "kubernetes.io/h2c"}, // named, from the slice
		}
		if !reflect.DeepEqual(svc.Ports, wantPorts) {
			t.Errorf("api ports = %+v, want %+v (UDP dropped)", svc.Ports, wantPorts)
		}
		if got, want := addrs(s, apiKey), []string{"10.1.0.1=api"}; !reflect.DeepEqual(got, want) {
			t.Errorf("api endpoints = %v, want %v (ghost Pod skipped)", got, want)
		}
		if svc.Endpoints[0].Pod != "api-1" {
			t.Errorf("endpoint pod = %q, want api-1", svc.Endpoints[0].Pod)
		}
		if got := svc.Identities(td); !reflect.DeepEqual(got, []spiffeid.ID{apiID}) {
			t.Errorf("api identities = %v, want %v", got, apiID)
		}
		db, _ := s.Service(dbKey)
		if len(db.ClusterIPs) != 0 {
			t.Errorf("headless db cluster IPs = %v, want none", db.ClusterIPs)
		}
		if got := db.Identities(td); !reflect.DeepEqual(got, []spiffeid.ID{dbID}) {
			t.Errorf("db identities = %v, want %v (nil ready counts as ready)", got, dbID)
		}
		// Only Services with a Pod of the mesh behind them are mesh services.
		for _, key := range []discovery.ServiceKey{plainKey, kubernetesKey} {
			if svc, ok := s.Service(key); ok {
				t.Errorf("%s is in the registry (%+v), want it left out: no endpoint is a Pod with the sidecar", key, svc)
			}
		}
		if got, want := addrs(s, cartKey), []string{"10.1.0.21=cart"}; !reflect.DeepEqual(got, want) {
			t.Errorf("cart endpoints = %v, want %v (cart-old has no sidecar)", got, want)
		}
		if !logw.contains("service has endpoints without the sidecar", "service=shop/cart", "with_sidecar=1", "without_sidecar=1") {
			t.Errorf("no Debug line about shop/cart's endpoints without the sidecar")
		}
		var keys []discovery.ServiceKey
		for _, svc := range s.Services() {
			keys = append(keys, svc.Key)
		}
		if want := []discovery.ServiceKey{apiKey, cartKey, dbKey}; !reflect.DeepEqual(keys, want) {
			t.Errorf("services = %v, want %v", keys, want)
		}
		if got := s.NamespaceDefaults(); !reflect.DeepEqual(got, map[string]policy.Default{"shop": policy.Deny}) {
			t.Errorf("namespace defaults = %v", got)
		}
		for _, c := range []struct {
			src  spiffeid.ID
			key  discovery.ServiceKey
			port uint16
			want bool
		}{
			{frontend, apiKey, 80, true},    // the policy
			{frontend, apiKey, 9090, false}, // the policy names port 80 only
			{apiID, dbKey, 5432, false},     // namespace default deny
			{frontend, dbKey, 5432, false},
		} {
			if got := allowed(s, c.src, c.key, c.port); got != c.want {
				t.Errorf("%s -> %s:%d allowed = %v, want %v", c.src, c.key, c.port, got, c.want)
			}
		}
	})

	// Each change must reach a snapshot within a second.
	changes := []struct {
		name   string
		change func(t *testing.T)
		ok     func(*discovery.Snapshot) bool
	}{
		{"add endpoint", func(t *testing.T) {
			esAPI.Endpoints = append(esAPI.Endpoints, kubeEndpoint("10.1.0.2", "shop", "api-2", ptr(true)))
			var err error
			if esAPI, err = slicesAPI.Update(ctx, esAPI, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}, func(s *discovery.Snapshot) bool {
			return reflect.DeepEqual(addrs(s, apiKey), []string{"10.1.0.1=api", "10.1.0.2=api"})
		}},
		{"pod appears", func(t *testing.T) {
			env.EnsureMeshPod(t, "shop", "api", "ghost")
		}, func(s *discovery.Snapshot) bool {
			return reflect.DeepEqual(addrs(s, apiKey), []string{"10.1.0.1=api", "10.1.0.2=api", "10.1.0.9=api"})
		}},
		{"endpoint not ready", func(t *testing.T) {
			esAPI.Endpoints[0].Conditions.Ready = ptr(false)
			var err error
			if esAPI, err = slicesAPI.Update(ctx, esAPI, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}, func(s *discovery.Snapshot) bool {
			return reflect.DeepEqual(addrs(s, apiKey), []string{"10.1.0.2=api", "10.1.0.9=api"})
		}},
		{"delete policy", func(t *testing.T) {
			if err := policies.Delete(ctx, "frontend-to-api", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}, func(s *discovery.Snapshot) bool {
			return len(s.Policies()) == 0 && !allowed(s, frontend, apiKey, 80) // shop default deny
		}},
		{"annotation to allow-mesh", func(t *testing.T) { setAnnotation(ctx, t, env, "allow-mesh") },
			func(s *discovery.Snapshot) bool {
				return s.NamespaceDefaults()["shop"] == policy.AllowMesh && allowed(s, frontend, apiKey, 80)
			}},
		{"annotation to same-namespace", func(t *testing.T) { setAnnotation(ctx, t, env, "same-namespace") },
			func(s *discovery.Snapshot) bool {
				return s.NamespaceDefaults()["shop"] == policy.SameNamespace &&
					!allowed(s, frontend, apiKey, 80) && allowed(s, dbID, apiKey, 80)
			}},
		// Audit mode: same-namespace only reports; the mesh default
		// (allow-mesh) lets frontend in, audit-denied.
		{"mode annotation audit", func(t *testing.T) { setNSAnnotation(ctx, t, env, policy.DefaultModeAnnotation, "audit") },
			func(s *discovery.Snapshot) bool {
				d := s.Engine().Decide(frontend, apiKey.Namespace, apiKey.Name, 80)
				return s.NamespaceDefaultModes()["shop"] == policy.Audit && d.Allowed && d.AuditDenied &&
					strings.Contains(d.AuditRule, "namespace default same-namespace (annotation tether.dev/default-policy on shop, audit mode)")
			}},
		{"mode annotation enforce", func(t *testing.T) { setNSAnnotation(ctx, t, env, policy.DefaultModeAnnotation, "enforce") },
			func(s *discovery.Snapshot) bool {
				return s.NamespaceDefaultModes()["shop"] == policy.Enforce && !allowed(s, frontend, apiKey, 80)
			}},
		// An invalid mode is dropped: the default is enforced (audit
		// would let through what it denies).
		{"mode annotation back to audit", func(t *testing.T) { setNSAnnotation(ctx, t, env, policy.DefaultModeAnnotation, "audit") },
			func(s *discovery.Snapshot) bool { return allowed(s, frontend, apiKey, 80) }},
		{"invalid mode annotation", func(t *testing.T) { setNSAnnotation(ctx, t, env, policy.DefaultModeAnnotation, "Audit") },
			func(s *discovery.Snapshot) bool {
				_, set := s.NamespaceDefaultModes()["shop"]
				return !set && !allowed(s, frontend, apiKey, 80) && logw.contains("ignoring namespace default policy mode", "tether.dev/default-policy-mode")
			}},
		// An invalid value is dropped (the mesh default applies) rather
		// than blocking every later update.
		{"invalid annotation", func(t *testing.T) { setAnnotation(ctx, t, env, "bogus") },
			func(s *discovery.Snapshot) bool {
				_, set := s.NamespaceDefaults()["shop"]
				return !set && allowed(s, frontend, apiKey, 80)
			}},
		// A Service whose Pods of the mesh are not ready is still a mesh
		// service, without endpoints.
		{"update after invalid annotation", func(t *testing.T) {
			es, err := slicesAPI.Get(ctx, "db-1", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			es.Endpoints[0].Conditions.Ready = ptr(false)
			if _, err := slicesAPI.Update(ctx, es, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}, func(s *discovery.Snapshot) bool {
			db, ok := s.Service(dbKey)
			return ok && len(db.Endpoints) == 0
		}},
		// Without any endpoint it is not.
		{"last endpoint gone", func(t *testing.T) {
			if err := slicesAPI.Delete(ctx, "db-1", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}, func(s *discovery.Snapshot) bool {
			_, ok := s.Service(dbKey)
			return !ok
		}},
		// The pod behind legacy/plain is recreated with the sidecar (as
		// after its namespace is labelled for injection): the Service
		// joins the mesh.
		{"pod gains the sidecar", func(t *testing.T) {
			recreateWithSidecar(ctx, t, env, "legacy", "plain", "plain-1")
		}, func(s *discovery.Snapshot) bool {
			return reflect.DeepEqual(addrs(s, plainKey), []string{"10.2.0.1=plain"})
		}},
	}
	for _, c := range changes {
		t.Run(c.name, func(t *testing.T) {
			before := reg.Snapshot().Version()
			start := time.Now()
			c.change(t)
			s, _ := waitFor(t, 3*time.Second, c.ok)
			took := time.Since(start)
			t.Logf("propagated in %v (version %d -> %d)", took, before, s.Version())
			if s.Version() <= before {
				t.Errorf("version %d, want > %d", s.Version(), before)
			}
			if took >= time.Second {
				t.Errorf("change took %v to reach the registry, want < 1s", took)
			}
		})
	}
}

// recreateWithSidecar deletes the pod and creates it again with the
// sidecar, as a rollout after injection was turned on does (with the same
// name, as a StatefulSet would).
func recreateWithSidecar(ctx context.Context, t *testing.T, env *kubetest.Env, ns, sa, name string) {
	t.Helper()
	pods := env.Client.CoreV1().Pods(ns)
	if err := pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr[int64](0)}); err != nil {
		t.Fatal(err)
	}
	for { // an unscheduled pod goes at once; be sure of it
		_, err := pods.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("pod %s/%s not deleted: %v", ns, name, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	env.EnsureMeshPod(t, ns, sa, name)
}

func setAnnotation(ctx context.Context, t *testing.T, env *kubetest.Env, value string) {
	t.Helper()
	setNSAnnotation(ctx, t, env, DefaultPolicyAnnotation, value)
}

func setNSAnnotation(ctx context.Context, t *testing.T, env *kubetest.Env, key, value string) {
	t.Helper()
	ns, err := env.Client.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Annotations[key] = value
	if _, err := env.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestKubeSourceNeedsClients checks the arguments Run requires.
func TestKubeSourceNeedsClients(t *testing.T) {
	reg, err := discovery.NewRegistry(td, policy.AllowMesh)
	if err != nil {
		t.Fatal(err)
	}
	if err := (&KubeSource{}).Run(context.Background(), reg); err == nil {
		t.Fatal("Run without clients succeeded")
	}
}

// TestTrimPod checks that the Pod informer's transform keeps whether the
// Pod carries the sidecar, and little else.
func TestTrimPod(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	sidecar := corev1.Container{Name: inject.SidecarContainerName, Image: "tether:1", Args: []string{"--transparent"}, RestartPolicy: &always}
	app := corev1.Container{Name: "app", Image: "app:1"}
	for _, c := range []struct {
		name       string
		init, main []corev1.Container
		meshed     bool
	}{
		{"no sidecar", []corev1.Container{{Name: "migrate"}}, []corev1.Container{app}, false},
		{"native sidecar", []corev1.Container{{Name: inject.InitContainerName}, sidecar, {Name: "migrate"}}, []corev1.Container{app}, true},
		{"sidecar among the containers", nil, []corev1.Container{app, sidecar}, true},
		{"another container named like it", nil, []corev1.Container{{Name: "tether-sidecar-old"}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "api-0", UID: "u1", ResourceVersion: "7", Labels: map[string]string{"app": "api"}},
				Spec:       corev1.PodSpec{ServiceAccountName: "api", InitContainers: c.init, Containers: c.main, NodeName: "node-1"},
				Status:     corev1.PodStatus{PodIP: "10.1.0.1"},
			}
			out, err := trimPod(in)
			if err != nil {
				t.Fatal(err)
			}
			want := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "api-0", UID: "u1", ResourceVersion: "7"},
				Spec:       corev1.PodSpec{ServiceAccountName: "api"},
			}
			if c.meshed {
				want.Spec.InitContainers = []corev1.Container{{Name: inject.SidecarContainerName}}
			}
			if !reflect.DeepEqual(out, want) {
				t.Errorf("trimPod = %+v, want %+v", out, want)
			}
			if got := inject.Injected(out.(*corev1.Pod)); got != c.meshed {
				t.Errorf("trimmed pod in the mesh = %v, want %v", got, c.meshed)
			}
		})
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "shop/api-0"}
	if out, err := trimPod(tomb); err != nil || out != tomb {
		t.Errorf("trimPod(tombstone) = %v, %v; want it unchanged", out, err)
	}
}
