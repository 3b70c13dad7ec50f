//go:build linux

package cni_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/internal/cni"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/netns"
	"github.com/tether-mesh/tether/pkg/inject"
	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// The node network of these tests lives in a namespace the test creates
// ("node"), which holds the bridge; every address is a private one that
// exists only inside the test's namespaces.
const (
	subnet   = "10.213.0.0/24"
	gateway  = "10.213.0.1"
	subnet6  = "fd00:213::/64"
	gateway6 = "fd00:213::1"
	podNS    = "shop"
	cniDir   = "/usr/lib/cni"
)

// stdPlugins are the stock plugins the tests chain tether-cni after.
var stdPlugins = []string{"bridge", "host-local", "loopback"}

// buildOnce builds tether-cni once per test binary.
var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "tether-cni-bin-")
	if err != nil {
		return "", err
	}
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, cni.PluginType), "github.com/tether-mesh/tether/cmd/cni").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/cni: %v\n%s", err, out)
	}
	return dir, nil
})

// rig is a "node": a namespace holding the pod bridge, a bin dir with
// tether-cni and the stock plugins, and a kube-apiserver holding the pods.
type rig struct {
	env        *kubetest.Env
	node       *netns.NS
	binDir     string
	kubeconfig string
	cni        *libcni.CNIConfig
	dir        string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	netns.RequireRoot(t)
	for _, p := range stdPlugins {
		if _, err := os.Stat(filepath.Join(cniDir, p)); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s/%s missing: install containernetworking-plugins (make deps)", cniDir, p)
			}
			t.Skipf("%s/%s missing: install containernetworking-plugins (make deps)", cniDir, p)
		}
	}
	built, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{env: kubetest.Start(t), node: netns.New(t, "node"), dir: t.TempDir()}
	r.binDir = filepath.Join(r.dir, "bin")
	if err := os.MkdirAll(r.binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(built, cni.PluginType), filepath.Join(r.binDir, cni.PluginType)); err != nil {
		t.Fatal(err)
	}
	// The stock bridge runs inside the node namespace, so the bridge and
	// the veth ends it makes never touch the host; tether-cni runs where
	// the runtime runs it, in the host namespace (it reaches the API server
	// on loopback there) and enters the pod's namespace by path.
	shim := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s/bridge\n", r.node.Name(), cniDir)
	if err := os.WriteFile(filepath.Join(r.binDir, "bridge"), []byte(shim), 0o755); err != nil {
		t.Fatal(err)
	}
	r.cni = libcni.NewCNIConfigWithCacheDir([]string{r.binDir, cniDir}, filepath.Join(r.dir, "cache"), nil)
	r.kubeconfig = r.nodeAgentKubeconfig(t, "tether-cni-node", true)
	r.env.EnsureServiceAccount(t, podNS, "default")
	return r
}

// nodeAgentKubeconfig writes the kubeconfig tether-cni-node would write for
// ServiceAccount tether-system/sa, which may get pods when allowed.
func (r *rig) nodeAgentKubeconfig(t *testing.T, sa string, allowed bool) string {
	t.Helper()
	ctx := context.Background()
	if allowed {
		cr := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: sa},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}}
		if _, err := r.env.Client.RbacV1().ClusterRoles().Create(ctx, cr, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: sa},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: sa},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "tether-system", Name: sa}}}
		if _, err := r.env.Client.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	token := r.env.ServiceAccountToken(t, "tether-system", sa, time.Hour)
	b, err := cni.Kubeconfig(r.env.Config.Host, r.env.Config.CAData, token)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(r.dir, sa+".kubeconfig")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// list is a conflist: first (bridge, or loopback) then tether-cni with
