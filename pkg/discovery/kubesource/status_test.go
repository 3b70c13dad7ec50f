package kubesource

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"

	tetherv1alpha1 "github.com/tether-mesh/tether/api/tether/v1alpha1"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// statusRig is two discovery replicas (two KubeSources, each with its own
// registry) against one real kube-apiserver with the RemoteService CRD.
type statusRig struct {
	t       *testing.T
	ctx     context.Context
	env     *kubetest.Env
	remotes dynamic.NamespaceableResourceInterface
	regs    []*discovery.Registry
}

const testStatusRewrite = time.Second

func startStatusRig(t *testing.T) *statusRig {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	t.Cleanup(cancel)
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	crds := filepath.Join("..", "..", "..", "manifests", "crds")
	env.InstallCRD(t, filepath.Join(crds, "accesspolicies.tether.dev.yaml"))
	env.InstallCRD(t, filepath.Join(crds, "remoteservices.tether.dev.yaml"))
	env.EnsureNamespace(t, "shop")
	r := &statusRig{t: t, ctx: ctx, env: env, remotes: dc.Resource(tetherv1alpha1.RemoteServiceGVR)}
	logw := &testLogWriter{t: t}
	t.Cleanup(logw.stop)
	for i := range 2 {
		reg, err := discovery.NewRegistry(td, policy.AllowMesh)
		if err != nil {
			t.Fatal(err)
		}
		src := &KubeSource{Client: env.Client, Dynamic: dc, Debounce: 20 * time.Millisecond, StatusRewrite: testStatusRewrite,
			Logger: slog.New(slog.NewTextHandler(logw, nil)).With(slog.Int("replica", i))}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- src.Run(runCtx, reg) }()
		t.Cleanup(func() { stop(); <-done })
		r.regs = append(r.regs, reg)
	}
	return r
}

func (r *statusRig) create(obj *unstructured.Unstructured) {
	r.t.Helper()
	for {
		_, err := r.remotes.Namespace(obj.GetNamespace()).Create(r.ctx, obj, metav1.CreateOptions{})
		if err == nil {
			return
		}
		if !apierrors.IsNotFound(err) || r.ctx.Err() != nil {
			r.t.Fatalf("create %s: %v", obj.GetName(), err)
		}
		time.Sleep(50 * time.Millisecond) // the CRD is established, its endpoint not served yet
	}
}

// status reads the object's status from the API server.
func (r *statusRig) status(name string) (*unstructured.Unstructured, tetherv1alpha1.RemoteServiceStatus) {
	r.t.Helper()
	u, err := r.remotes.Namespace("shop").Get(r.ctx, name, metav1.GetOptions{})
	if err != nil {
		r.t.Fatalf("get %s: %v", name, err)
	}
	var st tetherv1alpha1.RemoteServiceStatus
	if m, ok := u.Object["status"].(map[string]any); ok {
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(m, &st); err != nil {
			r.t.Fatalf("%s: status does not decode: %v", name, err)
		}
	}
	return u, st
}

