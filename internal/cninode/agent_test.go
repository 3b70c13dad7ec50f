package cninode_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	appsv1client "k8s.io/client-go/kubernetes/typed/apps/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tether-mesh/tether/internal/cni"
	"github.com/tether-mesh/tether/internal/cninode"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
)

const (
	agentNS = "tether-system"
	agentSA = "tether-cni-node"
)

// primary is the conflist the node's primary CNI wrote.
const primary = `{
  "cniVersion": "1.0.0",
  "name": "node",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

// grantRBAC gives the agent's ServiceAccount exactly what docs/cni.md
// says: get pods, and create tokens of itself.
func grantRBAC(t *testing.T, env *kubetest.Env) {
	t.Helper()
	ctx := context.Background()
	rb := env.Client.RbacV1()
	env.EnsureServiceAccount(t, agentNS, agentSA)
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(rb.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: agentSA},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}}, metav1.CreateOptions{}))
	must(rb.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: agentSA},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: agentSA},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: agentNS, Name: agentSA}}}, metav1.CreateOptions{}))
	must(rb.Roles(agentNS).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: agentSA},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, ResourceNames: []string{agentSA}, Verbs: []string{"create"}},
			{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, ResourceNames: []string{agentSA}, Verbs: []string{"get"}},
		}}, metav1.CreateOptions{}))
	must(rb.RoleBindings(agentNS).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: agentSA},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: agentSA},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: agentNS, Name: agentSA}}}, metav1.CreateOptions{}))
}

// node is a temp node: bin and conf dirs, a plugin binary to install.
type node struct {
	bin, conf, plugin string
	clock             *fakeClock
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newNode(t *testing.T) *node {
	dir := t.TempDir()
	n := &node{bin: filepath.Join(dir, "bin"), conf: filepath.Join(dir, "net.d"), plugin: filepath.Join(dir, "tether-cni"),
		clock: &fakeClock{now: time.Now()}}
	for _, d := range []string{n.bin, n.conf} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, n.plugin, "#!/bin/sh\necho plugin v1\n")
	write(t, filepath.Join(n.conf, "10-node.conflist"), primary)
	write(t, filepath.Join(n.conf, "99-other.conflist"), strings.Replace(primary, `"node"`, `"other"`, 1))
	return n
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (n *node) config(env *kubetest.Env, client kubernetes.Interface) cninode.Config {
	return cninode.Config{
		BinDir: n.bin, ConfDir: n.conf, HostConfDir: "/etc/cni/net.d", PluginBinary: n.plugin,
		Client: client, Server: env.Config.Host, CAData: env.Config.CAData,
		Namespace: agentNS, ServiceAccount: agentSA, TokenTTL: time.Hour,
		RepairInterval: 20 * time.Millisecond, Clock: n.clock.Now,
	}
}

// plugins decodes the plugin list of a conflist file.
func plugins(t *testing.T, path string) []map[string]any {
	t.Helper()
	var c struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(read(t, path)), &c); err != nil {
		t.Fatal(err)
	}
	return c.Plugins
}

func wantInstalled(t *testing.T, n *node) {
	t.Helper()
	ps := plugins(t, filepath.Join(n.conf, "10-node.conflist"))
	if len(ps) != 3 || ps[0]["type"] != "bridge" || ps[1]["type"] != "portmap" || ps[2]["type"] != cni.PluginType ||
		ps[2]["kubeconfig"] != "/etc/cni/net.d/"+cninode.KubeconfigName {
		t.Fatalf("first conflist's plugins: %v", ps)
	}
	// The agent's own namespace is always excluded: its pods must not wait
	// on a token only a running agent renews.
	if ex := fmt.Sprint(ps[2]["excludeNamespaces"]); ex != "[kube-system tether-system]" {
		t.Fatalf("excludeNamespaces = %s", ex)
	}
	if got := read(t, filepath.Join(n.conf, "99-other.conflist")); strings.Contains(got, cni.PluginType) {
		t.Fatalf("the second conflist was changed:\n%s", got)
	}
	if read(t, filepath.Join(n.bin, cni.PluginType)) != read(t, n.plugin) {
		t.Fatal("the plugin binary in the bin dir differs from the one to install")
	}
	fi, err := os.Stat(filepath.Join(n.conf, cninode.KubeconfigName))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kubeconfig: %v, mode %v, want 0600", err, fi.Mode())
	}
}

func readyz(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAgent(t *testing.T) {
	env := kubetest.Start(t)
	grantRBAC(t, env)
	client := kubernetes.NewForConfigOrDie(env.ServiceAccountConfig(t, agentNS, agentSA))
	env.EnsurePod(t, "shop", "default", "web")

	t.Run("ReconcileAndReadiness", func(t *testing.T) {
		n := newNode(t)
		a, err := cninode.New(n.config(env, client))
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(a.Handler())
		defer srv.Close()
		if code, body := readyz(t, srv.URL); code != http.StatusServiceUnavailable {
			t.Fatalf("readyz before install: %d %s", code, body)
		}
		ctx := context.Background()
		if err := a.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		wantInstalled(t, n)
		if code, body := readyz(t, srv.URL); code != http.StatusOK {
			t.Fatalf("readyz after install: %d %s", code, body)
		}
		// Again: nothing is written.
		before := read(t, filepath.Join(n.conf, "10-node.conflist"))
		if err := a.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		if after := read(t, filepath.Join(n.conf, "10-node.conflist")); after != before {
			t.Fatalf("second pass rewrote the conflist:\n%s", after)
		}
		for obj, want := range map[string]float64{"entry": 1, "binary": 1, "kubeconfig": 1} {
			if got := metric(t, a, "tether_cni_node_repairs_total", obj); got != want {
				t.Errorf("repairs_total{object=%s} = %v, want %v", obj, got, want)
			}
		}

		// The kubeconfig works for a stock client, with the token's
		// narrow rights: get pods, nothing else.
		rc, err := clientcmd.BuildConfigFromFlags("", filepath.Join(n.conf, cninode.KubeconfigName))
		if err != nil {
			t.Fatal(err)
		}
		pc := kubernetes.NewForConfigOrDie(rc)
		if _, err := pc.CoreV1().Pods("shop").Get(ctx, "web", metav1.GetOptions{}); err != nil {
			t.Fatalf("get pod with the plugin's kubeconfig: %v", err)
		}
		if _, err := pc.CoreV1().Pods("shop").List(ctx, metav1.ListOptions{}); err == nil {
			t.Fatal("the plugin's token may list pods; it must only get them")
		}
		if _, err := pc.CoreV1().Secrets(agentNS).List(ctx, metav1.ListOptions{}); err == nil {
			t.Fatal("the plugin's token may list secrets")
		}

		// Another installer rewrites the conflist: not ready until repaired.
		write(t, filepath.Join(n.conf, "10-node.conflist"), primary)
		if code, body := readyz(t, srv.URL); code != http.StatusServiceUnavailable || !strings.Contains(body, "does not end with tether-cni's entry") {
			t.Fatalf("readyz after the entry was removed: %d %s", code, body)
		}
		if err := a.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		wantInstalled(t, n)
		if got := metric(t, a, "tether_cni_node_repairs_total", "entry"); got != 2 {
			t.Errorf("repairs_total{object=entry} = %v after a repair, want 2", got)
		}
		// The kubeconfig is removed or its mode loosened: restored.
		if err := os.Chmod(filepath.Join(n.conf, cninode.KubeconfigName), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := a.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		wantInstalled(t, n)
		if err := os.Remove(filepath.Join(n.conf, cninode.KubeconfigName)); err != nil {
			t.Fatal(err)
		}
		if a.Ready() == nil {
			t.Fatal("ready without the kubeconfig")
		}
		if err := a.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}

		// A stale entry (another kubeconfig path) and a second copy in the
		// middle of the chain: one entry, ours, at the end.
		stale := strings.Replace(primary, `{"type": "portmap"`, `{"type": "tether-cni", "kubeconfig": "/old"}, {"type": "portmap"`, 1)
		stale = strings.Replace(stale, `"portMappings": true}}`, `"portMappings": true}}, {"type": "tether-cni", "kubeconfig": "/old"}`, 1)
		write(t, filepath.Join(n.conf, "10-node.conflist"), stale)
		if a.Ready() == nil {
			t.Fatal("ready with a stale entry")
		}
		if err := a.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		wantInstalled(t, n)

		// The token is renewed after 80% of its lifetime, not before.
		kc := read(t, filepath.Join(n.conf, cninode.KubeconfigName))
		n.clock.Add(47 * time.Minute)
		if err := a.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		if read(t, filepath.Join(n.conf, cninode.KubeconfigName)) != kc {
			t.Fatal("token renewed before 80% of its lifetime")
		}
		n.clock.Add(2 * time.Minute)
		if err := a.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		if read(t, filepath.Join(n.conf, cninode.KubeconfigName)) == kc {
			t.Fatal("token not renewed after 80% of its lifetime")
		}
		if got := metric(t, a, "tether_cni_node_token_renewals_total", "ok"); got != 2 {
			t.Errorf("token_renewals_total{result=ok} = %v, want 2", got)
		}
	})

	t.Run("OwnNamespaceExcluded", func(t *testing.T) {
		n := newNode(t)
		cfg := n.config(env, client)
		cfg.ExcludeNamespaces = []string{"kube-system"}
		a, err := cninode.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Reconcile(context.Background()); err != nil {
			t.Fatal(err)
		}
		ps := plugins(t, filepath.Join(n.conf, "10-node.conflist"))
		if ex := fmt.Sprint(ps[len(ps)-1]["excludeNamespaces"]); ex != "[kube-system "+agentNS+"]" {
			t.Fatalf("excludeNamespaces = %s, want the agent's own namespace added", ex)
		}
	})

	t.Run("TokenRenewalFails", func(t *testing.T) {
		n := newNode(t)
		a, err := cninode.New(n.config(env, client))
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if err := a.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		// The agent loses the right to request tokens.
		rbs := env.Client.RbacV1().RoleBindings(agentNS)
		rb, err := rbs.Get(ctx, agentSA, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := rbs.Delete(ctx, agentSA, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() {
			rb.ResourceVersion = ""
			if _, err := rbs.Create(ctx, rb, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}()
		// Renewal is due but the token is still valid: the entry is still
		// repaired, and the failure counted.
		n.clock.Add(50 * time.Minute)
		write(t, filepath.Join(n.conf, "10-node.conflist"), primary)
		waitFor(t, func() bool {
			return a.Reconcile(ctx) == nil && metric(t, a, "tether_cni_node_token_renewals_total", "error") >= 1
		})
		wantInstalled(t, n)
		// Expired and not renewable: an error.
		n.clock.Add(11 * time.Minute)
		if err := a.Reconcile(ctx); err == nil || !strings.Contains(err.Error(), "serviceaccounts/token") {
			t.Fatalf("Reconcile with an expired token that cannot be renewed: %v", err)
		}
	})

	t.Run("RunRepairsAndUninstallsOnExit", func(t *testing.T) {
		n := newNode(t)
		a, err := cninode.New(n.config(env, client))
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		url := "http://" + l.Addr().String()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx, l, true) }()
		waitReady(t, url)
		wantInstalled(t, n)

		// Another installer rewrites the file without the entry.
		write(t, filepath.Join(n.conf, "10-node.conflist"), primary)
		waitFor(t, func() bool { return len(plugins(t, filepath.Join(n.conf, "10-node.conflist"))) == 3 })
		wantInstalled(t, n)
		// One that appends after tether-cni: tether-cni goes back to the end.
		c := strings.Replace(read(t, filepath.Join(n.conf, "10-node.conflist")), `"type": "tether-cni"`, `"type": "tether-cni"}, {"type": "tuning"`, 1)
		write(t, filepath.Join(n.conf, "10-node.conflist"), c)
		waitFor(t, func() bool {
			ps := plugins(t, filepath.Join(n.conf, "10-node.conflist"))
			return len(ps) == 4 && ps[2]["type"] == "tuning" && ps[3]["type"] == cni.PluginType
		})
		// The binary is replaced: restored.
		write(t, filepath.Join(n.bin, cni.PluginType), "tampered")
		waitFor(t, func() bool { return read(t, filepath.Join(n.bin, cni.PluginType)) == read(t, n.plugin) })

		cancel() // SIGTERM with --uninstall-on-exit
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		ps := plugins(t, filepath.Join(n.conf, "10-node.conflist"))
		if len(ps) != 3 || ps[0]["type"] != "bridge" || ps[1]["type"] != "portmap" || ps[2]["type"] != "tuning" {
			t.Fatalf("after uninstall, the first conflist's plugins are %v, want bridge, portmap, tuning", ps)
		}
		for _, p := range []string{filepath.Join(n.bin, cni.PluginType), filepath.Join(n.conf, cninode.KubeconfigName)} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("after uninstall %s: %v", p, err)
			}
		}
		if err := a.Ready(); err == nil {
			t.Error("ready after uninstall")
		}
		// uninstall again (tether-cni-node uninstall): nothing left to do.
		if err := cninode.Uninstall(n.bin, n.conf, nil); err != nil {
			t.Fatalf("second uninstall: %v", err)
		}
	})

	t.Run("ExitKeepsUnlessUninstalled", func(t *testing.T) { testExit(t, env, client) })

	t.Run("NotReadyCases", func(t *testing.T) {
		ctx := context.Background()
		// No conflist yet: the primary CNI has not written one.
		n := newNode(t)
		for _, f := range []string{"10-node.conflist", "99-other.conflist"} {
			os.Remove(filepath.Join(n.conf, f))
		}
		a, err := cninode.New(n.config(env, client))
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Reconcile(ctx); err == nil || !strings.Contains(err.Error(), "no CNI network configuration") {
			t.Fatalf("Reconcile without a conflist: %v", err)
		}
		if a.Ready() == nil || metric(t, a, "tether_cni_node_ready", "") != 0 {
			t.Fatal("ready without a conflist")
		}
		// The primary CNI writes it later: installed on the next pass.
		write(t, filepath.Join(n.conf, "10-node.conflist"), primary)
		if err := a.Reconcile(ctx); err != nil || a.Ready() != nil || metric(t, a, "tether_cni_node_ready", "") != 1 {
			t.Fatalf("Reconcile once the conflist exists: %v, ready: %v", err, a.Ready())
		}

		// A single-plugin .conf first: refused with the reason.
		n = newNode(t)
		write(t, filepath.Join(n.conf, "05-single.conf"), `{"cniVersion": "0.4.0", "name": "x", "type": "bridge"}`)
		a, _ = cninode.New(n.config(env, client))
		if err := a.Reconcile(ctx); err == nil || !strings.Contains(err.Error(), "single-plugin configuration") {
			t.Fatalf("Reconcile with a .conf first: %v", err)
		}
		// Malformed conflist: refused, file left alone.
		n = newNode(t)
		write(t, filepath.Join(n.conf, "10-node.conflist"), "{broken")
		a, _ = cninode.New(n.config(env, client))
		if err := a.Reconcile(ctx); err == nil || !strings.Contains(err.Error(), "not a JSON object") {
			t.Fatalf("Reconcile with a broken conflist: %v", err)
		}
		if read(t, filepath.Join(n.conf, "10-node.conflist")) != "{broken" {
			t.Fatal("a broken conflist was rewritten")
		}

		// No right to request tokens: a clear error, no entry.
		n = newNode(t)
		env.EnsureServiceAccount(t, agentNS, "nobody")
		cfg := n.config(env, kubernetes.NewForConfigOrDie(env.ServiceAccountConfig(t, agentNS, "nobody")))
		cfg.ServiceAccount = "nobody"
		a, _ = cninode.New(cfg)
		if err := a.Reconcile(ctx); err == nil || !strings.Contains(err.Error(), "serviceaccounts/token") {
			t.Fatalf("Reconcile without token rights: %v", err)
		}
		if strings.Contains(read(t, filepath.Join(n.conf, "10-node.conflist")), cni.PluginType) {
			t.Fatal("the entry was installed though the plugin has no credentials")
		}

		cfg.TokenTTL = 5 * time.Minute
		if _, err := cninode.New(cfg); err == nil || !strings.Contains(err.Error(), "--token-ttl") {
			t.Fatalf("New with a 5m token: %v", err)
		}
	})
}

// metric reads one sample of the agent's registry (label value "" for an
// unlabelled metric).
func metric(t *testing.T, a *cninode.Agent, name, label string) float64 {
	t.Helper()
	mfs, err := a.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("condition not met within 5s")
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	waitFor(t, func() bool {
		code, _ := readyz(t, url)
		return code == http.StatusOK
	})
}

// daemonSet creates the agent's DaemonSet in the test API server (no
// controller runs there: it is only an object), with a finalizer so that
// deleting it leaves it "being deleted".
func daemonSet(t *testing.T, env *kubetest.Env, name string) {
	t.Helper()
	labels := map[string]string{"app": name}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: agentNS, Finalizers: []string{"tether.dev/test"}},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "node", Image: "tether"}}},
			},
		},
	}
	dss := env.Client.AppsV1().DaemonSets(agentNS)
	if _, err := dss.Create(context.Background(), ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dss.Patch(context.Background(), name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
		dss.Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

// runAndStop runs the agent with --uninstall-on-exit until it is in place,
// then stops it as SIGTERM does, and reports whether the entry, the binary
// and the kubeconfig are still on the node.
func runAndStop(t *testing.T, cfg cninode.Config, n *node) (kept bool) {
	t.Helper()
	a, err := cninode.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, l, true) }()
	waitReady(t, "http://"+l.Addr().String())
	cancel()
	start := time.Now()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(start); d > cninode.ExitCheckTimeout+time.Second {
		t.Errorf("the exit took %s, longer than the %s bound", d, cninode.ExitCheckTimeout)
	}
	present := 0
	for _, p := range []string{filepath.Join(n.bin, cni.PluginType), filepath.Join(n.conf, cninode.KubeconfigName)} {
		if _, err := os.Stat(p); err == nil {
			present++
		}
	}
	entry := strings.Contains(read(t, filepath.Join(n.conf, "10-node.conflist")), cni.PluginType)
	if (present == 2) != entry || (present != 0 && present != 2) {
		t.Fatalf("half removed: entry %v, %d of binary and kubeconfig", entry, present)
	}
	return entry
}

// testExit: on exit with --uninstall-on-exit the agent keeps tether-cni in
// place while its DaemonSet exists (a restart: pods created meanwhile
// wait for the next agent instead of getting no rules), and removes it
// when the DaemonSet is deleted or being deleted, when the API server
// refuses to say (uninstall deleted the agent's RBAC with it) or cannot
// be reached (within the bound), and when no DaemonSet is named.
func testExit(t *testing.T, env *kubetest.Env, client kubernetes.Interface) {
	const ds = agentSA
	unreachable := rest.CopyConfig(env.Config)
	unreachable.Host = "https://127.0.0.1:1"
	offline := kubernetes.NewForConfigOrDie(unreachable)
	env.EnsureServiceAccount(t, agentNS, "no-rbac")
	noRBAC := kubernetes.NewForConfigOrDie(env.ServiceAccountConfig(t, agentNS, "no-rbac"))
	// An API server that accepts connections and never answers.
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	go func() {
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	hanging := rest.CopyConfig(env.Config)
	hanging.Host = "https://" + hung.Addr().String()
	silent := kubernetes.NewForConfigOrDie(hanging)

	daemonSet(t, env, ds)
	dss := env.Client.AppsV1().DaemonSets(agentNS)
	for _, c := range []struct {
		name      string
		daemonSet string
		exitWith  kubernetes.Interface // the agent's client when it exits
		before    func(t *testing.T)
		kept      bool
		reason    string
	}{
		{"restart: the DaemonSet exists", ds, nil, nil, true, "DaemonSet tether-system/tether-cni-node exists and is not being deleted"},
		{"no DaemonSet named", "", nil, nil, false, "no DaemonSet given (--daemonset)"},
		{"RBAC deleted too: 403", ds, noRBAC, nil, false, "cannot get resource \\\"daemonsets\\\" in API group \\\"apps\\\""},
		{"API server unreachable", ds, offline, nil, false, "cannot tell whether DaemonSet tether-system/tether-cni-node is being deleted"},
		{"API server does not answer", ds, silent, nil, false, "context deadline exceeded"},
		{"DaemonSet being deleted", ds, nil, func(t *testing.T) {
			if err := dss.Delete(context.Background(), ds, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}, false, "DaemonSet tether-system/tether-cni-node is being deleted (since "},
		{"DaemonSet deleted", ds, nil, func(t *testing.T) {
			if _, err := dss.Patch(context.Background(), ds, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool {
				_, err := dss.Get(context.Background(), ds, metav1.GetOptions{})
				return apierrors.IsNotFound(err)
			})
		}, false, "DaemonSet tether-system/tether-cni-node is deleted: uninstall"},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newNode(t)
			cfg := n.config(env, client)
			cfg.DaemonSet = c.daemonSet
			var logs testutil.SyncBuffer
			cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			if c.exitWith != nil {
				cfg.Client = &exitClient{Interface: client, apps: c.exitWith}
			}
			if c.before != nil {
				c.before(t)
			}
			if kept := runAndStop(t, cfg, n); kept != c.kept {
				t.Fatalf("tether-cni kept on the node: %v, want %v; log:\n%s", kept, c.kept, logs.String())
			}
			want := "exiting; removing tether-cni from the node"
			if c.kept {
				want = "exiting; tether-cni stays on the node"
			}
			if !strings.Contains(logs.String(), want) || !strings.Contains(logs.String(), c.reason) {
				t.Errorf("log does not say %q with reason %q:\n%s", want, c.reason, logs.String())
			}
			t.Logf("%s", logLine(logs.String(), "exiting;"))
			if c.kept {
				// What stays is what the next agent finds in place.
				wantInstalled(t, n)
			}
		})
	}
}

// exitClient is the agent's client whose DaemonSet reads go to apps: the
// API server as the agent finds it when it exits.
type exitClient struct {
	kubernetes.Interface
	apps kubernetes.Interface
}

func (c *exitClient) AppsV1() appsv1client.AppsV1Interface { return c.apps.AppsV1() }

// logLine is the first line of s holding sub.
func logLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