// the given kubeconfig.
func (r *rig) list(t *testing.T, first, kubeconfig string) *libcni.NetworkConfigList {
	t.Helper()
	var plugin string
	switch first {
	case "bridge":
		plugin = fmt.Sprintf(`{"type": "bridge", "bridge": "tcni0", "isGateway": true,
		  "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}], [{"subnet": %q}]], "dataDir": %q}}`,
			subnet, subnet6, filepath.Join(r.dir, "ipam"))
	case "loopback":
		plugin = `{"type": "loopback"}`
	}
	b := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "tether-test", "plugins": [%s,
	  {"type": "tether-cni", "kubeconfig": %q}]}`, plugin, kubeconfig)
	l, err := libcni.ConfListFromBytes([]byte(b))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// exec runs tether-cni alone (libcni's invoke package) with conf as its
// stdin, as a runtime would for one plugin of a chain.
func (r *rig) exec(ctx context.Context, cmd string, pod *netns.NS, name, conf string) (types.Result, error) {
	return invoke.ExecPluginWithResult(ctx, filepath.Join(r.binDir, cni.PluginType), []byte(conf),
		&invoke.Args{Command: cmd, ContainerID: "c-" + pod.Name(), NetNS: pod.Path(), IfName: "eth0", Path: r.binDir,
			PluginArgsStr: "K8S_POD_NAMESPACE=" + podNS + ";K8S_POD_NAME=" + name}, nil)
}

func runtimeConf(ns *netns.NS, pod string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: "c-" + ns.Name(), NetNS: ns.Path(), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", podNS}, {"K8S_POD_NAME", pod}},
	}
}

// pod creates a pod in podNS; meshed pods carry the sidecar as the
// injector's cni mode adds it (with --discovery, so DNS is captured).
func (r *rig) pod(t *testing.T, name string, meshed bool, annotations map[string]string) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: podNS, Annotations: annotations},
		Spec:       corev1.PodSpec{ServiceAccountName: "default", Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app"}}},
	}
	if meshed {
		side := kubetest.MeshSidecar()
		side.Args = []string{"--transparent", "--discovery", "tether-discovery.tether-system.svc:15010"}
		p.Spec.InitContainers = []corev1.Container{side}
	}
	if _, err := r.env.Client.CoreV1().Pods(podNS).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func runner(ns *netns.NS) capture.Runner { return capture.ExecRunner{Start: ns.StartCmd} }

// wantConfig is the capture config of a meshed pod of these tests.
func wantConfig(pod *netns.NS, exclOut, exclIn []int) capture.Config {
	c := capture.DefaultConfig()
	c.ExcludeOutboundPorts, c.ExcludeInboundPorts = exclOut, exclIn
	_ = pod.Do(func() error { c.IPv6 = capture.IPv6Enabled(); return nil })
	return c
}

// sidecarStandIn listens where the sidecar would (outbound TCP, DNS) in
// pod and answers with the original destination it was captured from.
func sidecarStandIn(t *testing.T, pod *netns.NS) {
	t.Helper()
	for _, addr := range []string{"127.0.0.1", "[::1]"} {
		l, err := pod.Listen("tcp", fmt.Sprintf("%s:%d", addr, capture.DefaultOutboundPort))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go serveOrigDst(l)
	}
	pod.ServeUDP(t, fmt.Sprintf("127.0.0.1:%d", capture.DefaultDNSPort), "sidecar-dns")
}

// serveOrigDst answers each connection with the destination it was
// captured from.
func serveOrigDst(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		dst, err := capture.OriginalDst(c.(*net.TCPConn))
		fmt.Fprintf(c, "sidecar: %v %v", dst, err)
		c.Close()
	}
}

// dial connects from inside ns and returns what the server sends, or the error.
func dial(ns *netns.NS, network, addr string) string {
	var out string
	err := ns.Do(func() error {
		c, err := net.DialTimeout(network, addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if network == "udp" {
			if _, err := c.Write([]byte("q")); err != nil {
				return err
			}
			buf := make([]byte, 512)
			n, err := c.Read(buf)
			out = string(buf[:n])
			return err
		}
		b, err := io.ReadAll(c)
		out = string(b)
		return err
	})
	if err != nil {
		return "error: " + err.Error()
	}
	return out
}

// TestPlugin runs the plugin through libcni against one kube-apiserver.
func TestPlugin(t *testing.T) {
	r := newRig(t)
	t.Run("AddCheckDel", func(t *testing.T) { testAddCheckDel(t, r) })
	t.Run("AnnotationRemovedStillCaptured", func(t *testing.T) { testAnnotationRemoved(t, r) })
	t.Run("NotMeshedIsNoOp", func(t *testing.T) { testNotMeshed(t, r) })
	t.Run("ConfigFromThePod", func(t *testing.T) { testConfigFromPod(t, r) })
	t.Run("BadInputs", func(t *testing.T) { testBadInputs(t, r) })
}

// testAddCheckDel: ADD captures a meshed pod as its annotations say,
// again gives the same table, CHECK passes until a rule is deleted, DEL
// removes Tether's rules and nothing else.
func testAddCheckDel(t *testing.T, r *rig) {
	r.pod(t, "web", true, map[string]string{
		inject.AnnotationRedirect:             inject.RedirectCNI,
		inject.AnnotationExcludeOutboundPorts: "5432",
		inject.AnnotationExcludeInboundPorts:  "9090",
	})
	pod := netns.New(t, "pod")
	// A rule that is not Tether's, which nothing may touch.
	pod.Run(t, "iptables", "-t", "nat", "-N", "KEEP_ME")
	pod.Run(t, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "KEEP_ME")
	list, rt := r.list(t, "bridge", r.kubeconfig), runtimeConf(pod, "web")
	ctx := context.Background()
	// The runtime passes the pod's UID: the plugin checks it is that pod.
	web, err := r.env.Client.CoreV1().Pods(podNS).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rt.Args = append(rt.Args, [2]string{"K8S_POD_UID", string(web.UID)})

	res, err := r.cni.AddNetworkList(ctx, list, rt)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	// The bridge's result comes through tether-cni unchanged.
	res100, err := types100.NewResultFromResult(res)
	if err != nil || len(res100.IPs) != 2 || !strings.HasPrefix(res100.IPs[0].Address.String(), "10.213.0.") ||
		!strings.HasPrefix(res100.IPs[1].Address.String(), "fd00:213::") {
		t.Fatalf("ADD result %v (%v): want the bridge's IPs in %s and %s", res, err, subnet, subnet6)
	}
	// The pod has an IPv6 address: IPv6 capture is required, not best effort.
	want := wantConfig(pod, []int{5432}, []int{9090})
	want.CaptureDNS, want.IPv6 = true, true
	if err := capture.Verify(ctx, want, runner(pod)); err != nil {
		t.Fatalf("after ADD: %v\n%s", err, pod.Run(t, "iptables-save", "-t", "nat"))
	}

	// Traffic: outbound TCP reaches the sidecar stand-in with its original
	// destination, DNS reaches its DNS port, the excluded port goes out.
	sidecarStandIn(t, pod)
	direct, err := r.node.Listen("tcp", gateway+":5432")
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	go func() {
		for {
			c, err := direct.Accept()
			if err != nil {
				return
			}
			fmt.Fprint(c, "direct")
			c.Close()
		}
	}()
	if got, want := dial(pod, "tcp", gateway+":80"), "sidecar: "+gateway+":80 <nil>"; got != want {
		t.Errorf("pod -> %s:80: got %q, want %q", gateway, got, want)
	}
	// The other address family is captured too.
	if got, want := dial(pod, "tcp", "["+gateway6+"]:80"), "sidecar: ["+gateway6+"]:80 <nil>"; got != want {
		t.Errorf("pod -> [%s]:80: got %q, want %q", gateway6, got, want)
	}
	if got := dial(pod, "udp", gateway+":53"); got != "sidecar-dns" {
		t.Errorf("pod DNS to %s:53: got %q, want the sidecar's DNS port to answer", gateway, got)
	}
	if got := dial(pod, "tcp", gateway+":5432"); got != "direct" {
		t.Errorf("pod -> %s:5432 (excluded by annotation): got %q, want direct", gateway, got)
	}

	// ADD again (the runtime retries): the same table.
	before := pod.Run(t, "iptables-save", "-t", "nat")
	prev, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "tether-test", "type": "tether-cni", "kubeconfig": %q, "prevResult": %s}`, r.kubeconfig, prev)
	if _, err := r.exec(ctx, "ADD", pod, "web", conf); err != nil {
		t.Fatalf("second ADD: %v", err)
	}
	if after := pod.Run(t, "iptables-save", "-t", "nat"); stripCounters(after) != stripCounters(before) {
		t.Errorf("second ADD changed the table:\n%s\nthen:\n%s", before, after)
	}

	if err := r.cni.CheckNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	// Someone removes a rule: CHECK says which.
	pod.Run(t, "iptables", "-t", "nat", "-D", "TETHER_OUTPUT", "-p", "tcp", "-m", "tcp", "--dport", "5432", "-j", "RETURN")
	err = r.cni.CheckNetworkList(ctx, list, rt)
	if err == nil || !strings.Contains(err.Error(), "--dport 5432 -j RETURN") || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("CHECK after a rule was deleted: %v, want an error naming the missing rule", err)
	}

	if err := r.cni.DelNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	s := pod.Run(t, "iptables-save", "-t", "nat")
	if strings.Contains(s, "TETHER") || !strings.Contains(s, "-A OUTPUT -p tcp -m tcp --dport 9999 -j KEEP_ME") {
		t.Fatalf("after DEL the table is:\n%s", s)
	}
	if s := pod.Run(t, "ip6tables-save", "-t", "nat"); strings.Contains(s, "TETHER") {
		t.Fatalf("after DEL the IPv6 table is:\n%s", s)
	}
	// DEL again, and DEL of a namespace that is gone: no error.
	if err := r.cni.DelNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	gone := runtimeConf(pod, "web")
	gone.ContainerID, gone.NetNS = "gone", "/run/netns/tether-cni-test-gone"
	if err := r.cni.DelNetworkList(ctx, r.list(t, "loopback", r.kubeconfig), gone); err != nil {
		t.Fatalf("DEL of a missing netns: %v", err)
	}
}

