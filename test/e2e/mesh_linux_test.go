//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/netns"
	"github.com/tether-mesh/tether/pkg/inject"
)

// mesh is Tether installed from manifests/base on a fresh API server, with
// a node to run pods on: tether-ca and tether-discovery run as the real
// binaries from their Deployments' pod specs, the injector answers the
// real MutatingWebhookConfiguration, and cluster DNS and kube-proxy have
// stand-ins. Everything stops, and every namespace and directory goes,
// when the test ends.
type mesh struct {
	t       *testing.T
	env     *kubetest.Env
	cl      *cluster
	node    *netns.NS
	kubelet *http.Client // the node's HTTP client, for probes and admin ports
	began   time.Time
	// mode is the injector's redirect mode (inject.RedirectInit or
	// inject.RedirectCNI).
	mode string

	caAdminAddr, discAdminAddr netip.AddrPort
	discNS                     *netns.NS // tether-discovery's pod network
}

// startMesh builds the binaries, starts the API server, applies
// manifests/base, labels namespace for injection (with the given
// ServiceAccounts), registers the injector, and runs tether-ca and
// tether-discovery until both are ready.
func startMesh(t *testing.T, namespace string, serviceAccounts ...string) *mesh {
	t.Helper()
	return startMeshMode(t, inject.RedirectInit, namespace, serviceAccounts...)
}

// startMeshMode is startMesh with the injector in redirect mode mode; in
// CNI mode the namespace also enforces Pod Security restricted.
func startMeshMode(t *testing.T, mode, namespace string, serviceAccounts ...string) *mesh {
	t.Helper()
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
		buildErr = goBuild(bin, "tether-ca", "tether-discovery", "tether-sidecar", "tether")
	}()
	t.Cleanup(func() { <-built })

	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	applyManifests(t, env, "../../manifests/base")

	// What kube-controller-manager would do: every namespace gets the
	// kube-root-ca.crt ConfigMap (the API server's CA, mounted into every
	// pod) and its default ServiceAccount.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace, Labels: map[string]string{inject.InjectLabel: "enabled"}}}
	if mode == inject.RedirectCNI {
		ns.Labels["pod-security.kubernetes.io/enforce"] = "restricted"
	}
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"tether-system", namespace} {
		env.EnsureServiceAccount(t, n, "default")
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt"}, Data: map[string]string{"ca.crt": string(env.Config.CAData)}}
		if _, err := env.Client.CoreV1().ConfigMaps(n).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, sa := range serviceAccounts {
		env.EnsureServiceAccount(t, namespace, sa)
	}

	injectorLog := startInjector(t, env, mode)

	// The node's network namespace. Pods are linked to it (podNetwork),
	// and it routes between them.
	node := netns.New(t, "node")
	node.AddAddr(t, "lo", netip.PrefixFrom(nodeIP, 32))
	node.Run(t, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
	svc := func(ns, name string) *corev1.Service {
		s, err := env.Client.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	kubeSvc, caSvc, discSvc := svc("default", "kubernetes"), svc("tether-system", "tether-ca"), svc("tether-system", "tether-discovery")
	for _, s := range []*corev1.Service{kubeSvc, caSvc} {
		node.AddAddr(t, "lo", netip.PrefixFrom(netip.MustParseAddr(s.Spec.ClusterIP), 32))
	}
	// kube-proxy, for the kubernetes Service: its IP and port relay to the
	// API server, which listens on the host's loopback (its serving
	// certificate carries the Service IP, as in a real cluster).
	apiURL, err := urlHost(env.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	relay(t, node, net.JoinHostPort(kubeSvc.Spec.ClusterIP, strconv.Itoa(int(kubeSvc.Spec.Ports[0].Port))), apiURL)
	// Cluster DNS, on the node (as NodeLocal DNSCache would be).
	serveClusterDNS(t, node, netip.AddrPortFrom(nodeIP, 53), env)
	cl := &cluster{env: env, bin: bin, nameserver: nodeIP, node: node}
	m := &mesh{t: t, env: env, cl: cl, node: node, kubelet: nodeClient(node), began: began, mode: mode}

	<-built
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	t.Logf("binaries built and control plane applied after %v", time.Since(began).Round(time.Millisecond))

	// tether-ca, as its Deployment's ReplicaSet would create its pod. The
	// pod lives in the node namespace, where the Service IP is, so the
	// Service's port must be the container's (kube-proxy would map them).
	caPod := createFromDeployment(t, env, "tether-system", "tether-ca", "tether-ca-0")
	checkSelects(t, caSvc, caPod)
	ca := newPodRuntime(t, cl, caPod, node, nodeIP)
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
	ca.waitProbe(m.kubelet, caCtr, caCtr.ReadinessProbe, caProc, 30*time.Second)
	m.caAdminAddr = netip.AddrPortFrom(nodeIP, uint16(ca.port(caCtr, caCtr.ReadinessProbe.HTTPGet.Port)))

	// tether-discovery, in a pod network namespace of its own (its admin
	// port is tether-ca's). Its volumes hold its projected token (for its
	// SVID from tether-ca) and the trust bundle tether-ca publishes in
	// tether-system, which the runtime waits for; it reads the registry
	// in-cluster with its ServiceAccount's RBAC.
	discPod := createFromDeployment(t, env, "tether-system", "tether-discovery", "tether-discovery-0")
	checkSelects(t, discSvc, discPod)
	discNet, discIP := cl.podNetwork(t, "discovery")
	disc := newPodRuntime(t, cl, discPod, discNet, discIP)
	discCtr := discPod.Spec.Containers[0]
	discProc := disc.start(discCtr)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("tether-discovery:\n%s", discProc.Output())
		}
	})
	disc.waitProbe(m.kubelet, discCtr, discCtr.ReadinessProbe, discProc, 30*time.Second)
	m.discAdminAddr = netip.AddrPortFrom(discIP, uint16(disc.port(discCtr, discCtr.ReadinessProbe.HTTPGet.Port)))
	m.discNS = discNet
	// kube-proxy: the Service's ClusterIP and ports lead to the ready pod.
	for _, p := range discSvc.Spec.Ports {
		kubeProxy(t, node, discSvc.Spec.ClusterIP, int(p.Port), netip.AddrPortFrom(discIP, uint16(disc.port(discCtr, p.TargetPort))))
	}
	t.Logf("tether-ca and tether-discovery ready after %v", time.Since(began).Round(time.Millisecond))
	return m
}

