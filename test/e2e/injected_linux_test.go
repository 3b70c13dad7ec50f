//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/internal/injector"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/inject"
)

// nodeIP is the node's address (on its loopback), where cluster DNS
// listens and tether-ca's pod (which shares the node's network namespace)
// is reached. Pods get 10.244.<n>.2 (cluster.podNetwork).
var nodeIP = netip.MustParseAddr("10.244.0.1")

// TestInjectedPodRuns installs Tether from manifests/base on a real API
// server, creates a pod in a labelled namespace, and runs what the API
// server stored: tether-init and tether-sidecar, with the command, args and
// env of the stored spec unchanged, as the UIDs, capabilities and volumes
// the spec asks for, in a network namespace. tether-ca and tether-discovery
// run from their own Deployments' pod specs, in-cluster, with the RBAC of
// the manifests (startMesh). The sidecar must become ready by the spec's own
// startup probe, which waits for an SVID and for discovery's first view, and
// hold spiffe://cluster.local/ns/shop/sa/web, issued by tether-ca on the
// pod's projected token (TokenReview).
//
// Nothing in the stored specs is rewritten. What a kubelet, a container
// runtime, a CNI plugin, cluster DNS and kube-proxy would provide is
// provided instead by podRuntime and startMesh, each stand-in explained
// where it is made:
//   - the image: the host's root filesystem with the freshly built binaries
//     bind-mounted on /usr/local/bin (the Dockerfile puts them there), in a
//     private mount namespace with a fresh /run and a writable layer over
//     /etc, read-only where the spec says readOnlyRootFilesystem;
//   - volumes: the projected tokens come from TokenRequests bound to the
//     pod, with the audience and lifetime of the spec; ConfigMap volumes
//     hold the ConfigMaps' data (the trust bundle is the one tether-ca
//     published); emptyDirs are directories;
//   - the pod network: a network namespace per pod, linked to the node's;
//   - cluster DNS: a DNS server on the node answers the Services' names
//     with their ClusterIPs (tether-ca.tether-system.svc resolves through
//     the resolv.conf search path, as in a pod);
//   - kube-proxy: tether-ca's Service IP is an address of the node
//     namespace, where tether-ca listens on the Service's port; other
//     Service IPs are DNATed to their endpoints in the node's namespace; the
//     kubernetes Service IP is relayed to the API server on the host's
//     loopback;
//   - the app container: its image does not exist here, so the test serves
//     a small HTTP app on its declared port inside the pod's namespace, on
//     the pod IP only (as its env asks), which the sidecar must reach.
func TestInjectedPodRuns(t *testing.T) {
	m := startMesh(t, "shop", "web")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// The app pod, created through the API in the labelled namespace.
	web := m.runPod(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "shop", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			Containers: []corev1.Container{{
				Name: "web", Image: "example.com/web:1",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				// The app listens on its pod IP only, as apps that bind
				// $POD_IP do: not on 127.0.0.1.
				Env: []corev1.EnvVar{listenOnPodIP},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
					HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}},
			}},
		},
	})
	checkCreds(t, web.proc, inject.ProxyUID, "0000000000000000")
	app, kubelet := web.app, m.kubelet

	// The identity: on the admin port (from inside the pod, on loopback),
	// and through the Workload API socket at the path the app container's
	// SPIFFE_ENDPOINT_SOCKET names.
	want := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	code, body := web.local("GET", "/debug/identity")
	if code != http.StatusOK {
		t.Fatalf("GET /debug/identity on the pod's loopback: %d %s", code, body)
	}
	var ident struct {
		SPIFFEID string `json:"spiffe_id"`
	}
	if err := json.Unmarshal([]byte(body), &ident); err != nil || ident.SPIFFEID != want.String() {
		t.Fatalf("/debug/identity: %v %s, want %s", err, body, want)
	}
	socket := web.rt.hostPath(app, strings.TrimPrefix(envValue(app, inject.SocketEnv), "unix://"))
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatalf("Workload API at %s: %v", socket, err)
	}
	bundle, err := x509bundle.Parse(want.TrustDomain(), []byte(web.bundle.Data["bundle.pem"]))
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != want {
		t.Fatalf("Workload API SVID %s, want %s", svid.ID, want)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Fatalf("the SVID does not verify against the published trust bundle: %v", err)
	}
	// docs/install.md's check: kubectl exec ... -c tether-sidecar -- tether identity
	if out, err := web.rt.exec(ctx, web.sidecar, "tether", "identity"); err != nil || !strings.Contains(out, want.String()) {
		t.Fatalf("tether identity in the sidecar container: %v\n%s", err, out)
	}

	// tether-ca issued it on a Kubernetes token (TokenReview).
	metrics, err := get(kubelet, m.caAdmin("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	if v := sample(metrics, `tether_ca_issuances_total{kind="k8s_sat",result="ok"}`); v < 1 {
		t.Fatalf("tether-ca counted no SVID issued on a Kubernetes token:\n%s", grep(metrics, "tether_ca_issuances_total"))
	}
	// Discovery serves the sidecar the view of its own identity, and lists
	// it among its connected sidecars.
	view := web.view()
	if view.SpiffeID != want.String() || view.Discovery != "tether-discovery.tether-system.svc:15010" {
		t.Fatalf("sidecar's /debug/discovery: %+v", view)
	}
	if code, body := m.discoveryLocal("/debug/sidecars"); code != http.StatusOK || !strings.Contains(body, want.String()) {
		t.Fatalf("discovery's /debug/sidecars (on its loopback) does not list %s: %d\n%s", want, code, body)
	}

	// From the node (or any other pod), at the pod IPs, the admin ports
	// answer only what the kubelet and Prometheus need (issue 11 item 4).
	for _, path := range []string{"/debug/identity", "/debug/discovery", "/debug/denials"} {
		if body, err := get(kubelet, web.admin(path)); err == nil || !strings.Contains(body, "served only to callers on loopback") {
			t.Errorf("GET %s at the pod IP: %v %q, want 403", path, err, body)
		}
	}
	if body, err := get(kubelet, m.discoveryAdmin("/debug/sidecars")); err == nil || !strings.Contains(body, "served only to callers on loopback") {
		t.Errorf("discovery's /debug/sidecars at its pod IP: %v %q, want 403", err, body)
	}
	if resp, err := kubelet.Post(web.admin("/quitquitquit"), "", nil); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST /quitquitquit at the pod IP: %v %v, want 403", err, resp)
	} else {
		resp.Body.Close()
	}
	if _, err := get(kubelet, web.admin("/healthz/ready")); err != nil {
		t.Errorf("the sidecar is not ready after the refused /quitquitquit: %v", err)
	}

	// Through the sidecar: the app's rewritten readiness probe passes
	// (the sidecar runs the original against the app, at the pod IP, the
	// only address it listens on)...
	appPort := uint16(app.Ports[0].ContainerPort)
	if web.listensOn(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), appPort)) || !web.listensOn(netip.AddrPortFrom(web.ip, appPort)) {
		t.Fatalf("the app does not listen on its pod IP %s only", web.ip)
	}
	if body, err := web.rt.probe(kubelet, app, app.ReadinessProbe); err != nil {
		t.Fatalf("app readiness probe through the sidecar: %v %q", err, body)
	}
	// ...while plaintext to the app's port is captured, and refused by the
	// strict sidecar.
	if body, err := get(kubelet, fmt.Sprintf("http://%s/", netip.AddrPortFrom(web.ip, appPort))); err == nil {
		t.Fatalf("plaintext reached the app past a strict sidecar: %q", body)
	}
	t.Logf("done %v after the test began", time.Since(m.began).Round(time.Millisecond))
}

