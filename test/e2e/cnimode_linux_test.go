//go:build linux

package e2e

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/tether-mesh/tether/pkg/inject"
)

// TestInjectedPodRunsCNIMode is TestInjectedPodRuns with the injector in
// CNI redirect mode, in a namespace enforcing Pod Security restricted: the
// API server admits the injected pod, and what it stored runs as the spec
// says. Its tether-validate, run (unprivileged, as stored) before the
// pod's rules exist, fails the pod naming the node agent; once the rules
// are in place it passes, and the sidecar gets its identity and refuses
// plaintext, with no privileged container in the pod.
//
// The rules are installed from outside the pod, as root in the pod's
// network namespace, by `tether-sidecar init --capture-dns`: a stand-in for
// the CNI plugin tether-cni, which installs the same rules with the same
// package (pkg/proxy/capture) and has its own tests through libcni.
func TestInjectedPodRunsCNIMode(t *testing.T) {
	m := startMeshMode(t, inject.RedirectCNI, "shop", "web")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	web := m.runPod(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "shop", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(1000)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
			Containers: []corev1.Container{{
				Name: "web", Image: "example.com/web:1",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				Env:   []corev1.EnvVar{listenOnPodIP},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
					HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}},
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(false),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
			}},
		},
	})
	for _, c := range web.pod.Spec.InitContainers {
		if c.Name == inject.InitContainerName || (c.SecurityContext != nil && c.SecurityContext.Capabilities != nil && len(c.SecurityContext.Capabilities.Add) > 0) {
			t.Fatalf("CNI mode: init container %s has privileges: %+v", c.Name, c.SecurityContext)
		}
	}
	want := "spiffe://cluster.local/ns/shop/sa/web"
	if code, body := web.local("GET", "/debug/identity"); code != http.StatusOK || !strings.Contains(body, want) {
		t.Fatalf("GET /debug/identity on the pod's loopback: %d %s, want %s", code, body, want)
	}
	if body, err := web.rt.probe(m.kubelet, web.app, web.app.ReadinessProbe); err != nil {
		t.Fatalf("app readiness probe through the sidecar: %v %q", err, body)
	}
	if body, err := get(m.kubelet, "http://"+web.ip.String()+":8080/"); err == nil {
		t.Fatalf("plaintext reached the app past a strict sidecar: %q", body)
	}
}

// cniSetUp does what the node does for a pod in CNI mode, checking the
// stored tether-validate on both sides: before the rules exist it fails,
// naming the node agent; the rules are then installed from outside the pod
// (see TestInjectedPodRunsCNIMode for the stand-in), and it passes.
func (p *meshPod) cniSetUp(ctx context.Context) {
	t := p.m.t
	t.Helper()
	out, err := p.rt.net.Output(ctx, 0, p.rt.argv(p.init)...)
	if err == nil || !strings.Contains(out, "NOT redirected to the sidecar") || !strings.Contains(out, "DaemonSet tether-cni-node") || !strings.Contains(out, `node "node"`) {
		t.Fatalf("%s: tether-validate without the rules: %v\n%s", p.pod.Name, err, out)
	}
	t.Logf("%s: tether-validate without the rules fails the pod: %s", p.pod.Name, strings.TrimSpace(out))
	p.ns.Run(t, filepath.Join(p.m.cl.bin, "tether-sidecar"), "init", "--capture-dns")
	out = p.rt.run(ctx, p.init)
	if !strings.Contains(out, "redirection in place") {
		t.Fatalf("%s: tether-validate with the rules: %s", p.pod.Name, out)
	}
	t.Logf("%s: tether-validate: %s", p.pod.Name, strings.TrimSpace(out))
}

func ptr[T any](v T) *T { return &v }