func stripCounters(s string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, ":") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// testAnnotationRemoved: the annotation can be removed after
// admission, the containers cannot change; a pod with the sidecar and no
// tether-init is captured all the same.
func testAnnotationRemoved(t *testing.T, r *rig) {
	r.pod(t, "sneaky", true, nil)
	pod := netns.New(t, "pod")
	if _, err := r.cni.AddNetworkList(context.Background(), r.list(t, "loopback", r.kubeconfig), runtimeConf(pod, "sneaky")); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	want := wantConfig(pod, nil, nil)
	want.CaptureDNS = true
	if err := capture.Verify(context.Background(), want, runner(pod)); err != nil {
		t.Fatalf("pod with the sidecar but no annotation: %v", err)
	}
}

// testConfigFromPod: registry-only pods get the UDP rules; a sidecar
// without discovery serves no DNS, so DNS is not captured; an older
// conflist version gets its result in its version.
func testConfigFromPod(t *testing.T, r *rig) {
	r.pod(t, "registryonly", true, map[string]string{inject.AnnotationRedirect: inject.RedirectCNI, inject.AnnotationOutboundMode: "registry-only"})
	noDNS := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "nodns", Namespace: podNS, Annotations: map[string]string{inject.AnnotationRedirect: inject.RedirectCNI}},
		Spec: corev1.PodSpec{ServiceAccountName: "default",
			InitContainers: []corev1.Container{kubetest.MeshSidecar()},
			Containers:     []corev1.Container{{Name: "app", Image: "registry.invalid/app"}}},
	}
	if _, err := r.env.Client.CoreV1().Pods(podNS).Create(context.Background(), noDNS, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		pod        string
		dns, udp   bool
		cniVersion string
	}{
		{"registryonly", true, true, "1.0.0"},
		{"nodns", false, false, "0.4.0"},
	} {
		pod := netns.New(t, c.pod)
		l := r.list(t, "loopback", r.kubeconfig)
		b := strings.Replace(string(l.Bytes), `"cniVersion": "1.0.0"`, fmt.Sprintf(`"cniVersion": %q`, c.cniVersion), 1)
		l, err := libcni.ConfListFromBytes([]byte(b))
		if err != nil {
			t.Fatal(err)
		}
		res, err := r.cni.AddNetworkList(context.Background(), l, runtimeConf(pod, c.pod))
		if err != nil {
			t.Fatalf("ADD of %s: %v", c.pod, err)
		}
		if res.Version() != c.cniVersion {
			t.Errorf("ADD of %s: result version %s, want the conflist's %s", c.pod, res.Version(), c.cniVersion)
		}
		want := wantConfig(pod, nil, nil)
		want.CaptureDNS, want.RejectUDP = c.dns, c.udp
		if err := capture.Verify(context.Background(), want, runner(pod)); err != nil {
			t.Errorf("pod %s: %v", c.pod, err)
		}
	}
}