// waitAccepted waits until name's Accepted condition has the status and
// reason, for its current generation, and returns it.
func (r *statusRig) waitAccepted(name string, status metav1.ConditionStatus, reason string) (metav1.Condition, tetherv1alpha1.RemoteServiceStatus) {
	r.t.Helper()
	for {
		u, st := r.status(name)
		c := meta.FindStatusCondition(st.Conditions, tetherv1alpha1.RemoteServiceAccepted)
		if c != nil && c.Status == status && c.Reason == reason && c.ObservedGeneration == u.GetGeneration() && st.ObservedGeneration == u.GetGeneration() {
			return *c, st
		}
		if r.ctx.Err() != nil {
			r.t.Fatalf("timed out waiting for %s Accepted=%s %s; status %+v", name, status, reason, st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// resourceVersions returns each object's resourceVersion.
func (r *statusRig) resourceVersions() map[string]string {
	r.t.Helper()
	list, err := r.remotes.Namespace("shop").List(r.ctx, metav1.ListOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]string{}
	for _, u := range list.Items {
		out[u.GetName()] = u.GetResourceVersion()
	}
	return out
}

// TestRemoteServiceStatus runs two discovery replicas against a real
// kube-apiserver: every RemoteService gets an Accepted condition with the
// reason and a message naming what it collides with, and the addresses it
// is served at; fixing the conflict flips it to True; kubectl shows the
// columns; once the replicas agree they write nothing more.
func TestRemoteServiceStatus(t *testing.T) {
	r := startStatusRig(t)
	if _, err := r.env.Client.CoreV1().Services("shop").Create(r.ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 443}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	withAddr := func(a string) func(map[string]any) { return func(s map[string]any) { s["addresses"] = []any{a} } }
	r.create(remoteObj("shop", "pay", remoteSpec(withAddr("10.200.0.7"))))
	r.create(remoteObj("shop", "pay2", remoteSpec(func(s map[string]any) {
		s["addresses"] = []any{"10.200.0.7"}
		s["endpoints"] = []any{endpoint("192.0.2.20", 15006, "spiffe://b.example/ns/pay/sa/api")}
	})))
	r.create(remoteObj("shop", "tail-endpoint", remoteSpec(withAddr("10.200.0.9"))))
	r.create(remoteObj("shop", "auto", remoteSpec(func(s map[string]any) {
		s["endpoints"] = []any{endpoint("192.0.2.30", 15006, "spiffe://b.example/ns/pay/sa/api")}
	})))
	r.create(remoteObj("shop", "web", remoteSpec(func(s map[string]any) {
		s["endpoints"] = []any{endpoint("192.0.2.40", 15006, "spiffe://b.example/ns/pay/sa/api")}
	})))
	r.create(remoteObj("shop", "own", remoteSpec(func(s map[string]any) {
		s["trustDomain"] = "cluster.local"
		s["endpoints"] = []any{endpoint("192.0.2.50", 15006, "spiffe://cluster.local/ns/shop/sa/api")}
	})))

	_, pay := r.waitAccepted("pay", metav1.ConditionTrue, tetherv1alpha1.RemoteServiceReasonAccepted)
	if !slices.Equal(pay.Addresses, []string{"10.200.0.7"}) {
		t.Errorf("pay: addresses %v, want the declared 10.200.0.7", pay.Addresses)
	}
	_, auto := r.waitAccepted("auto", metav1.ConditionTrue, tetherv1alpha1.RemoteServiceReasonAccepted)
	for _, reg := range r.regs {
		svc, ok := reg.Snapshot().Service(discovery.ServiceKey{Namespace: "shop", Name: "auto"})
		if !ok || len(svc.ClusterIPs) != 1 || !slices.Equal(auto.Addresses, []string{svc.ClusterIPs[0].String()}) {
			t.Errorf("auto: status addresses %v, served at %v", auto.Addresses, svc)
		}
	}
	for _, tc := range []struct{ name, reason, says string }{
		{"pay2", tetherv1alpha1.RemoteServiceReasonAddressConflict, "address 10.200.0.7 is already an address of shop/pay"},
		{"tail-endpoint", tetherv1alpha1.RemoteServiceReasonEndpointConflict, "endpoint 192.0.2.10:15006 is already an endpoint of shop/pay"},
		{"web", tetherv1alpha1.RemoteServiceReasonNameConflict, "a Kubernetes Service shop/web has the name"},
		{"own", tetherv1alpha1.RemoteServiceReasonInvalid, "trustDomain cluster.local is this mesh's own"},
	} {
		c, st := r.waitAccepted(tc.name, metav1.ConditionFalse, tc.reason)
		t.Logf("%s: Accepted=%s %s: %s", tc.name, c.Status, c.Reason, c.Message)
		if !strings.Contains(c.Message, tc.says) {
			t.Errorf("%s: message %q, want it to say %q", tc.name, c.Message, tc.says)
		}
		if len(st.Addresses) != 0 {
			t.Errorf("%s: refused, but its status has addresses %v", tc.name, st.Addresses)
		}
	}
	kubectlGet(t, r.env)

	// Once both replicas agree, nothing is written any more.
	before := r.resourceVersions()
	time.Sleep(3 * testStatusRewrite)
	if after := r.resourceVersions(); !maps.Equal(before, after) {
		t.Errorf("statuses rewritten after the replicas agreed: resourceVersions %v, then %v", before, after)
	}

	// Fixing the conflicts flips them to True.
	pay2, _ := r.status("pay2")
	if err := unstructured.SetNestedStringSlice(pay2.Object, []string{"10.200.0.8"}, "spec", "addresses"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.remotes.Namespace("shop").Update(r.ctx, pay2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := r.env.Client.CoreV1().Services("shop").Delete(r.ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c, st := r.waitAccepted("pay2", metav1.ConditionTrue, tetherv1alpha1.RemoteServiceReasonAccepted)
	if !slices.Equal(st.Addresses, []string{"10.200.0.8"}) || st.ObservedGeneration != 2 {
		t.Errorf("pay2 after the fix: %+v", st)
	}
	t.Logf("pay2 fixed: Accepted=%s %s: %s", c.Status, c.Reason, c.Message)
	r.waitAccepted("web", metav1.ConditionTrue, tetherv1alpha1.RemoteServiceReasonAccepted)
}

// kubectlGet runs the kubectl of the kube binaries (when there) and checks
// that `kubectl get rsvc` shows the status columns.
func kubectlGet(t *testing.T, env *kubetest.Env) {
	t.Helper()
	kubectl := filepath.Join(os.Getenv("TETHER_KUBE_BIN_DIR"), "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		t.Logf("no kubectl in TETHER_KUBE_BIN_DIR (%v): the columns are not checked", err)
		return
	}
	out, err := exec.Command(kubectl, "--kubeconfig", env.Kubeconfig(t), "-n", "shop", "get", "rsvc").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl get rsvc: %v\n%s", err, out)
	}
	t.Logf("kubectl get rsvc:\n%s", out)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if h := strings.Fields(lines[0]); !slices.Equal(h, []string{"NAME", "TRUST", "DOMAIN", "ACCEPTED", "REASON", "ADDRESSES", "AGE"}) {
		t.Errorf("kubectl get rsvc header %q", lines[0])
	}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		switch f[0] {
		case "pay":
			if f[2] != "True" || f[3] != "Accepted" || f[4] != `["10.200.0.7"]` {
				t.Errorf("kubectl row for pay: %q", l)
			}
		case "pay2":
			if f[2] != "False" || f[3] != "AddressConflict" {
				t.Errorf("kubectl row for pay2: %q", l)
			}
		}
	}
}

// TestRemoteServiceStatusCannotBeFaked: the status is discovery's output,
// never its input. A user allowed to write RemoteServices (not their
// status) cannot set a status at all; one who may write the status (or an
// admin) can write a false acceptance, but discovery never serves the
// object for it, and puts its own verdict back.
func TestRemoteServiceStatusCannotBeFaked(t *testing.T) {
	r := startStatusRig(t)
	r.create(remoteObj("shop", "api", remoteSpec(func(s map[string]any) { s["addresses"] = []any{"10.200.0.7"} })))
	r.create(remoteObj("shop", "fake", remoteSpec(func(s map[string]any) {
		s["addresses"] = []any{"10.200.0.7"}
		s["endpoints"] = []any{endpoint("192.0.2.66", 15006, "spiffe://b.example/ns/evil/sa/x")}
	})))
	r.waitAccepted("fake", metav1.ConditionFalse, tetherv1alpha1.RemoteServiceReasonAddressConflict)

	forged := func(u *unstructured.Unstructured) *unstructured.Unstructured {
		u = u.DeepCopy()
		u.Object["status"] = map[string]any{
			"observedGeneration": u.GetGeneration(), "addresses": []any{"10.200.0.7"},
			"conditions": []any{map[string]any{
				"type": "Accepted", "status": "True", "reason": "Accepted", "message": "trust me",
				"observedGeneration": u.GetGeneration(), "lastTransitionTime": "2026-01-01T00:00:00Z",
			}},
		}
		return u
	}

	// A user with every verb on remoteservices but none on their status.
	if _, err := r.env.Client.RbacV1().Roles("shop").Create(r.ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "rsvc-editor"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"tether.dev"}, Resources: []string{"remoteservices"},
			Verbs: []string{"get", "list", "watch", "create", "update", "patch"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.env.Client.RbacV1().RoleBindings("shop").Create(r.ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "mallory"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "rsvc-editor"},
		Subjects:   []rbacv1.Subject{{Kind: "User", Name: "mallory"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mdc, err := dynamic.NewForConfig(r.env.UserConfig(t, "mallory"))
	if err != nil {
		t.Fatal(err)
	}
	mallory := mdc.Resource(tetherv1alpha1.RemoteServiceGVR).Namespace("shop")
	cur, _ := r.status("fake")
	_, err = mallory.UpdateStatus(r.ctx, forged(cur), metav1.UpdateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("mallory's write of the status subresource: %v, want forbidden", err)
	}
	// Through the main resource the status is not hers to set: the API
	// server keeps the old one (create: none).
	if _, err := mallory.Update(r.ctx, forged(cur), metav1.UpdateOptions{}); err != nil {
		t.Fatalf("mallory's update: %v", err)
	}
	made, err := mallory.Create(r.ctx, forged(remoteObj("shop", "fake2", remoteSpec(func(s map[string]any) {
		s["addresses"] = []any{"10.200.0.7"}
		s["endpoints"] = []any{endpoint("192.0.2.67", 15006, "spiffe://b.example/ns/evil/sa/x")}
	}))), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("mallory's create: %v", err)
	}
	if _, ok := made.Object["status"]; ok {
		t.Errorf("a status given with create was stored: %v", made.Object["status"])
	}
	if c, _ := r.waitAccepted("fake", metav1.ConditionFalse, tetherv1alpha1.RemoteServiceReasonAddressConflict); c.Message == "trust me" {
		t.Error("mallory's status reached the object")
	}

	r.waitAccepted("fake2", metav1.ConditionFalse, tetherv1alpha1.RemoteServiceReasonAddressConflict)
	time.Sleep(2 * testStatusRewrite) // nothing is pending: only the forgery can wake discovery

	// An admin (or anyone granted remoteservices/status) writes a false
	// acceptance: discovery does not serve the object, and puts its
	// verdict back within StatusRewrite.
	cur, _ = r.status("fake")
	if _, err := r.remotes.Namespace("shop").UpdateStatus(r.ctx, forged(cur), metav1.UpdateOptions{}); err != nil {
		t.Fatalf("admin's status write: %v", err)
	}
	forgedAt := time.Now()
	c, _ := r.waitAccepted("fake", metav1.ConditionFalse, tetherv1alpha1.RemoteServiceReasonAddressConflict)
	t.Logf("forged acceptance replaced after %v: %s", time.Since(forgedAt).Round(10*time.Millisecond), c.Message)
	if took := time.Since(forgedAt); took > testStatusRewrite+3*time.Second {
		t.Errorf("the forged status stood %v", took)
	}
	for i, reg := range r.regs {
		snap := reg.Snapshot()
		for _, name := range []string{"fake", "fake2"} {
			if svc, ok := snap.Service(discovery.ServiceKey{Namespace: "shop", Name: name}); ok {
				t.Errorf("replica %d serves %s after a forged status: %+v", i, name, svc)
			}
		}
		if svc, ok := snap.Service(discovery.ServiceKey{Namespace: "shop", Name: "api"}); !ok || svc.Endpoints[0].Addr.String() != "192.0.2.10" {
			t.Errorf("replica %d: 10.200.0.7 no longer leads to api's endpoint: %+v", i, svc)
		}
	}
}

// TestVerdictCutsLongMessageOnACharacter: a refusal longer than a
// condition's message may be is cut, on a character boundary. Cut inside
// a character, the message is not valid UTF-8: the API server stores
// U+FFFD instead, the stored message never equals the verdict, and every
// replica rewrites it each StatusRewrite for as long as the object lives.
func TestVerdictCutsLongMessageOnACharacter(t *testing.T) {
	for _, lead := range []string{"", "x"} {
		reg, err := discovery.NewRegistry(td, policy.AllowMesh)
		if err != nil {
			t.Fatal(err)
		}
		key := discovery.ServiceKey{Namespace: "shop", Name: "long"}
		reason := lead + strings.Repeat("é", maxConditionMessage)
		if err := reg.Update(discovery.State{Refused: []discovery.Refusal{{Key: key, Cause: tetherv1alpha1.RemoteServiceReasonInvalid, Reason: reason}}}); err != nil {
			t.Fatal(err)
		}
		v, ok := verdicts(reg.Snapshot(), map[discovery.ServiceKey]int64{key: 1})[key]
		switch {
		case !ok:
			t.Fatalf("no verdict for %s", key)
		case len(v.message) > maxConditionMessage || !strings.HasSuffix(v.message, "...") || len(v.message) < maxConditionMessage-8:
			t.Errorf("lead %q: message of %d bytes, want one cut to at most %d", lead, len(v.message), maxConditionMessage)
		case !utf8.ValidString(v.message):
			t.Errorf("lead %q: message cut inside a character: ...%q", lead, v.message[len(v.message)-8:])
		}
	}
}
