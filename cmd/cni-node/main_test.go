package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-mesh/tether/internal/freeport"
	"github.com/tether-mesh/tether/internal/kubetest"
)

// TestBinary runs the built tether-cni-node as the DaemonSet would (flags,
// its own ServiceAccount, its pod's name), against temp CNI folders and a
// kube-apiserver: it installs and gets ready; the plugin's token is bound
// to the agent's pod and stops working when that pod is deleted; SIGTERM
// with --uninstall-on-exit and no DaemonSet (it was deleted) removes
// everything; `uninstall` again is a no-op.
func TestBinary(t *testing.T) {
	env := kubetest.Start(t)
	ctx := context.Background()
	const ns, sa = "kube-system", "tether-cni-node"
	env.EnsureServiceAccount(t, ns, sa)
	if _, err := env.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: sa},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: sa},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: sa},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: sa}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	agentPod, err := env.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "tether-cni-node-x1", Namespace: ns},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "node", Image: "registry.invalid/tether"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	bin, conf := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	for _, d := range []string{bin, conf} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	plugin := filepath.Join(dir, "tether-cni")
	agent := filepath.Join(dir, "tether-cni-node")
	if out, err := exec.Command("go", "build", "-o", agent, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := os.WriteFile(plugin, []byte("plugin"), 0o755); err != nil {
		t.Fatal(err)
	}
	conflist := filepath.Join(conf, "10-node.conflist")
	if err := os.WriteFile(conflist, []byte(`{"cniVersion": "1.0.0", "name": "node", "plugins": [{"type": "loopback"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	ports, err := freeport.Ports(1, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", ports[0])
	args := []string{"--kubeconfig", env.Kubeconfig(t), "--namespace", ns, "--service-account", sa, "--pod-name", agentPod.Name,
		"--cni-bin-dir", bin, "--cni-conf-dir", conf, "--host-cni-conf-dir", "/etc/cni/net.d", "--plugin-binary", plugin,
		"--listen", listen, "--repair-interval", "100ms", "--token-ttl", "10m", "--daemonset", "tether-cni-node", "--node-name", "node-7"}
	cmd := exec.Command(agent, append(args, "--uninstall-on-exit")...)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("tether-cni-node log:\n%s", logs.String())
		}
	})

	waitFor(t, 30*time.Second, "tether-cni-node ready", func() bool {
		resp, err := http.Get("http://" + listen + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if b, _ := os.ReadFile(conflist); !strings.Contains(string(b), `"type": "tether-cni"`) || !strings.Contains(string(b), `"nodeName": "node-7"`) {
		t.Fatalf("conflist after install:\n%s", b)
	}
	resp, err := http.Get("http://" + listen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}

	// The plugin's kubeconfig may get pods, until the agent's pod is gone.
	rc, err := clientcmd.BuildConfigFromFlags("", filepath.Join(conf, "tether-cni.kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	pc := kubernetes.NewForConfigOrDie(rc)
	if _, err := pc.CoreV1().Pods(ns).Get(ctx, agentPod.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("get a pod with the plugin's kubeconfig: %v", err)
	}
	if err := env.Client.CoreV1().Pods(ns).Delete(ctx, agentPod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the token bound to the deleted agent pod to stop working", func() bool {
		_, err := pc.CoreV1().Pods(ns).Get(ctx, "anything", metav1.GetOptions{})
		return err != nil && strings.Contains(err.Error(), "Unauthorized")
	})

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("tether-cni-node after SIGTERM: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("tether-cni-node did not exit within 10s of SIGTERM")
	}
	// No DaemonSet tether-cni-node in the API server: an uninstall.
	if want := "DaemonSet kube-system/tether-cni-node is deleted: uninstall"; !strings.Contains(logs.String(), want) {
		t.Errorf("the log does not say %q:\n%s", want, logs.String())
	}
	if b, _ := os.ReadFile(conflist); strings.Contains(string(b), "tether-cni") || !strings.Contains(string(b), "loopback") {
		t.Fatalf("conflist after uninstall on exit:\n%s", b)
	}
	for _, p := range []string{filepath.Join(bin, "tether-cni"), filepath.Join(conf, "tether-cni.kubeconfig")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s after uninstall: %v", p, err)
		}
	}
	if out, err := exec.Command(agent, "uninstall", "--cni-bin-dir", bin, "--cni-conf-dir", conf).CombinedOutput(); err != nil {
		t.Fatalf("tether-cni-node uninstall with nothing installed: %v\n%s", err, out)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
}