func testNotMeshed(t *testing.T, r *rig) {
	r.pod(t, "plain", false, nil)
	// An init-mode pod: tether-init installs its rules itself.
	initMode := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "initmode", Namespace: podNS},
		Spec: corev1.PodSpec{ServiceAccountName: "default",
			InitContainers: []corev1.Container{{Name: inject.InitContainerName, Image: "registry.invalid/tether"}, kubetest.MeshSidecar()},
			Containers:     []corev1.Container{{Name: "app", Image: "registry.invalid/app"}}},
	}
	if _, err := r.env.Client.CoreV1().Pods(podNS).Create(context.Background(), initMode, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"plain", "initmode"} {
		pod := netns.New(t, name)
		res, err := r.cni.AddNetworkList(context.Background(), r.list(t, "loopback", r.kubeconfig), runtimeConf(pod, name))
		if err != nil {
			t.Fatalf("ADD of %s: %v", name, err)
		}
		if res == nil {
			t.Fatalf("ADD of %s: no result passed through", name)
		}
		if s := pod.Run(t, "iptables-save", "-t", "nat"); strings.Contains(s, "TETHER") {
			t.Fatalf("pod %s is not meshed, but ADD installed:\n%s", name, s)
		}
	}
}

// testBadInputs: each gives a clear CNI error, and no rule.
func testBadInputs(t *testing.T, r *rig) {
	ctx := context.Background()
	r.pod(t, "badports", true, map[string]string{inject.AnnotationRedirect: inject.RedirectCNI, inject.AnnotationExcludeOutboundPorts: "70000"})
	r.pod(t, "badcidr", true, map[string]string{inject.AnnotationRedirect: inject.RedirectCNI, inject.AnnotationExcludeOutboundCIDRs: "10.0.0.0/33"})
	r.pod(t, "badmode", true, map[string]string{inject.AnnotationRedirect: inject.RedirectCNI, inject.AnnotationOutboundMode: "open"})
	r.pod(t, "badmarker", false, map[string]string{inject.AnnotationRedirect: "yes"})
	forbidden := r.nodeAgentKubeconfig(t, "no-rbac", false)
	notKube := filepath.Join(r.dir, "garbage.kubeconfig")
	if err := os.WriteFile(notKube, []byte("{not yaml: ["), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, pod, kubeconfig string
		args                  [][2]string
		code                  uint
		want                  string
	}{
		{"no CNI_ARGS", "", r.kubeconfig, [][2]string{}, types.ErrInvalidEnvironmentVariables, "CNI_ARGS has no K8S_POD_NAMESPACE and K8S_POD_NAME"},
		{"missing kubeconfig", "web", filepath.Join(r.dir, "absent"), nil, types.ErrInvalidNetworkConfig, "cannot read it"},
		{"garbage kubeconfig", "web", notKube, nil, types.ErrInvalidNetworkConfig, "not a kubeconfig"},
		{"RBAC refuses", "badports", forbidden, nil, types.ErrInvalidNetworkConfig, "(HTTP 403): its RBAC (get pods, ClusterRole tether-cni-node) is missing"},
		{"pod not found", "nosuchpod", r.kubeconfig, nil, types.ErrTryAgainLater, "pod shop/nosuchpod not found"},
		{"pod replaced", "badports", r.kubeconfig, [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", podNS}, {"K8S_POD_NAME", "badports"}, {"K8S_POD_UID", "0000-old"}},
			types.ErrTryAgainLater, "the runtime asked for UID 0000-old (the pod was replaced)"},
		{"bad port annotation", "badports", r.kubeconfig, nil, types.ErrInvalidNetworkConfig, `tether.dev/exclude-outbound-ports="70000"`},
		{"bad CIDR annotation", "badcidr", r.kubeconfig, nil, types.ErrInvalidNetworkConfig, `tether.dev/exclude-outbound-cidrs="10.0.0.0/33"`},
		{"bad outbound mode", "badmode", r.kubeconfig, nil, types.ErrInvalidNetworkConfig, "want passthrough or registry-only"},
		{"bad marker", "badmarker", r.kubeconfig, nil, types.ErrInvalidNetworkConfig, `tether.dev/redirect="yes"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod := netns.New(t, "bad")
			rt := runtimeConf(pod, c.pod)
			if c.args != nil {
				rt.Args = c.args
			}
			_, err := r.cni.AddNetworkList(ctx, r.list(t, "loopback", c.kubeconfig), rt)
			var cerr *types.Error
			if !errors.As(err, &cerr) || cerr.Code != c.code || !strings.Contains(cerr.Error(), c.want) {
				t.Fatalf("ADD: %v, want CNI error code %d containing %q", err, c.code, c.want)
			}
			if s := pod.Run(t, "iptables-save", "-t", "nat"); strings.Contains(s, "TETHER") {
				t.Fatalf("a failed ADD left rules:\n%s", s)
			}
		})
	}

	// No iptables on the node: ADD of a meshed pod fails saying so; DEL
	// does not block the teardown (nothing can have been installed).
	t.Run("no iptables", func(t *testing.T) {
		r.pod(t, "noiptables", true, map[string]string{inject.AnnotationRedirect: inject.RedirectCNI})
		pod := netns.New(t, "noipt")
		t.Setenv("PATH", t.TempDir())
		l, rt := r.list(t, "loopback", r.kubeconfig), runtimeConf(pod, "noiptables")
		_, err := r.cni.AddNetworkList(ctx, l, rt)
		if err == nil || !strings.Contains(err.Error(), "iptables not found") {
			t.Fatalf("ADD without iptables: %v", err)
		}
		if err := r.cni.DelNetworkList(ctx, l, rt); err != nil {
			t.Fatalf("DEL without iptables: %v", err)
		}
	})

	// A malformed prevResult, as a broken plugin before tether-cni would
	// pass it.
	pod := netns.New(t, "prev")
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "t", "type": "tether-cni", "kubeconfig": %q,
	  "prevResult": {"ips": "not-a-list"}}`, r.kubeconfig)
	_, err := r.exec(ctx, "ADD", pod, "web", conf)
	var cerr *types.Error
	if !errors.As(err, &cerr) || cerr.Code != types.ErrDecodingFailure || !strings.Contains(cerr.Msg, "malformed prevResult") {
		t.Fatalf("ADD with a malformed prevResult: %v", err)
	}
	// No prevResult at all: tether-cni must be chained.
	conf = fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "t", "type": "tether-cni", "kubeconfig": %q}`, r.kubeconfig)
	_, err = r.exec(ctx, "ADD", pod, "web", conf)
	if !errors.As(err, &cerr) || !strings.Contains(cerr.Msg, "chained plugin") {
		t.Fatalf("ADD without prevResult: %v", err)
	}
}