// checkInjected returns tether-init (in CNI mode tether-validate) and
// tether-sidecar from the stored pod, after checking that the parts this
// test relies on are there.
func checkInjected(t *testing.T, pod *corev1.Pod, mode string) (initC, sidecar corev1.Container) {
	t.Helper()
	ic := pod.Spec.InitContainers
	first := inject.InitContainerName
	if mode == inject.RedirectCNI {
		first = inject.ValidateContainerName
	}
	if len(ic) < 2 || ic[0].Name != first || ic[1].Name != inject.SidecarContainerName {
		t.Fatalf("stored pod not injected: init containers %v, want %s and %s first", containerNames(ic), first, inject.SidecarContainerName)
	}
	initC, sidecar = ic[0], ic[1]
	for _, c := range []corev1.Container{initC, sidecar} {
		t.Logf("stored %s: command %q args %q env %d", c.Name, c.Command, c.Args, len(c.Env))
	}
	// The sidecar's readiness waits for discovery's first view, and it
	// answers the pod's DNS (port 53, captured by tether-init): startMesh
	// runs tether-discovery behind its Service for that.
	args := strings.Join(sidecar.Args, " ")
	for _, want := range []string{"--ca tether-ca.tether-system.svc:8443", "--token-file " + inject.TokenPath,
		"--transparent", "--discovery tether-discovery.tether-system.svc:15010"} {
		if !strings.Contains(args, want) {
			t.Fatalf("sidecar args %q lack %q", sidecar.Args, want)
		}
	}
	if mode != inject.RedirectCNI && !slices.Contains(initC.Args, "--capture-dns") {
		t.Fatalf("tether-init args %q lack --capture-dns", initC.Args)
	}
	if mode == inject.RedirectCNI && (pod.Annotations[inject.AnnotationRedirect] != inject.RedirectCNI || len(initC.SecurityContext.Capabilities.Add) != 0) {
		t.Fatalf("CNI mode: annotations %v, %s capabilities %+v", pod.Annotations, initC.Name, initC.SecurityContext.Capabilities)
	}
	if sidecar.RestartPolicy == nil || *sidecar.RestartPolicy != corev1.ContainerRestartPolicyAlways || sidecar.StartupProbe == nil {
		t.Fatal("tether-sidecar is not a native sidecar with a startup probe")
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == inject.TokenVolume && (v.Projected == nil || v.Projected.Sources[0].ServiceAccountToken.Audience != inject.TokenAud) {
			t.Fatalf("token volume %+v is not a projected token for %s", v, inject.TokenAud)
		}
	}
	return initC, sidecar
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// ----------------------------------------------------------------------------
// The control plane

// applyManifests renders a kustomization (as kubectl -k does) and
// server-side applies it, Namespaces and CRDs first, as docs/install.md
// says (internal/injector's tests do the same).
func applyManifests(t *testing.T, env *kubetest.Env, dir string) {
	t.Helper()
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := rm.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		m := map[string]any{}
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if len(m) > 0 {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	first := func(o *unstructured.Unstructured) bool {
		return o.GetKind() == "Namespace" || o.GetKind() == "CustomResourceDefinition"
	}
	slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int {
		switch {
		case first(a) && !first(b):
			return -1
		case first(b) && !first(a):
			return 1
		}
		return 0
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		for meta.IsNoMatchError(err) && ctx.Err() == nil { // a CRD just applied
			time.Sleep(100 * time.Millisecond)
			mapper.Reset()
			m, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		}
		if err != nil {
			t.Fatalf("%s %s: %v", gvk.Kind, o.GetName(), err)
		}
		data, err := json.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		var ri dynamic.ResourceInterface = dc.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dc.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		force := true
		if _, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: "tether-install", Force: &force}); err != nil {
			t.Fatalf("server-side apply %s %s/%s: %v", gvk.Kind, o.GetNamespace(), o.GetName(), err)
		}
	}
}

