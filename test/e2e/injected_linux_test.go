//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	"github.com/tether-mesh/tether/internal/netns"
	"github.com/tether-mesh/tether/pkg/inject"
)

// The addresses of the two network namespaces: "node" holds what runs
// outside the app pod (tether-ca's pod, the kubelet's probes, the Service
// IPs), "pod" is the injected pod.
var (
	nodeIP = netip.MustParsePrefix("10.244.0.1/24")
	podIP  = netip.MustParsePrefix("10.244.0.2/24")
)

// TestInjectedPodRuns installs Tether from manifests/base on a real API
// server, creates a pod in a labelled namespace, and runs what the API
// server stored: tether-init and tether-sidecar, with the command, args and
// env of the stored spec unchanged, as the UIDs, capabilities and volumes
// the spec asks for, in a network namespace. tether-ca runs from its own
// Deployment's pod spec, in-cluster, with the RBAC of the manifests. The
// sidecar must become ready by the spec's own startup probe and hold
// spiffe://cluster.local/ns/shop/sa/web, issued by tether-ca on the pod's
// projected token (TokenReview).
//
// Nothing in the stored specs is rewritten. What a kubelet, a container
// runtime, cluster DNS and kube-proxy would provide is provided instead by
// podRuntime, each stand-in explained where it is made:
//   - the image: the host's root filesystem with the freshly built binaries
//     bind-mounted on /usr/local/bin (the Dockerfile puts them there), in a
//     private mount namespace with a fresh /run and a writable layer over
//     /etc, read-only where the spec says readOnlyRootFilesystem;
//   - volumes: the projected tokens come from TokenRequests bound to the
//     pod, with the audience and lifetime of the spec; ConfigMap volumes
//     hold the ConfigMaps' data (the trust bundle is the one tether-ca
//     published); emptyDirs are directories;
//   - cluster DNS: a DNS server on the node answers the Services' names
//     with their ClusterIPs (tether-ca.tether-system.svc resolves through
//     the resolv.conf search path, as in a pod);
//   - kube-proxy: the Service IPs are addresses of the node namespace, where
//     tether-ca listens on the Service's port, and the kubernetes Service
//     IP is relayed to the API server on the host's loopback;
//   - the app container: its image does not exist here, so the test serves
//     a small HTTP app on its declared port inside the pod's namespace.
//
// The injected sidecar is given no --discovery (and tether-init no
// --capture-dns), so its readiness needs only an SVID and tether-discovery
// is not run; checkInjected fails the test when that changes, since the
// sidecar would then wait for discovery's first view.
func TestInjectedPodRuns(t *testing.T) {
	netns.RequireRoot(t)
	for _, tool := range []string{"unshare", "setpriv", "mount", "readlink", "env", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not installed (util-linux, coreutils)", tool)
			}
			t.Skipf("needs %s (util-linux, coreutils) to run containers", tool)
		}
	}
	began := time.Now()

	// The binaries build while the API server starts.
	bin := binDir(t)
	var buildErr error
	built := make(chan struct{})
	go func() {
		defer close(built)
		buildErr = goBuild(bin, "tether-ca", "tether-sidecar", "tether")
	}()
	t.Cleanup(func() { <-built })

	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	applyManifests(t, env, "../../manifests/base")

	// What kube-controller-manager would do: every namespace gets the
	// kube-root-ca.crt ConfigMap (the API server's CA, mounted into every
	// pod) and its default ServiceAccount.
	shop := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{inject.InjectLabel: "enabled"}}}
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, shop, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"tether-system", "shop"} {
		env.EnsureServiceAccount(t, ns, "default")
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": string(env.Config.CAData)}}
		if _, err := env.Client.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	env.EnsureServiceAccount(t, "shop", "web")

	injectorLog := startInjector(t, env)

	// The network: the pod's namespace is linked to the node's, with a
	// default route through it as a CNI plugin would set up.
	node, podNet := netns.New(t, "node"), netns.New(t, "web")
	netns.Link(t, node, podNet, nodeIP, podIP)
	podNet.Run(t, "ip", "route", "add", "default", "via", nodeIP.Addr().String())
	kubeSvc, err := env.Client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	caSvc, err := env.Client.CoreV1().Services("tether-system").Get(ctx, "tether-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range []*corev1.Service{kubeSvc, caSvc} {
		node.AddAddr(t, "lo", netip.PrefixFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 32))
	}
	// kube-proxy, for the kubernetes Service: its IP and port relay to the
	// API server, which listens on the host's loopback (its serving
	// certificate carries the Service IP, as in a real cluster).
	apiURL, err := url.Parse(env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	relay(t, node, net.JoinHostPort(kubeSvc.Spec.ClusterIP, strconv.Itoa(int(kubeSvc.Spec.Ports[0].Port))), apiURL.Host)
	// Cluster DNS, on the node (as NodeLocal DNSCache would be).
	svcs, err := env.Client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	serveClusterDNS(t, node, netip.AddrPortFrom(nodeIP.Addr(), 53), svcs.Items)
	cl := &cluster{env: env, bin: bin, nameserver: nodeIP.Addr()}
	kubelet := nodeClient(node)

	<-built
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	t.Logf("binaries built and control plane applied after %v", time.Since(began).Round(time.Millisecond))

	// tether-ca, as its Deployment's ReplicaSet would create its pod. The
	// pod lives in the node namespace, where the Service IP is, so the
	// Service's port must be the container's (kube-proxy would map them).
	caPod := createFromDeployment(t, env, "tether-system", "tether-ca", "tether-ca-0")
	ca := newPodRuntime(t, cl, caPod, node, nodeIP.Addr())
	caCtr := caPod.Spec.Containers[0]
	if p := caSvc.Spec.Ports[0]; ca.port(caCtr, p.TargetPort) != int(p.Port) {
		t.Fatalf("Service tether-ca port %d targets %s, not the same port of the container", p.Port, p.TargetPort.String())
	}
	caProc := ca.start(caCtr)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("tether-ca:\n%s\ntether-injector:\n%s", caProc.Output(), injectorLog.String())
		}
	})
	ca.waitProbe(kubelet, caCtr, caCtr.ReadinessProbe, caProc, 30*time.Second)

	// The app pod, created through the API in the labelled namespace.
	created, err := env.Client.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			Containers: []corev1.Container{{
				Name: "web", Image: "example.com/web:1",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
					HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := env.Client.CoreV1().Pods("shop").Get(ctx, created.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	initC, sidecar := checkInjected(t, pod)

	// The trust bundle ConfigMap the sidecar mounts is tether-ca's to
	// publish; like a kubelet, wait for it before starting the pod.
	var bundleCM *corev1.ConfigMap
	poll(t, "tether-ca to publish the trust bundle in shop", 20*time.Second, func() (err error) {
		bundleCM, err = env.Client.CoreV1().ConfigMaps("shop").Get(ctx, inject.BundleConfig, metav1.GetOptions{})
		return err
	})
	web := newPodRuntime(t, cl, pod, podNet, podIP.Addr())

	// Init containers in order: tether-init runs to completion...
	out := web.run(ctx, initC)
	t.Logf("tether-init: %s", strings.TrimSpace(out))
	rules := podNet.Run(t, "iptables-save", "-t", "nat")
	for _, want := range []string{"-j TETHER_INBOUND", "-j TETHER_OUTPUT", "--uid-owner " + strconv.Itoa(inject.ProxyUID)} {
		if !strings.Contains(rules, want) {
			t.Fatalf("no %q in the pod's nat rules after tether-init:\n%s", want, rules)
		}
	}
	// ...then the native sidecar starts, and the next containers wait for
	// its startup probe.
	sideStart := time.Now()
	sideProc := web.start(sidecar)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("tether-sidecar:\n%s", sideProc.Output())
		}
	})
	web.waitProbe(kubelet, sidecar, sidecar.StartupProbe, sideProc, 30*time.Second)
	if body, err := web.probe(kubelet, sidecar, sidecar.ReadinessProbe); err != nil || !strings.HasPrefix(body, "ready") {
		t.Fatalf("sidecar readiness probe after its startup probe passed: %q, %v", body, err)
	}
	t.Logf("sidecar ready %v after it started, %v after the test began",
		time.Since(sideStart).Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	checkCreds(t, sideProc, inject.ProxyUID, "0000000000000000")

	// The app container (its image does not exist here: a stand-in serves
	// its declared port).
	app := pod.Spec.Containers[0]
	serveApp(t, podNet, int(app.Ports[0].ContainerPort))

	// The identity: on the admin port, and through the Workload API socket
	// at the path the app container's SPIFFE_ENDPOINT_SOCKET names.
	want := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web")
	adminPort := web.port(sidecar, intstr.FromInt32(inject.AdminPort))
	body, err := get(kubelet, fmt.Sprintf("http://%s/debug/identity", net.JoinHostPort(podIP.Addr().String(), strconv.Itoa(adminPort))))
	if err != nil {
		t.Fatal(err)
	}
	var ident struct {
		SPIFFEID string `json:"spiffe_id"`
	}
	if err := json.Unmarshal([]byte(body), &ident); err != nil || ident.SPIFFEID != want.String() {
		t.Fatalf("/debug/identity: %v %s, want %s", err, body, want)
	}
	socket := web.hostPath(app, strings.TrimPrefix(envValue(app, inject.SocketEnv), "unix://"))
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		t.Fatalf("Workload API at %s: %v", socket, err)
	}
	bundle, err := x509bundle.Parse(want.TrustDomain(), []byte(bundleCM.Data["bundle.pem"]))
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
	if out, err := web.exec(ctx, sidecar, "tether", "identity"); err != nil || !strings.Contains(out, want.String()) {
		t.Fatalf("tether identity in the sidecar container: %v\n%s", err, out)
	}

	// tether-ca issued it on a Kubernetes token (TokenReview).
	caAdmin := net.JoinHostPort(nodeIP.Addr().String(), strconv.Itoa(ca.port(caCtr, caCtr.ReadinessProbe.HTTPGet.Port)))
	metrics, err := get(kubelet, "http://"+caAdmin+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if v := sample(metrics, `tether_ca_issuances_total{kind="k8s_sat",result="ok"}`); v < 1 {
		t.Fatalf("tether-ca counted no SVID issued on a Kubernetes token:\n%s", grep(metrics, "tether_ca_issuances_total"))
	}

	// Through the sidecar: the app's rewritten readiness probe passes
	// (the sidecar runs the original against the app)...
	if body, err := web.probe(kubelet, app, app.ReadinessProbe); err != nil {
		t.Fatalf("app readiness probe through the sidecar: %v %q", err, body)
	}
	// ...while plaintext to the app's port is captured, and refused by the
	// strict sidecar.
	if body, err := get(kubelet, fmt.Sprintf("http://%s/", net.JoinHostPort(podIP.Addr().String(), strconv.Itoa(int(app.Ports[0].ContainerPort))))); err == nil {
		t.Fatalf("plaintext reached the app past a strict sidecar: %q", body)
	}
	t.Logf("done %v after the test began", time.Since(began).Round(time.Millisecond))
}

