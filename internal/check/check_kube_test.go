package check_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"

	"github.com/tether-mesh/tether/internal/install"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-mesh/tether/internal/caserver"
	"github.com/tether-mesh/tether/internal/check"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/pkg/inject"
)

const sys = "tether-system"

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// find returns the named check of the report, failing the test if absent.
func find(t *testing.T, r *check.Report, name string) check.Check {
	t.Helper()
	c := r.Find(name)
	if c == nil {
		t.Fatalf("no check %q in the report: %+v", name, r.Checks)
	}
	return *c
}

// want checks a check's result and that its message, details and hint
// contain each of the strings.
func want(t *testing.T, r *check.Report, name string, res check.Result, contains ...string) check.Check {
	t.Helper()
	c := find(t, r, name)
	all := c.Message + "\n" + strings.Join(c.Details, "\n") + "\n" + c.Hint
	if c.Result != res {
		t.Errorf("check %s: %s, want %s: %s", name, c.Result, res, all)
		return c
	}
	if res != check.OK && c.Hint == "" {
		t.Errorf("check %s: %s without a hint", name, res)
	}
	for _, s := range contains {
		if !strings.Contains(all, s) {
			t.Errorf("check %s: %q not in\n%s", name, s, all)
		}
	}
	return c
}

func labelNS(t *testing.T, env *kubetest.Env, name string, labels map[string]string) {
	t.Helper()
	ns := env.EnsureNamespace(t, name)
	ns.Labels = labels
	if _, err := env.Client.CoreV1().Namespaces().Update(context.Background(), ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The API server has no controller manager: the default
	// ServiceAccount, which pods need, is made by hand.
	env.EnsureServiceAccount(t, name, "default")
}

func enabled(extra ...string) map[string]string {
	l := map[string]string{inject.InjectLabel: "enabled"}
	for i := 0; i+1 < len(extra); i += 2 {
		l[extra[i]] = extra[i+1]
	}
	return l
}

// TestPre runs tether check --pre against a real kube-apiserver: the
// version, an unprivileged caller's permissions, Pod Security of labelled
// namespaces (the API server's own admission judges a dry-run pod with
// Tether's containers) and an existing install.
func TestPre(t *testing.T) {
	env := kubetest.Start(t)
	ctx := ctxT(t)
	o := check.Options{Config: env.Config}

	r, err := check.Pre(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	want(t, r, "kubernetes-version", check.OK, "native sidecars")
	want(t, r, "permissions", check.OK, "SelfSubjectAccessReview")
	want(t, r, "pod-security", check.OK, "no namespace is labelled")
	want(t, r, "existing-install", check.OK, "no Tether install found")
	if r.Failed() || r.Mode != "pre" {
		t.Errorf("empty cluster: %+v", r)
	}

	// A user that may do nothing: each missing permission is named.
	r, err = check.Pre(ctx, check.Options{Config: env.UserConfig(t, "nobody")})
	if err != nil {
		t.Fatal(err)
	}
	c := want(t, r, "permissions", check.Fail, "create customresourcedefinitions.apiextensions.k8s.io",
		"create mutatingwebhookconfigurations.admissionregistration.k8s.io", "create deployments.apps in namespace tether-system", "cluster administrator")
	if len(c.Details) != 12 {
		t.Errorf("nobody: %d denied permissions listed, want all 12: %q", len(c.Details), c.Details)
	}
	want(t, r, "pod-security", check.Fail, "could not check", `User "nobody" cannot list resource "namespaces"`)
	if !r.Failed() {
		t.Error("nobody: the report did not fail")
	}

	// A user granted only part of it.
	grant(t, env, "partial", []rbacv1.PolicyRule{{APIGroups: []string{"apiextensions.k8s.io"}, Resources: []string{"customresourcedefinitions"}, Verbs: []string{"create"}}})
	r, _ = check.Pre(ctx, check.Options{Config: env.UserConfig(t, "partial")})
	c = want(t, r, "permissions", check.Fail, "11 of the 12")
	for _, d := range c.Details {
		if strings.Contains(d, "customresourcedefinitions") {
			t.Errorf("partial: granted permission listed as denied: %s", d)
		}
	}

	// Pod Security: restricted and baseline refuse tether-init (root,
	// NET_ADMIN, NET_RAW); privileged and the default admit it.
	labelNS(t, env, "ps-restricted", enabled("pod-security.kubernetes.io/enforce", "restricted"))
	labelNS(t, env, "ps-baseline", map[string]string{inject.InjectLabel: "required", "pod-security.kubernetes.io/enforce": "baseline"})
	labelNS(t, env, "ps-privileged", enabled("pod-security.kubernetes.io/enforce", "privileged"))
	labelNS(t, env, "ps-default", enabled())
	labelNS(t, env, "ps-unlabelled", map[string]string{"pod-security.kubernetes.io/enforce": "restricted"})
	r, _ = check.Pre(ctx, o)
	c = want(t, r, "pod-security", check.Fail, "2 of 4 labelled namespace(s)",
		`ps-restricted: violates PodSecurity "restricted:latest"`, `ps-baseline: violates PodSecurity "baseline:latest"`,
		`container "tether-init" must not include "NET_ADMIN", "NET_RAW"`, "runAsUser=0",
		"kubectl label namespace ps-restricted pod-security.kubernetes.io/enforce=privileged --overwrite",
		"NET_ADMIN and NET_RAW")
	if strings.Contains(strings.Join(c.Details, "\n"), "ps-unlabelled") || strings.Contains(strings.Join(c.Details, "\n"), "ps-privileged:") {
		t.Errorf("pod-security lists a namespace that is fine: %q", c.Details)
	}
	// In CNI redirect mode the injected pod passes every level.
	r, _ = check.Pre(ctx, check.Options{Config: env.Config, RedirectMode: inject.RedirectCNI})
	want(t, r, "pod-security", check.OK, "all 4 labelled namespace(s)")
	for _, ns := range []string{"ps-restricted", "ps-baseline"} {
		if err := env.Client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// (They stay Terminating: no controller manager runs here.)
	r, _ = check.Pre(ctx, o)
	want(t, r, "pod-security", check.OK, "all 2 labelled namespace(s)")

	// tether install --crds ran: fine. The control plane installed: refused.
	env.InstallCRD(t, filepath.Join(repoRoot(t), "manifests/crds/accesspolicies.tether.dev.yaml"))
	r, _ = check.Pre(ctx, o)
	want(t, r, "existing-install", check.OK, "CRDs are (accesspolicies.tether.dev)")
	createWebhook(t, env, nil)
	r, _ = check.Pre(ctx, o)
	want(t, r, "existing-install", check.Fail, "already installed", "MutatingWebhookConfiguration tether-injector", "tether uninstall")
	if !r.Failed() {
		t.Error("installed: the report did not fail")
	}
	var buf bytes.Buffer
	if err := check.WriteText(&buf, r); err != nil {
		t.Fatal(err)
	}
	t.Logf("tether check --pre:\n%s", buf.String())
}

func grant(t *testing.T, env *kubetest.Env, user string, rules []rbacv1.PolicyRule) {
	t.Helper()
	ctx := context.Background()
	if _, err := env.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: user},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: user}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// createWebhook creates the webhook configuration `tether install`
// renders, with caBundle, or changes it with edit.
func createWebhook(t *testing.T, env *kubetest.Env, edit func(*admissionregistrationv1.MutatingWebhookConfiguration)) {
	t.Helper()
	objs, err := install.Render(install.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	for _, o := range objs {
		if o.GetKind() == "MutatingWebhookConfiguration" {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &mwc, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	if mwc.Name == "" {
		t.Fatal("tether install renders no MutatingWebhookConfiguration")
	}
	if edit != nil {
		edit(&mwc)
	}
	api := env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	old, err := api.Get(context.Background(), mwc.Name, metav1.GetOptions{})
	if err == nil {
		mwc.ResourceVersion = old.ResourceVersion
		_, err = api.Update(context.Background(), &mwc, metav1.UpdateOptions{})
	} else {
		_, err = api.Create(context.Background(), &mwc, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// servingCert is a self-signed serving certificate for names, as the
// injector makes.
func servingCert(t *testing.T, notAfter time.Time, names ...string) (certPEM []byte, cert tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter, BasicConstraintsValid: true, IsCA: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	cert, err = tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, cert
}

// deployment creates a control-plane Deployment with the given status (no
// controller manager runs to set it).
func deployment(t *testing.T, c kubernetes.Interface, name string, replicas, ready int32, env ...corev1.EnvVar) {
	t.Helper()
	ctx := context.Background()
	labels := map[string]string{"app.kubernetes.io/name": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: sys, Name: name},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "tether:test", Env: env}}}}},
	}
	_ = c.AppsV1().Deployments(sys).Delete(ctx, name, metav1.DeleteOptions{})
	eventually(t, "deployment "+name+" deleted", func() bool {
		_, err := c.AppsV1().Deployments(sys).Get(ctx, name, metav1.GetOptions{})
		return err != nil
	})
	d, err := c.AppsV1().Deployments(sys).Create(ctx, d, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d.Status = appsv1.DeploymentStatus{Replicas: replicas, ReadyReplicas: ready, AvailableReplicas: ready, UpdatedReplicas: replicas}
	if ready > 0 {
		d.Status.Conditions = []appsv1.DeploymentCondition{{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue}}
	}
	if _, err := c.AppsV1().Deployments(sys).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// hostIP returns an address of this machine that the API server's pod
// proxy accepts as a pod IP (global unicast IPv4, not loopback), or "".
func hostIP() string {
	ifaces, _ := net.Interfaces()
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
				if l, err := net.Listen("tcp", net.JoinHostPort(n.IP.String(), "0")); err == nil {
					l.Close()
					return n.IP.String()
				}
			}
		}
	}
	return ""
}

// runningPod creates a pod and marks it Running at ip, as a kubelet would.
func runningPod(t *testing.T, c kubernetes.Interface, pod *corev1.Pod, ip string, status func(*corev1.PodStatus)) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	if pod.Spec.Containers == nil {
		pod.Spec.Containers = []corev1.Container{{Name: "app", Image: "registry.invalid/app:never-pulled"}}
	}
	p, err := c.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.Phase = corev1.PodRunning
	if ip != "" {
		p.Status.PodIP, p.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
	}
	if status != nil {
		status(&p.Status)
	}
	if p, err = c.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

func meshSidecar(adminPort int) corev1.Container {
	c := kubetest.MeshSidecar()
	if adminPort > 0 {
		c.Ports = []corev1.ContainerPort{{Name: "tether-admin", ContainerPort: int32(adminPort)}}
	}
	return c
}

// metricsServer serves Prometheus text on ip (a fixture: the real
// sidecar's /metrics is read on the real node, test/cluster).
func metricsServer(t *testing.T, ip string, body func() string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, body())
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

func sidecarMetrics(expiry time.Time, reachable int) string {
	exp := int64(0)
	if !expiry.IsZero() {
		exp = expiry.Unix()
	}
	return fmt.Sprintf("# TYPE tether_sidecar_svid_expiry_timestamp_seconds gauge\ntether_sidecar_svid_expiry_timestamp_seconds %d\n"+
		"# TYPE tether_sidecar_ca_reachable gauge\ntether_sidecar_ca_reachable %d\n", exp, reachable)
}

func rootPEM(t *testing.T, notAfter time.Time) string {
	p, _ := servingCert(t, notAfter, "root.test")
	return string(p)
}

// TestInstall runs tether check after an install, against a real
// kube-apiserver, each check failing, then passing: CRDs, deployments,
// discovery's endpoints, roots (the bundle ConfigMap) and intermediates (a
// real tether-ca's /metrics through the pod proxy), the webhook's
// caBundle, a dry-run pod the webhook (a real pkg/inject webhook) must
// inject, Pod Security, sidecar SVIDs, pods without a sidecar, and the
// report's JSON.
func TestInstall(t *testing.T) {
	env := kubetest.Start(t)
	ctx := ctxT(t)
	c := env.Client
	now := time.Now()
	o := check.Options{Config: env.Config}

	// Nothing installed: everything fails, each with a hint.
	r, err := check.Install(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	want(t, r, "crds", check.Fail, "accesspolicies.tether.dev is missing", "tether install --crds")
	want(t, r, "tether-ca", check.Fail, "no Deployment tether-ca in namespace tether-system")
	want(t, r, "root-expiry", check.Fail, "no ConfigMap tether-system/tether-trust-bundle")
	want(t, r, "intermediate-expiry", check.Fail, "could not check", "is Tether installed?")
	want(t, r, "webhook-ca-bundle", check.Fail, "no MutatingWebhookConfiguration tether-injector")
	want(t, r, "discovery-endpoints", check.Fail, "no ready endpoint")
	want(t, r, "webhook-injects", check.Warn, "no namespace is labelled")
	for _, ch := range r.Checks {
		if ch.Result != check.OK && ch.Hint == "" {
			t.Errorf("check %s: %s without a hint", ch.Name, ch.Result)
		}
	}

	// CRDs.
	env.InstallCRD(t, filepath.Join(repoRoot(t), "manifests/crds/accesspolicies.tether.dev.yaml"))
	env.EnsureServiceAccount(t, sys, "default")

	// Deployments: scaled to 0, not ready, then ready.
	deployment(t, c, "tether-ca", 0, 0)
	deployment(t, c, "tether-discovery", 2, 0)
	deployment(t, c, "tether-injector", 2, 2, corev1.EnvVar{Name: "TETHER_IMAGE", Value: "registry.test/tether:0.1.0"})
	r, _ = check.Install(ctx, o)
	want(t, r, "crds", check.OK, "accesspolicies.tether.dev")
	want(t, r, "tether-ca", check.Fail, "none available", "kubectl -n tether-system scale deploy/tether-ca --replicas=2")
	want(t, r, "tether-discovery", check.Fail, "0/2 replicas ready", "kubectl -n tether-system describe deploy/tether-discovery")
	want(t, r, "tether-injector", check.OK, "2/2 replicas ready")
	want(t, r, "cni-node", check.OK, "init redirect mode")
	deployment(t, c, "tether-ca", 2, 2)
	deployment(t, c, "tether-discovery", 2, 2)
	cniNodeChecks(t, env)

	// Discovery's endpoints.
	ready := true
	if _, err := c.DiscoveryV1().EndpointSlices(sys).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "tether-discovery-x", Labels: map[string]string{discoveryv1.LabelServiceName: "tether-discovery"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Roots: one expiring within --expiry-warning fails; a newer one
	// beside it (a rotation in progress) passes.
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: sys, Name: "tether-trust-bundle"},
		Data: map[string]string{"bundle.pem": rootPEM(t, now.Add(10*24*time.Hour))}}
	if cm, err = c.CoreV1().ConfigMaps(sys).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r, _ = check.Install(ctx, o)
	want(t, r, "tether-ca", check.OK)
	want(t, r, "discovery-endpoints", check.OK, "1 ready endpoint")
	want(t, r, "root-expiry", check.Fail, "within --expiry-warning 30d", "tether ca rotate prepare")
	r, _ = check.Install(ctx, check.Options{Config: env.Config, ExpiryWarning: 5 * 24 * time.Hour})
	want(t, r, "root-expiry", check.OK, "none expiring within --expiry-warning 5d")
	cm.Data["bundle.pem"] += rootPEM(t, now.Add(365*24*time.Hour))
	if cm, err = c.CoreV1().ConfigMaps(sys).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r, _ = check.Install(ctx, o)
	want(t, r, "root-expiry", check.OK, "2 root(s)", "being rotated out")
	cm.Data["bundle.pem"] = "not a certificate"
	if cm, err = c.CoreV1().ConfigMaps(sys).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	r, _ = check.Install(ctx, o)
	want(t, r, "root-expiry", check.Fail, "has no root certificate in bundle.pem")

	// Pods in a labelled namespace, created before the webhook answers:
	// one of a Deployment, one bare, one opted out, one with the sidecar.
	ip := hostIP()
	labelNS(t, env, "app", enabled())
	labelNS(t, env, "locked", enabled("pod-security.kubernetes.io/enforce", "restricted"))
	labelNS(t, env, "plain", nil)
	ctrl := true
	runningPod(t, c, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web-5d8f-abcde",
		Labels:          map[string]string{"pod-template-hash": "5d8f"},
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d8f", UID: "u1", Controller: &ctrl}}}}, "", nil)
	runningPod(t, c, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "bare"}}, "", nil)
	runningPod(t, c, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "optout", Labels: map[string]string{inject.InjectLabel: "disabled"}}}, "", nil)
	runningPod(t, c, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "plain", Name: "elsewhere"}}, "", nil)
	// Two sidecars whose /metrics the pod proxy reaches at this machine's
	// address (a fixture serves them: the real sidecar's are read on the
	// real node, test/cluster).
	if ip != "" {
		fresh := metricsServer(t, ip, func() string { return sidecarMetrics(time.Now().Add(time.Hour), 1) })
		expired := metricsServer(t, ip, func() string { return sidecarMetrics(time.Now().Add(-time.Minute), 0) })
		for name, port := range map[string]int{"good": fresh, "stale": expired} {
			runningPod(t, c, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: name},
				Spec: corev1.PodSpec{InitContainers: []corev1.Container{meshSidecar(port)},
					Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:x"}}}}, ip, nil)
		}
	}

	// The webhook's caBundle against the injector's serving certificate.
	svcCertPEM, _ := servingCert(t, now.Add(365*24*time.Hour), "tether-injector.tether-system.svc")
	otherPEM, _ := servingCert(t, now.Add(365*24*time.Hour), "tether-injector.tether-system.svc")
	if _, err := c.CoreV1().Secrets(sys).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: sys, Name: "tether-injector-tls"},
		Data: map[string][]byte{"tls.crt": svcCertPEM}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	setBundle := func(b []byte) {
		createWebhook(t, env, func(m *admissionregistrationv1.MutatingWebhookConfiguration) {
			for i := range m.Webhooks {
				m.Webhooks[i].ClientConfig.CABundle = b
			}
		})
	}
	setBundle(nil)
	r, _ = check.Install(ctx, o)
	want(t, r, "webhook-ca-bundle", check.Fail, "inject.tether.dev: caBundle is empty", "rollout restart deploy/tether-injector")
	setBundle(otherPEM)
	r, _ = check.Install(ctx, o)
	want(t, r, "webhook-ca-bundle", check.Fail, "caBundle does not verify the injector's serving certificate", "x509")
	setBundle(svcCertPEM)
	r, _ = check.Install(ctx, o)
	want(t, r, "webhook-ca-bundle", check.OK, "verifies the injector's serving certificate for tether-injector.tether-system.svc")
	// A caller that may not read Secrets: a warning, not a pass.
	grant(t, env, "reader", []rbacv1.PolicyRule{
		{APIGroups: []string{"", "apps", "discovery.k8s.io", "admissionregistration.k8s.io", "apiextensions.k8s.io"},
			Resources: []string{"pods", "namespaces", "configmaps", "deployments", "endpointslices", "mutatingwebhookconfigurations", "customresourcedefinitions"},
			Verbs:     []string{"get", "list"}},
	})
	r, _ = check.Install(ctx, check.Options{Config: env.UserConfig(t, "reader")})
	want(t, r, "webhook-ca-bundle", check.Warn, `cannot get resource "secrets"`, "get on Secrets")

	// The webhook as installed calls the Service tether-injector, which
	// nothing serves here: pod creation fails, and check says so.
	r, _ = check.Install(ctx, o)
	want(t, r, "webhook-injects", check.Fail, `failed calling webhook "inject.tether.dev"`, "app:", "locked:")
	c2 := want(t, r, "pods-without-sidecar", check.Fail, "2 pod(s) of labelled namespaces run without a sidecar",
		"app/web-5d8f-abcde: kubectl -n app rollout restart deploy/web",
		"app/bare: kubectl -n app delete pod bare, then create it again",
		"app/optout: opted out (label tether.dev/inject=disabled)")
	if strings.Contains(strings.Join(c2.Details, "\n"), "elsewhere") {
		t.Errorf("a pod of an unlabelled namespace is listed: %q", c2.Details)
	}

	// A real injector (pkg/inject's webhook) over TLS, which the API
	// server calls by URL (no kube-proxy here to reach a Service).
	hook, err := inject.NewWebhook(inject.DefaultConfig("registry.test/tether:0.1.0"), 1<<20, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, cert := servingCert(t, now.Add(time.Hour), "127.0.0.1")
	mux := http.NewServeMux()
	mux.Handle("/mutate", hook)
	mux.Handle("/mutate-required", hook.Required())
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	createWebhook(t, env, func(m *admissionregistrationv1.MutatingWebhookConfiguration) {
		for i := range m.Webhooks {
			u := srv.URL + *m.Webhooks[i].ClientConfig.Service.Path
			m.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &u, CABundle: caPEM}
		}
	})
	r, _ = check.Install(ctx, o)
	want(t, r, "webhook-injects", check.OK, "all 2 labelled namespace(s)", "locked (injected; refused by Pod Security")
	want(t, r, "pod-security", check.Fail, "1 of 2", `locked: violates PodSecurity "restricted:latest"`)
	// (The configuration is no longer the Service's: the caBundle check says so.)
	want(t, r, "webhook-ca-bundle", check.Fail, "does not call the Service tether-system/tether-injector")

	// Sidecars: their /metrics through the pod proxy.
	if ip == "" {
		t.Log("this machine has no non-loopback IPv4 address; the API server's pod proxy refuses loopback pod IPs, so the sidecar and CA parts are skipped")
		return
	}
	runningPod(t, c, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: sys, Name: "tether-discovery-0", Labels: map[string]string{"app.kubernetes.io/name": "tether-discovery"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "discovery", Image: "tether:test", Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 15014}}}}}}, ip, nil)
	r, _ = check.Install(ctx, o)
	want(t, r, "sidecar-svids", check.Fail, "1 of 2 sidecar(s)", "app/stale: SVID expired")
	// Discovery's list needs a port-forward, which needs a kubelet: the
	// versions are unknown here, and check says why.
	want(t, r, "sidecar-versions", check.Warn, "could not be read from discovery", "port-forward to pod tether-system/tether-discovery-0 port 15014", "pods/portforward")
	if err := c.CoreV1().Pods("app").Delete(ctx, "stale", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "pod stale deleted", func() bool {
		_, err := c.CoreV1().Pods("app").Get(ctx, "stale", metav1.GetOptions{})
		return err != nil
	})
	r, _ = check.Install(ctx, o)
	want(t, r, "sidecar-svids", check.OK, "1 sidecar(s) hold a valid SVID")

	// Intermediates: a real tether-ca's /metrics through the pod proxy.
	ca, err := caserver.New(context.Background(), caserver.Config{
		TrustDomain: "cluster.local", ListenAddr: "127.0.0.1:0", AdminAddr: net.JoinHostPort(ip, "0"),
		Store: "dir", StoreDir: t.TempDir(), SVIDTTL: time.Hour, IntermediateTTL: 72 * time.Hour, RootTTL: 8760 * time.Hour,
		PropagationDelay: time.Minute, TickInterval: time.Second, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	caCtx, stopCA := context.WithCancel(context.Background())
	caDone := make(chan error, 1)
	go func() { caDone <- ca.Run(caCtx) }()
	t.Cleanup(func() { stopCA(); <-caDone })
	eventually(t, "tether-ca's admin port", func() bool { return ca.Addr("admin") != nil })
	_, caPort, _ := net.SplitHostPort(ca.Addr("admin").String())
	n, _ := strconv.Atoi(caPort)
	runningPod(t, c, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: sys, Name: "tether-ca-0", Labels: map[string]string{"app.kubernetes.io/name": "tether-ca"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "ca", Image: "tether:test", Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: int32(n)}}}}}}, ip, nil)
	eventually(t, "the CA's metrics", func() bool {
		r, _ = check.Install(ctx, o)
		return !strings.Contains(find(t, r, "intermediate-expiry").Message, "could not check")
	})
	want(t, r, "intermediate-expiry", check.Fail, "within --intermediate-expiry-warning 7d", "generation 1 (active)", "renew-intermediate")
	r, _ = check.Install(ctx, check.Options{Config: env.Config, IntermediateExpiryWarning: 24 * time.Hour})
	want(t, r, "intermediate-expiry", check.OK, "renewal not overdue")

	// The report as JSON.
	var buf bytes.Buffer
	if err := check.WriteJSON(&buf, r); err != nil {
		t.Fatal(err)
	}
	var back check.Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Mode != "install" || len(back.Checks) != len(r.Checks) || back.Failures != r.Failures || back.Failures == 0 {
		t.Errorf("JSON round trip: %+v", back)
	}
	buf.Reset()
	check.WriteText(&buf, r)
	t.Logf("tether check:\n%s", buf.String())
}