// startInjector runs tether-injector in the test process with the RBAC of
// its ServiceAccount from the manifests, and points the manifests'
// MutatingWebhookConfiguration at it (no Service routing exists here: the
// loopback URL stands for it, as for an injector run outside the cluster).
// It returns the injector's log.
func startInjector(t *testing.T, env *kubetest.Env, mode string) *testutil.SyncBuffer {
	t.Helper()
	ctx := context.Background()
	wl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	al, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mwcs := env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	mwc, err := mwcs.Get(ctx, "tether-injector", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range mwc.Webhooks {
		hook := "https://" + wl.Addr().String() + *mwc.Webhooks[i].ClientConfig.Service.Path
		mwc.Webhooks[i].ClientConfig = admissionregv1.WebhookClientConfig{URL: &hook}
	}
	if _, err := mwcs.Update(ctx, mwc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(env.ServiceAccountConfig(t, "tether-system", "tether-injector"))
	if err != nil {
		t.Fatal(err)
	}
	// The image the manifests give the injector (TETHER_IMAGE); the test
	// never pulls it: podRuntime stands in for it.
	dep, err := env.Client.AppsV1().Deployments("tether-system").Get(ctx, "tether-injector", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	image := envValue(dep.Spec.Template.Spec.Containers[0], "TETHER_IMAGE")
	log := &testutil.SyncBuffer{}
	cfg := inject.DefaultConfig(image)
	cfg.RedirectMode = mode
	inj, err := injector.New(injector.Config{
		Inject: cfg,
		Certs: injector.CertsConfig{Client: client, Namespace: "tether-system", SecretName: "tether-injector-tls",
			WebhookName: "tether-injector", ServiceName: "tether-injector", ExtraNames: []string{"127.0.0.1"}},
		Logger: slog.New(slog.NewTextHandler(log, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inj.Serve(runCtx, wl, al) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("injector: %v", err)
		}
	})
	poll(t, "the injector to be ready", 30*time.Second, inj.Ready)
	return log
}

// createFromDeployment creates a pod from a Deployment's template, as its
// ReplicaSet would (no controller-manager runs here), and returns it as
// stored.
func createFromDeployment(t *testing.T, env *kubetest.Env, ns, deployment, name string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	d, err := env.Client.AppsV1().Deployments(ns).Get(ctx, deployment, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := &corev1.Pod{ObjectMeta: *d.Spec.Template.ObjectMeta.DeepCopy(), Spec: *d.Spec.Template.Spec.DeepCopy()}
	p.Name, p.Namespace = name, ns
	p, err = env.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ----------------------------------------------------------------------------
// Small helpers

// poll calls cond every 100 ms until it returns nil, and fails the test
// with its last error after timeout.
func poll(t *testing.T, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sample returns the value of one series in a Prometheus text exposition,
// or -1.
func sample(metrics, series string) float64 {
	for l := range strings.Lines(metrics) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

func grep(text, substr string) string {
	var out []string
	for l := range strings.Lines(text) {
		if strings.Contains(l, substr) {
			out = append(out, strings.TrimRight(l, "\n"))
		}
	}
	return strings.Join(out, "\n")
}