// checkInjected returns tether-init and tether-sidecar from the stored pod,
// after checking that the parts this test relies on are there.
func checkInjected(t *testing.T, pod *corev1.Pod) (initC, sidecar corev1.Container) {
	t.Helper()
	ic := pod.Spec.InitContainers
	if len(ic) < 2 || ic[0].Name != inject.InitContainerName || ic[1].Name != inject.SidecarContainerName {
		t.Fatalf("stored pod not injected: init containers %v", containerNames(ic))
	}
	initC, sidecar = ic[0], ic[1]
	for _, c := range []corev1.Container{initC, sidecar} {
		t.Logf("stored %s: command %q args %q env %d", c.Name, c.Command, c.Args, len(c.Env))
	}
	// Readiness waits for discovery when the sidecar is given one; this
	// test does not run tether-discovery.
	if slices.Contains(sidecar.Args, "--discovery") || envValue(sidecar, "TETHER_DISCOVERY_ADDR") != "" {
		t.Fatalf("the injected sidecar now uses discovery (%q): run tether-discovery (kube registry) in this test too", sidecar.Args)
	}
	args := strings.Join(sidecar.Args, " ")
	for _, want := range []string{"--ca tether-ca.tether-system.svc:8443", "--token-file " + inject.TokenPath} {
		if !strings.Contains(args, want) {
			t.Fatalf("sidecar args %q lack %q", sidecar.Args, want)
		}
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
func startInjector(t *testing.T, env *kubetest.Env) *lockedBuffer {
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
	hook := "https://" + wl.Addr().String() + "/mutate"
	mwc.Webhooks[0].ClientConfig = admissionregv1.WebhookClientConfig{URL: &hook}
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
	log := &lockedBuffer{}
	inj, err := injector.New(injector.Config{
		Inject: inject.DefaultConfig(image),
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

// lockedBuffer is an io.Writer safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
