package injector

import (
	"context"
	"errors"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/tether-mesh/tether/pkg/inject"
)

// TestCNIModeOnAPIServer: with --redirect-mode cni, a pod injected through
// the real webhook is admitted by the API server's Pod Security admission
// in a namespace enforcing "restricted", without a single warning; it
// carries tether-validate and the marker for the CNI plugin, and no
// tether-init. (The same pod in init mode is refused there: the test
// "restricted pod security enforced" of TestWebhookOnAPIServer.)
func TestCNIModeOnAPIServer(t *testing.T) {
	k := startKubeInjector(t, func(c *inject.Config) { c.RedirectMode = inject.RedirectCNI })
	env := k.env
	ctx := context.Background()
	namespace(t, env, "enforced", map[string]string{
		inject.InjectLabel:                   "enabled",
		"pod-security.kubernetes.io/enforce": "restricted",
		"pod-security.kubernetes.io/warn":    "restricted",
	})
	var warnings []string
	cfg := rest.CopyConfig(env.Config)
	cfg.WarningHandler = warningRecorder(func(msg string) { warnings = append(warnings, msg) })
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	pod, err := client.CoreV1().Pods("enforced").Create(ctx, restrictedAppPod("web-1"), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("CNI-mode pod in a namespace enforcing restricted: %v", err)
	}
	if len(warnings) > 0 {
		t.Errorf("Pod Security warnings: %q", warnings)
	}
	ic := pod.Spec.InitContainers
	if len(ic) < 2 || ic[0].Name != inject.ValidateContainerName || ic[1].Name != inject.SidecarContainerName {
		t.Fatalf("init containers %v, want tether-validate and tether-sidecar first", containerNames(ic))
	}
	for _, c := range ic {
		if c.Name == inject.InitContainerName {
			t.Fatal("CNI mode injected tether-init")
		}
	}
	if got := pod.Annotations[inject.AnnotationRedirect]; got != inject.RedirectCNI {
		t.Errorf("annotation %s = %q, want %q", inject.AnnotationRedirect, got, inject.RedirectCNI)
	}

	t.Run("stored pod created again", func(t *testing.T) {
		// What the API server stored, with its defaults, is what the
		// injector made: verified and left as it is.
		b := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "copy", Labels: pod.Labels, Annotations: pod.Annotations}, Spec: *pod.Spec.DeepCopy()}
		got := create(t, env, "enforced", b)
		if injectedPart(pod) != injectedPart(got) {
			t.Errorf("the copy differs:\n%s\n%s", injectedPart(pod), injectedPart(got))
		}
	})
	t.Run("copy without the marker refused", func(t *testing.T) {
		// Without tether.dev/redirect the CNI plugin would leave the pod
		// alone; the injector refuses it at admission.
		ann := map[string]string{}
		for k, v := range pod.Annotations {
			if k != inject.AnnotationRedirect {
				ann[k] = v
			}
		}
		b := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "unmarked", Labels: pod.Labels, Annotations: ann}, Spec: *pod.Spec.DeepCopy()}
		_, err := env.Client.CoreV1().Pods("enforced").Create(ctx, b, metav1.CreateOptions{})
		if err == nil || !strings.Contains(err.Error(), "no annotation "+inject.AnnotationRedirect) {
			t.Fatalf("copy without the marker: err %v, want a refusal naming %s", err, inject.AnnotationRedirect)
		}
	})
	t.Run("node agent manifests and credentials", func(t *testing.T) {
		// The CNI overlay (the chart with injector.redirectMode=cni) is
		// accepted by the API server, and the node agent's ServiceAccount
		// may read a pod, which the plugin needs, and nothing else.
		// The webhook stays as the test pointed it, at the loopback injector.
		var objs []*unstructured.Unstructured
		for _, o := range render(t, "overlays/cni") {
			if o.GetKind() != "MutatingWebhookConfiguration" {
				objs = append(objs, o)
			}
		}
		newApplier(t, env).apply(t, objs, false)
		if t.Failed() {
			t.FailNow()
		}
		if _, err := env.Client.AppsV1().DaemonSets("kube-system").Get(ctx, "tether-cni-node", metav1.GetOptions{}); err != nil {
			t.Fatalf("DaemonSet tether-cni-node: %v", err)
		}
		node, err := kubernetes.NewForConfig(env.ServiceAccountConfig(t, "kube-system", "tether-cni-node"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := node.CoreV1().Pods("enforced").Get(ctx, pod.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("the node agent cannot get a pod: %v", err)
		}
		// The agent renews the plugin's token: its own, and no other.
		tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr(int64(600))}}
		if _, err := node.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "tether-cni-node", tr, metav1.CreateOptions{}); err != nil {
			t.Errorf("the node agent cannot create its own token: %v", err)
		}
		// On exit it reads its own DaemonSet (deleted or being deleted:
		// uninstall; there: a restart, the entry stays), and no other.
		ds, err := node.AppsV1().DaemonSets("kube-system").Get(ctx, "tether-cni-node", metav1.GetOptions{})
		if err != nil {
			t.Errorf("the node agent cannot get its own DaemonSet: %v", err)
		}
		env.EnsureServiceAccount(t, "kube-system", "other")
		for what, call := range map[string]func() error{
			"create another ServiceAccount's token": func() error {
				_, err := node.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "other", tr, metav1.CreateOptions{})
				return err
			},
			"list pods": func() error {
				_, err := node.CoreV1().Pods("enforced").List(ctx, metav1.ListOptions{})
				return err
			},
			"delete a pod": func() error {
				return node.CoreV1().Pods("enforced").Delete(ctx, pod.Name, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
			},
			"get a Secret": func() error {
				_, err := node.CoreV1().Secrets("tether-system").Get(ctx, "tether-injector-tls", metav1.GetOptions{})
				return err
			},
			"get another DaemonSet": func() error {
				_, err := node.AppsV1().DaemonSets("kube-system").Get(ctx, "kube-proxy", metav1.GetOptions{})
				return err
			},
			"list DaemonSets": func() error {
				_, err := node.AppsV1().DaemonSets("kube-system").List(ctx, metav1.ListOptions{})
				return err
			},
			"update its own DaemonSet": func() error {
				if ds == nil {
					return errors.New("no DaemonSet read")
				}
				_, err := node.AppsV1().DaemonSets("kube-system").Update(ctx, ds, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
				return err
			},
			"delete its own DaemonSet": func() error {
				return node.AppsV1().DaemonSets("kube-system").Delete(ctx, "tether-cni-node", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
			},
			"get a node": func() error {
				_, err := node.CoreV1().Nodes().Get(ctx, "any", metav1.GetOptions{})
				return err
			},
		} {
			if err := call(); !apierrors.IsForbidden(err) {
				t.Errorf("node agent may %s: %v, want forbidden", what, err)
			}
		}
	})
	t.Run("privileged app still refused", func(t *testing.T) {
		// CNI mode relaxes nothing for the app: the namespace's policy
		// still refuses an app container that asks for NET_ADMIN.
		p := restrictedAppPod("netadmin")
		p.Spec.Containers[0].SecurityContext.Capabilities.Add = []corev1.Capability{"NET_ADMIN"}
		_, err := env.Client.CoreV1().Pods("enforced").Create(ctx, p, metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "NET_ADMIN") {
			t.Fatalf("app with NET_ADMIN: err %v, want a Pod Security refusal", err)
		}
	})
}