// cniNodeChecks: with the injector in CNI redirect mode, check reads the
// node agent's DaemonSet: missing, not ready on a node (named), ready.
// The injector is left in init mode.
func cniNodeChecks(t *testing.T, env *kubetest.Env) {
	t.Helper()
	ctx, c := ctxT(t), env.Client
	setArgs := func(args ...string) {
		d, err := c.AppsV1().Deployments(sys).Get(ctx, "tether-injector", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d.Spec.Template.Spec.Containers[0].Args = args
		if _, err := c.AppsV1().Deployments(sys).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	o := check.Options{Config: env.Config}
	setArgs("--log-format=json", "--redirect-mode=cni")
	r, _ := check.Install(ctx, o)
	want(t, r, "cni-node", check.Fail, "CNI redirect mode but there is no DaemonSet tether-cni-node", "tether install --redirect-mode cni")

	labels := map[string]string{"app.kubernetes.io/name": "tether-cni-node"}
	ds, err := c.AppsV1().DaemonSets("kube-system").Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "tether-cni-node", Labels: labels},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "node", Image: "tether:test"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setStatus := func(desired, ready int32) {
		ds.Status = appsv1.DaemonSetStatus{DesiredNumberScheduled: desired, CurrentNumberScheduled: desired, NumberReady: ready}
		if ds, err = c.AppsV1().DaemonSets("kube-system").UpdateStatus(ctx, ds, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setStatus(0, 0)
	env.EnsureServiceAccount(t, "kube-system", "default")
	r, _ = check.Install(ctx, o)
	want(t, r, "cni-node", check.Fail, "0 of 0 node(s) ready: it runs on no node", "describe daemonset/tether-cni-node")
	if _, err := c.CoreV1().Pods("kube-system").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "tether-cni-node-b", Labels: labels},
		Spec:       corev1.PodSpec{NodeName: "node-b", Containers: []corev1.Container{{Name: "node", Image: "tether:test"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	setStatus(2, 1)
	r, _ = check.Install(ctx, o)
	want(t, r, "cni-node", check.Fail, "1 of 2 node(s) ready", "node node-b: pod tether-cni-node-b not ready", "tether-validate")
	setStatus(2, 2)
	r, _ = check.Install(ctx, o)
	want(t, r, "cni-node", check.OK, "DaemonSet kube-system/tether-cni-node: 2 of 2 node(s) ready")
	setArgs()
}

// TestProxy runs tether check --proxy against a real kube-apiserver.
func TestProxy(t *testing.T) {
	env := kubetest.Start(t)
	ctx := ctxT(t)
	c := env.Client
	o := check.Options{Config: env.Config}

	r, err := check.Proxy(ctx, o, "missing")
	if err != nil {
		t.Fatal(err)
	}
	want(t, r, "namespace-labelled", check.Fail, "no namespace missing")

	labelNS(t, env, "plainns", nil)
	r, _ = check.Proxy(ctx, o, "plainns")
	want(t, r, "namespace-labelled", check.Fail, "not labelled", "kubectl label namespace plainns tether.dev/inject=enabled --overwrite")

	labelNS(t, env, "mesh", enabled())
	runningPod(t, c, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: "starting"},
		Spec: corev1.PodSpec{InitContainers: []corev1.Container{meshSidecar(0)}}}, "", func(s *corev1.PodStatus) {
		s.InitContainerStatuses = []corev1.ContainerStatus{{Name: inject.SidecarContainerName, RestartCount: 3,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}}}
	})
	runningPod(t, c, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "mesh", Name: "escaped"}}, "", nil)
	r, _ = check.Proxy(ctx, o, "mesh")
	want(t, r, "namespace-labelled", check.OK)
	want(t, r, "pods-without-sidecar", check.Fail, "1 pod(s) of namespace mesh", "mesh/escaped: kubectl -n mesh delete pod escaped")
	want(t, r, "sidecar-ready", check.Fail, "1 of 1", "mesh/starting: waiting: CrashLoopBackOff (3 restarts)")
	if r.Namespace != "mesh" || r.Mode != "proxy" || !r.Failed() {
		t.Errorf("report: %+v", r)
	}
	var buf bytes.Buffer
	check.WriteText(&buf, r)
	t.Logf("tether check --proxy -n mesh:\n%s", buf.String())
}