// urlHost returns the host:port of a URL.
func urlHost(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	return u.Host, nil
}

// checkSelects fails the test unless the Service selects the pod (or an
// endpoint controller would never route to it).
func checkSelects(t *testing.T, svc *corev1.Service, pod *corev1.Pod) {
	t.Helper()
	if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels)) {
		t.Fatalf("Service %s/%s (selector %v) does not select pod %s (labels %v)", svc.Namespace, svc.Name, svc.Spec.Selector, pod.Name, pod.Labels)
	}
}

func (m *mesh) caAdmin(path string) string        { return "http://" + m.caAdminAddr.String() + path }
func (m *mesh) discoveryAdmin(path string) string { return "http://" + m.discAdminAddr.String() + path }

// discoveryLocal GETs path on discovery's admin port from inside its pod,
// on loopback (as kubectl exec would), where /debug/sidecars answers.
func (m *mesh) discoveryLocal(path string) (int, string) {
	m.t.Helper()
	return m.discNS.HTTP(m.t, netip.Addr{}, "GET", "http://"+netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), m.discAdminAddr.Port()).String()+path)
}

// meshPod is an injected pod running on the node.
type meshPod struct {
	m   *mesh
	pod *corev1.Pod // as stored
	rt  *podRuntime
	ns  *netns.NS
	ip  netip.Addr
	// init and sidecar are tether-init and tether-sidecar; app is the
	// first app container.
	init, sidecar, app corev1.Container
	proc               *netns.Proc // the sidecar's process
	bundle             *corev1.ConfigMap
}

// runPod creates pod through the API (its namespace must be labelled for
// injection) and runs what was stored, as a kubelet would: the volumes,
// tether-init to completion, then the native sidecar until its startup
// probe passes, then the app (a stand-in serving its first declared port).
func (m *mesh) runPod(ctx context.Context, pod *corev1.Pod) *meshPod {
	t := m.t
	t.Helper()
	pods := m.env.Client.CoreV1().Pods(pod.Namespace)
	created, err := pods.Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stored, err := pods.Get(ctx, created.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := &meshPod{m: m, pod: stored}
	p.init, p.sidecar = checkInjected(t, stored, m.mode)
	p.app = stored.Spec.Containers[0]

	// The trust bundle ConfigMap the sidecar mounts is tether-ca's to
	// publish; like a kubelet, wait for it before starting the pod.
	poll(t, "tether-ca to publish the trust bundle in "+pod.Namespace, 20*time.Second, func() (err error) {
		p.bundle, err = m.env.Client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, inject.BundleConfig, metav1.GetOptions{})
		return err
	})
	p.ns, p.ip = m.cl.podNetwork(t, stored.Name)
	p.rt = newPodRuntime(t, m.cl, stored, p.ns, p.ip)

	// Init containers in order: tether-init runs to completion (in CNI
	// mode, tether-validate, after the node installed the rules)...
	if m.mode == inject.RedirectCNI {
		p.cniSetUp(ctx)
	} else {
		out := p.rt.run(ctx, p.init)
		t.Logf("%s: tether-init: %s", stored.Name, strings.TrimSpace(out))
	}
	rules := p.ns.Run(t, "iptables-save", "-t", "nat")
	for _, want := range []string{"-j TETHER_INBOUND", "-j TETHER_OUTPUT", "-j TETHER_DNS", "--uid-owner " + strconv.Itoa(inject.ProxyUID)} {
		if !strings.Contains(rules, want) {
			t.Fatalf("no %q in the nat rules of %s after tether-init:\n%s", want, stored.Name, rules)
		}
	}
	// ...then the native sidecar starts, and the next containers wait for
	// its startup probe: an SVID, and discovery's first view.
	sideStart := time.Now()
	p.proc = p.rt.start(p.sidecar)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s: tether-sidecar:\n%s", stored.Name, p.proc.Output())
		}
	})
	p.rt.waitProbe(m.kubelet, p.sidecar, p.sidecar.StartupProbe, p.proc, 30*time.Second)
	if body, err := p.rt.probe(m.kubelet, p.sidecar, p.sidecar.ReadinessProbe); err != nil || !strings.HasPrefix(body, "ready") {
		t.Fatalf("%s: sidecar readiness probe after its startup probe passed: %q, %v", stored.Name, body, err)
	}
	t.Logf("%s: sidecar ready %v after it started, %v after the test began", stored.Name,
		time.Since(sideStart).Round(time.Millisecond), time.Since(m.began).Round(time.Millisecond))

	// The app container (its image does not exist here: a stand-in serves
	// its declared port, on the address its environment names).
	serveApp(t, p.ns, p.rt.getenv(p.app, bindEnv), int(p.app.Ports[0].ContainerPort), stored.Name)
	return p
}

