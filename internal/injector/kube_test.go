package injector

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/inject"
)

const testImage = "registry.example/tether:e2e"

// kubeInjector is the running injector, registered with a real API server
// through the manifests' MutatingWebhookConfiguration.
type kubeInjector struct {
	env   *kubetest.Env
	inj   *Injector
	admin string
}

// startKubeInjector applies manifests/base, points the webhook at a
// loopback listener, and runs the injector there with the RBAC of its
// ServiceAccount from the manifests.
func startKubeInjector(t *testing.T, mods ...func(*inject.Config)) *kubeInjector {
	t.Helper()
	env := kubetest.Start(t)
	newApplier(t, env).apply(t, render(t, "base"), false)
	if t.Failed() {
		t.FailNow()
	}
	wl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	al, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// The manifests point at the Service; no kube-proxy runs here, so
	// the test swaps in the loopback URL, as an operator running the
	// injector outside the cluster would.
	ctx := context.Background()
	mwcs := env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	mwc, err := mwcs.Get(ctx, "tether-injector", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range mwc.Webhooks {
		url := "https://" + wl.Addr().String() + *mwc.Webhooks[i].ClientConfig.Service.Path
		mwc.Webhooks[i].ClientConfig = admissionregv1.WebhookClientConfig{URL: &url}
	}
	if _, err := mwcs.Update(ctx, mwc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sa, err := kubernetes.NewForConfig(env.ServiceAccountConfig(t, "tether-system", "tether-injector"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Inject: inject.DefaultConfig(testImage),
		Certs: CertsConfig{
			Client: sa, Namespace: "tether-system", SecretName: "tether-injector-tls",
			WebhookName: "tether-injector", ServiceName: "tether-injector", ExtraNames: []string{"127.0.0.1"},
		},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	for _, m := range mods {
		m(&cfg.Inject)
	}
	inj, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- inj.Serve(runCtx, wl, al) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("injector: %v", err)
		}
	})
	testutil.Eventually(t, "injector ready", 30*time.Second, func() bool { return inj.Ready() == nil })
	return &kubeInjector{env: env, inj: inj, admin: "http://" + al.Addr().String()}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func namespace(t *testing.T, env *kubetest.Env, name string, labels map[string]string) {
	t.Helper()
	_, err := env.Client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// No controller-manager runs: make the default ServiceAccount.
	env.EnsureServiceAccount(t, name, "default")
}

func appPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "web", Image: "example.com/web:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
				HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}},
			LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
				TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}}},
		}}},
	}
}

func create(t *testing.T, env *kubetest.Env, ns string, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	out, err := env.Client.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, pod.Name, err)
	}
	return out
}

// assertInjected checks the stored pod against the Kubernetes contract.
func assertInjected(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	ic := pod.Spec.InitContainers
	if len(ic) < 2 || ic[0].Name != inject.InitContainerName || ic[1].Name != inject.SidecarContainerName {
		t.Fatalf("pod %s init containers %v, want tether-init and tether-sidecar first", pod.Name, containerNames(ic))
	}
	if ic[1].RestartPolicy == nil || *ic[1].RestartPolicy != corev1.ContainerRestartPolicyAlways || ic[1].Image != testImage {
		t.Errorf("tether-sidecar is not a native sidecar of image %s: %+v", testImage, ic[1])
	}
	vols := map[string]bool{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = true
	}
	for _, v := range []string{inject.TokenVolume, inject.BundleVolume, inject.SocketVolume} {
		if !vols[v] {
			t.Errorf("pod %s has no volume %s", pod.Name, v)
		}
	}
	for _, c := range pod.Spec.Containers {
		found := false
		for _, e := range c.Env {
			found = found || (e.Name == inject.SocketEnv && e.Value == "unix://"+inject.SocketPath)
		}
		if !found {
			t.Errorf("container %s has no %s", c.Name, inject.SocketEnv)
		}
		if p := c.ReadinessProbe; p != nil && (p.HTTPGet == nil || p.HTTPGet.Port.IntVal != inject.AdminPort) {
			t.Errorf("container %s readiness probe not rewritten: %+v", c.Name, p.ProbeHandler)
		}
		if p := c.LivenessProbe; p != nil && (p.HTTPGet == nil || p.HTTPGet.Path != inject.AppProbePath(c.Name, "livez")) {
			t.Errorf("container %s liveness probe not rewritten: %+v", c.Name, p.ProbeHandler)
		}
	}
	if pod.Annotations[inject.AnnotationOriginalProbes] == "" && len(pod.Spec.Containers) > 0 && pod.Spec.Containers[0].ReadinessProbe != nil {
		t.Errorf("pod %s has no %s annotation", pod.Name, inject.AnnotationOriginalProbes)
	}
}

