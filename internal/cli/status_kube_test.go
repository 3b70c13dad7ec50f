package cli_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/tether-mesh/tether/internal/kubetest"
)

// hostIP returns an address of this machine that the API server's pod
// proxy accepts as a pod IP (a global unicast IPv4 address, not loopback),
// or "" if there is none.
func hostIP(t *testing.T) string {
	ifaces, err := net.Interfaces()
	if err != nil {
		return ""
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
				// It must be bindable here.
				l, err := net.Listen("tcp", net.JoinHostPort(n.IP.String(), "0"))
				if err != nil {
					continue
				}
				l.Close()
				return n.IP.String()
			}
		}
	}
	return ""
}

// runningPod creates a pod, with the sidecar if meshed (an app pod of the
// mesh; the control plane has none), and marks it Running at ip, as a
// kubelet would (the test API server has none).
func runningPod(ctx context.Context, t *testing.T, env *kubetest.Env, ns, name, sa string, labels map[string]string, adminPort int, ip string, meshed bool) {
	t.Helper()
	env.EnsureServiceAccount(t, ns, sa)
	c := corev1.Container{Name: "main", Image: "registry.invalid/tether:test"}
	if adminPort > 0 {
		c.Ports = []corev1.ContainerPort{{Name: "admin", ContainerPort: int32(adminPort)}}
	}
	spec := corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{c}}
	if meshed {
		spec.InitContainers = []corev1.Container{kubetest.MeshSidecar()}
	}
	pod, err := env.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       spec,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ip == "" {
		return // stays Pending
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP, pod.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
	if _, err := env.Client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("mark pod %s/%s running: %v", ns, name, err)
	}
}

func port(t *testing.T, addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// TestStatusKubernetes runs tether status against a real kube-apiserver:
// what it says when the control plane is missing or not running, or RBAC
// forbids reading it, and, when this machine has an address the API
// server's pod proxy accepts, a real mesh reached only through the pod
// proxy (pods marked Running at this machine's address, as no kubelet
// runs here).
func TestStatusKubernetes(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := writeKubeconfig(t, "test", map[string]*rest.Config{"test": env.Config})
	env.EnsureNamespace(t, "tether-system")

	s, errOut, code := statusOf(t, "--kubeconfig", admin)
	if code != 1 || s.Mode != "kubernetes" || s.CA == nil ||
		!strings.Contains(s.CA.Error, "no pods labelled app.kubernetes.io/name=tether-ca in namespace tether-system (is Tether installed?") ||
		len(s.Discovery) != 1 || !strings.Contains(s.Discovery[0].Error, "no pods labelled app.kubernetes.io/name=tether-discovery") ||
		len(s.Sidecars) != 0 || len(s.Problems) != 2 {
		t.Errorf("no control plane: exit %d, %+v, stderr %q", code, s, errOut)
	}

	// Pods that never started.
	runningPod(ctx, t, env, "tether-system", "tether-ca-pending", "tether-ca", map[string]string{"app.kubernetes.io/name": "tether-ca"}, 15014, "", false)
	s, _, _ = statusOf(t, "--kubeconfig", admin)
	if !strings.Contains(s.CA.Error, "no running pod labelled app.kubernetes.io/name=tether-ca in namespace tether-system: tether-ca-pending is Pending") {
		t.Errorf("pending CA: %q", s.CA.Error)
	}

	// A user RBAC does not let read pods.
	nobody := writeKubeconfig(t, "nobody", map[string]*rest.Config{"nobody": env.UserConfig(t, "nobody")})
	s, _, code = statusOf(t, "--kubeconfig", nobody)
	if code != 1 || !strings.Contains(s.CA.Error, "RBAC forbids it") || !strings.Contains(s.CA.Error, `User "nobody" cannot list resource "pods"`) ||
		!strings.Contains(s.CA.Error, "get on pods/proxy") {
		t.Errorf("no RBAC: exit %d, CA error %q", code, s.CA.Error)
	}

	ip := hostIP(t)
	if ip == "" {
		t.Skip("this machine has no non-loopback IPv4 address; the API server's pod proxy refuses loopback pod IPs, so the end-to-end part is skipped")
	}
	m := startStatusMesh(t, ip)
	runningPod(ctx, t, env, "tether-system", "tether-ca-0", "tether-ca", map[string]string{"app.kubernetes.io/name": "tether-ca"}, port(t, m.caAdmin), ip, false)
	runningPod(ctx, t, env, "tether-system", "tether-discovery-0", "tether-discovery", map[string]string{"app.kubernetes.io/name": "tether-discovery"}, port(t, m.discAdmin), ip, false)

	eventuallyNoFatal(t, "the CA through the pod proxy", 30*time.Second, func() bool {
		s, errOut, code = statusOf(t, "--kubeconfig", admin)
		return s.CA != nil && s.CA.Error == ""
	})
	if s.CA == nil || s.CA.Error != "" || s.CA.Source != "pod tether-system/tether-ca-0 /metrics" || s.CA.BundleSequence != 1 ||
		len(s.CA.Generations) != 1 || s.CA.Generations[0].State != "active" || time.Until(s.CA.Generations[0].RootExpires) < 360*24*time.Hour {
		t.Errorf("CA through the pod proxy: %+v", s.CA)
	}
	// Discovery's list of sidecars answers only on its pod's loopback
	// (issue 11 item 4), which the pod proxy cannot reach: the status
	// says so and how to reach it.
	if len(s.Discovery) != 1 || s.Discovery[0].Source != "pod tether-system/tether-discovery-0" || s.Discovery[0].Sidecars != 0 ||
		!strings.Contains(s.Discovery[0].Error, "only on its pod's loopback") ||
		!strings.Contains(s.Discovery[0].Error, "kubectl port-forward -n tether-system pod/tether-discovery-0 "+strconv.Itoa(port(t, m.discAdmin))) {
		t.Errorf("discovery through the pod proxy: %+v", s.Discovery)
	}
	if code != 1 || len(s.Problems) != 1 {
		t.Errorf("exit %d, problems %q (want discovery's)", code, s.Problems)
	}
	out, _, _ := run(t, "status", "--kubeconfig", admin)
	t.Logf("tether status --kubeconfig:\n%s", out)
}