// bindEnv, in an app container's env, is the address the stand-in app
// listens on (all addresses if unset), as a real app is told its bind
// address. listenOnPodIP and listenOnLoopback set it to the pod IP (from
// the downward API, as apps that bind $POD_IP get it) and to 127.0.0.1.
const bindEnv = "BIND_ADDRESS"

var (
	listenOnPodIP    = corev1.EnvVar{Name: bindEnv, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}
	listenOnLoopback = corev1.EnvVar{Name: bindEnv, Value: "127.0.0.1"}
)

// listensOn reports whether something accepts TCP connections on addr
// inside the pod.
func (p *meshPod) listensOn(addr netip.AddrPort) bool {
	err := p.ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr.String(), 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	return err == nil
}

// admin is the URL of path on the sidecar's admin port.
func (p *meshPod) admin(path string) string {
	port := p.rt.port(p.sidecar, p.sidecar.ReadinessProbe.HTTPGet.Port)
	return fmt.Sprintf("http://%s%s", netip.AddrPortFrom(p.ip, uint16(port)), path)
}

// local makes a request to the sidecar's admin port from inside the pod,
// on loopback, where /debug/... and /quitquitquit answer.
func (p *meshPod) local(method, path string) (int, string) {
	p.m.t.Helper()
	port := p.rt.port(p.sidecar, p.sidecar.ReadinessProbe.HTTPGet.Port)
	return p.ns.HTTP(p.m.t, netip.Addr{}, method, fmt.Sprintf("http://%s%s", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)), path))
}

// sidecarView is the sidecar's GET /debug/discovery.
type sidecarView struct {
	Discovery string `json:"discovery"`
	SpiffeID  string `json:"spiffe_id"`
	Services  []struct {
		Service   string   `json:"service"`
		Addresses []string `json:"addresses"`
		Ports     []struct {
			Port       uint16 `json:"port"`
			TargetPort uint16 `json:"target_port"`
			Allowed    bool   `json:"allowed"`
			Rule       string `json:"rule"`
		} `json:"ports"`
		Endpoints []string `json:"endpoints"`
	} `json:"services"`
}

// port returns the decision the view holds for port of service ("ns/name"),
// and whether the service is in the view with that port.
func (v sidecarView) port(service string, port uint16) (allowed bool, rule string, ok bool) {
	for _, s := range v.Services {
		if s.Service != service {
			continue
		}
		for _, p := range s.Ports {
			if p.Port == port {
				return p.Allowed, p.Rule, true
			}
		}
	}
	return false, "", false
}

// endpoints returns the endpoints the view holds for service.
func (v sidecarView) endpoints(service string) []string {
	for _, s := range v.Services {
		if s.Service == service {
			return s.Endpoints
		}
	}
	return nil
}

func (p *meshPod) view() sidecarView {
	p.m.t.Helper()
	code, body := p.local("GET", "/debug/discovery")
	if code != http.StatusOK {
		p.m.t.Fatalf("%s: GET /debug/discovery on loopback: %d %s", p.pod.Name, code, body)
	}
	var v sidecarView
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		p.m.t.Fatalf("%s: /debug/discovery: %v\n%s", p.pod.Name, err, body)
	}
	return v
}

// waitView polls the sidecar's view until cond holds.
func (p *meshPod) waitView(what string, cond func(sidecarView) bool) {
	p.m.t.Helper()
	poll(p.m.t, p.pod.Name+"'s view: "+what, 10*time.Second, func() error {
		if v := p.view(); !cond(v) {
			return fmt.Errorf("not yet: %+v", v)
		}
		return nil
	})
}
