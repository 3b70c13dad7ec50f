package injector

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