func assertUntouched(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	if len(pod.Spec.InitContainers) != 0 || pod.Annotations[inject.AnnotationOriginalProbes] != "" {
		t.Errorf("pod %s/%s was injected: init containers %v", pod.Namespace, pod.Name, containerNames(pod.Spec.InitContainers))
	}
	for _, v := range pod.Spec.Volumes {
		if strings.HasPrefix(v.Name, "tether-") {
			t.Errorf("pod %s/%s got volume %s", pod.Namespace, pod.Name, v.Name)
		}
	}
	if p := pod.Spec.Containers[0].ReadinessProbe; p != nil && p.HTTPGet.Port.StrVal != "http" {
		t.Errorf("pod %s/%s probe rewritten", pod.Namespace, pod.Name)
	}
}

func containerNames(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}

// injectedPart is what the injector adds, with the API server's own
// additions (the kube-api-access volume and its mounts, whose names are
// random; the API server mounts it into the injected containers too) removed,
// to compare two pods.
func injectedPart(p *corev1.Pod) string {
	p = p.DeepCopy()
	var vols []corev1.Volume
	for _, v := range p.Spec.Volumes {
		if strings.HasPrefix(v.Name, "tether-") {
			vols = append(vols, v)
		}
	}
	for _, list := range [][]corev1.Container{p.Spec.InitContainers, p.Spec.Containers} {
		for i := range list {
			var ms []corev1.VolumeMount
			for _, m := range list[i].VolumeMounts {
				if !strings.HasPrefix(m.Name, "kube-api-access-") {
					ms = append(ms, m)
				}
			}
			list[i].VolumeMounts = ms
		}
	}
	b, _ := json.Marshal([]any{p.Spec.InitContainers, p.Spec.Containers, vols, p.Annotations})
	return string(b)
}

func TestWebhookOnAPIServer(t *testing.T) {
	k := startKubeInjector(t)
	env := k.env
	ctx := context.Background()
	namespace(t, env, "meshed", map[string]string{inject.InjectLabel: "enabled"})
	namespace(t, env, "plain", nil)

	t.Run("labelled namespace", func(t *testing.T) {
		assertInjected(t, create(t, env, "meshed", appPod("web-1")))
	})
	t.Run("unlabelled namespace", func(t *testing.T) {
		assertUntouched(t, create(t, env, "plain", appPod("web-1")))
	})
	t.Run("opt-out label", func(t *testing.T) {
		p := appPod("opted-out")
		p.Labels[inject.InjectLabel] = "disabled"
		assertUntouched(t, create(t, env, "meshed", p))
	})
	t.Run("hostNetwork", func(t *testing.T) {
		p := appPod("host")
		p.Spec.HostNetwork = true
		assertUntouched(t, create(t, env, "meshed", p))
	})
	t.Run("same spec twice", func(t *testing.T) {
		a := create(t, env, "meshed", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "twin-"}, Spec: appPod("").Spec})
		b := create(t, env, "meshed", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "twin-"}, Spec: appPod("").Spec})
		assertInjected(t, a)
		if injectedPart(a) != injectedPart(b) {
			t.Errorf("two pods of one spec were injected differently:\n%s\n%s", injectedPart(a), injectedPart(b))
		}
	})
	t.Run("decoy sidecar refused", func(t *testing.T) {
		// A pod that brings its own tether-sidecar is not taken as
		// injected: it is refused, saying why.
		p := appPod("decoy")
		p.Spec.InitContainers = []corev1.Container{{Name: inject.SidecarContainerName, Image: "busybox", Command: []string{"sleep", "infinity"},
			RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways)}}
		_, err := env.Client.CoreV1().Pods("meshed").Create(ctx, p, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "not what tether-injector adds") {
			t.Fatalf("err %v, want a refusal saying the containers are not what tether-injector adds", err)
		}
		p = appPod("decoy-app")
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: inject.SidecarContainerName, Image: "busybox"})
		if _, err := env.Client.CoreV1().Pods("meshed").Create(ctx, p, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "reserved") {
			t.Fatalf("app container named %s: err %v, want a refusal", inject.SidecarContainerName, err)
		}
	})
	t.Run("stored injected spec created again", func(t *testing.T) {
		// What the API server stored (with its defaults) is what the
		// injector made: verified, left as it is.
		a := create(t, env, "meshed", appPod("first"))
		b := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "copy", Labels: a.Labels, Annotations: a.Annotations}, Spec: *a.Spec.DeepCopy()}
		b.Spec.NodeName = ""
		got := create(t, env, "meshed", b)
		assertInjected(t, got)
		if injectedPart(a) != injectedPart(got) {
			t.Errorf("the copy differs:\n%s\n%s", injectedPart(a), injectedPart(got))
		}
		// The same with its sidecar's image swapped is refused.
		c := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "tampered", Labels: a.Labels, Annotations: a.Annotations}, Spec: *a.Spec.DeepCopy()}
		c.Spec.InitContainers[1].Image = "busybox"
		if _, err := env.Client.CoreV1().Pods("meshed").Create(ctx, c, metav1.CreateOptions{}); err == nil ||
			!strings.Contains(err.Error(), "tether-sidecar's Image is not what this injector sets") {
			t.Fatalf("tampered copy: err %v, want a refusal naming the sidecar's Image", err)
		}
	})
	t.Run("required namespace", func(t *testing.T) {
		namespace(t, env, "locked", map[string]string{inject.InjectLabel: inject.RequiredValue})
		assertInjected(t, create(t, env, "locked", appPod("web-1")))
		p := appPod("opted-out")
		p.Labels[inject.InjectLabel] = "disabled"
		if _, err := env.Client.CoreV1().Pods("locked").Create(ctx, p, metav1.CreateOptions{}); err == nil ||
			!strings.Contains(err.Error(), "opt-out label tether.dev/inject=disabled is refused") {
			t.Fatalf("opt-out in a required namespace: err %v, want a refusal", err)
		}
		p = appPod("host")
		p.Spec.HostNetwork = true
		if _, err := env.Client.CoreV1().Pods("locked").Create(ctx, p, metav1.CreateOptions{}); err == nil ||
			!strings.Contains(err.Error(), "requires injection") {
			t.Fatalf("hostNetwork in a required namespace: err %v, want a refusal", err)
		}
	})
	t.Run("bad annotation refused", func(t *testing.T) {
		p := appPod("bad")
		p.Annotations = map[string]string{inject.AnnotationExcludeInboundPorts: "http"}
		_, err := env.Client.CoreV1().Pods("meshed").Create(ctx, p, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), inject.AnnotationExcludeInboundPorts) {
			t.Fatalf("err %v, want a refusal naming %s", err, inject.AnnotationExcludeInboundPorts)
		}
	})
	t.Run("dry run", func(t *testing.T) {
		p, err := env.Client.CoreV1().Pods("meshed").Create(ctx, appPod("dry"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			t.Fatal(err)
		}
		assertInjected(t, p)
		if _, err := env.Client.CoreV1().Pods("meshed").Get(ctx, "dry", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("dry-run pod stored: %v", err)
		}
	})
	t.Run("deployment template untouched, its pods injected", func(t *testing.T) {
		d := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: appsv1.DeploymentSpec{
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}}, Spec: appPod("").Spec},
			},
		}
		got, err := env.Client.AppsV1().Deployments("meshed").Create(ctx, d, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Spec.Template.Spec.InitContainers) != 0 || got.Spec.Template.Spec.Containers[0].ReadinessProbe.HTTPGet.Port.StrVal != "http" {
			t.Error("the Deployment's pod template was changed")
		}
		// No controller-manager runs here; create the pod as the
		// ReplicaSet controller would, from the template.
		pod := &corev1.Pod{ObjectMeta: *got.Spec.Template.ObjectMeta.DeepCopy(), Spec: *got.Spec.Template.Spec.DeepCopy()}
		pod.GenerateName = "web-"
		assertInjected(t, create(t, env, "meshed", pod))
	})
	t.Run("reinvocation", func(t *testing.T) {
		// A second webhook, after ours, adds a label; with
		// reinvocationPolicy IfNeeded the API server calls the injector
		// again, which must leave the pod as it is.
		var mu sync.Mutex
		calls := 0
		labeller := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var rv admissionv1.AdmissionReview
			body, _ := io.ReadAll(r.Body)
			json.Unmarshal(body, &rv)
			mu.Lock()
			calls++
			mu.Unlock()
			pt := admissionv1.PatchTypeJSONPatch
			rv.Response = &admissionv1.AdmissionResponse{UID: rv.Request.UID, Allowed: true, PatchType: &pt,
				Patch: []byte(`[{"op":"add","path":"/metadata/labels/labelled","value":"yes"}]`)}
			rv.Request = nil
			json.NewEncoder(w).Encode(rv)
		}))
		defer labeller.Close()
		url := labeller.URL + "/label"
		none := admissionregv1.SideEffectClassNone
		_, err := env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, &admissionregv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "zz-labeller"},
			Webhooks: []admissionregv1.MutatingWebhook{{
				Name:                    "label.test.tether.dev",
				AdmissionReviewVersions: []string{"v1"},
				ClientConfig:            admissionregv1.WebhookClientConfig{URL: &url, CABundle: pemCert(labeller.Certificate().Raw)},
				Rules: []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create},
					Rule: admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "meshed"}},
				SideEffects:       &none,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		before := metric(t, k.admin, `tether_injector_injections_total{result="skipped"}`)
		var pod *corev1.Pod
		testutil.Eventually(t, "labeller webhook in use", 10*time.Second, func() bool {
			p := create(t, env, "meshed", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "reinvoked-", Labels: map[string]string{"app": "web"}}, Spec: appPod("").Spec})
			pod = p
			return p.Labels["labelled"] == "yes"
		})
		assertInjected(t, pod)
		n := 0
		for _, c := range pod.Spec.InitContainers {
			if c.Name == inject.SidecarContainerName {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d sidecars after reinvocation", n)
		}
		if after := metric(t, k.admin, `tether_injector_injections_total{result="skipped"}`); after < before+1 {
			t.Errorf("injector was not reinvoked (skipped %v → %v)", before, after)
		}
		env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, "zz-labeller", metav1.DeleteOptions{})
	})
	t.Run("restricted pod security", func(t *testing.T) {
		// The injected containers pass the restricted Pod Security
		// Standard except for tether-init's privileges.
		namespace(t, env, "strict", map[string]string{inject.InjectLabel: "enabled", "pod-security.kubernetes.io/warn": "restricted"})
		var warnings []string
		cfg := rest.CopyConfig(env.Config)
		cfg.WarningHandler = warningRecorder(func(msg string) { warnings = append(warnings, msg) })
		c, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		p := restrictedAppPod("restricted")
		if _, err := c.CoreV1().Pods("strict").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		all := strings.Join(warnings, "\n")
		if !strings.Contains(all, `"tether-init"`) || !strings.Contains(all, "NET_ADMIN") {
			t.Errorf("expected restricted warnings about tether-init's capabilities, got %q", all)
		}
		for _, w := range warnings {
			if strings.Contains(w, "tether-sidecar") || strings.Contains(w, `"web"`) {
				t.Errorf("warning about a container other than tether-init: %s", w)
			}
		}
	})
	t.Run("restricted pod security enforced: init mode refused", func(t *testing.T) {
		// tether-init needs root and NET_ADMIN: in a namespace enforcing
		// restricted the API server refuses the injected pod, naming it.
		namespace(t, env, "enforced", map[string]string{inject.InjectLabel: "enabled", "pod-security.kubernetes.io/enforce": "restricted"})
		_, err := env.Client.CoreV1().Pods("enforced").Create(ctx, restrictedAppPod("web-1"), metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `"tether-init"`) || !strings.Contains(err.Error(), "NET_ADMIN") {
			t.Fatalf("init-mode pod in a restricted namespace: err %v, want a Pod Security refusal naming tether-init and NET_ADMIN", err)
		}
		t.Logf("the API server's refusal: %v", err)
	})
	t.Run("admin port", func(t *testing.T) {
		for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready", "/metrics": `tether_injector_injections_total{result="injected"}`} {
			resp, err := http.Get(k.admin + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
				t.Errorf("GET %s: %d %q, want %q", path, resp.StatusCode, clipStr(string(body)), want)
			}
		}
		if v := metric(t, k.admin, `tether_injector_injections_total{result="injected"}`); v < 5 {
			t.Errorf("injected %v pods, want at least 5", v)
		}
	})
	t.Run("serving certificate trusted by caBundle", func(t *testing.T) {
		mwc, err := env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "tether-injector", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c := k.inj.certs.Certificate()
		if !strings.Contains(string(mwc.Webhooks[0].ClientConfig.CABundle), string(pemCert(c.Certificate[0]))) {
			t.Error("caBundle does not hold the served certificate")
		}
		if c.Leaf.VerifyHostname("tether-injector.tether-system.svc") != nil {
			t.Error("serving certificate lacks the Service's DNS name")
		}
	})
}

// restrictedAppPod is appPod made to comply with Pod Security
// "restricted" on its own.
func restrictedAppPod(name string) *corev1.Pod {
	p := appPod(name)
	p.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(1000)), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
	p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	return p
}

type warningRecorder func(string)

func (w warningRecorder) HandleWarningHeader(code int, agent, msg string) { w(msg) }

func ptr[T any](v T) *T { return &v }

func clipStr(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// metric reads one sample from the admin port's /metrics.
func metric(t *testing.T, admin, series string) float64 {
	t.Helper()
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, series+" ") {
			var v float64
			fmt.Sscan(strings.TrimPrefix(line, series+" "), &v)
			return v
		}
	}
	t.Fatalf("no %s in /metrics", series)
	return 0
}
