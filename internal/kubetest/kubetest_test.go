package kubetest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/pkg/inject"
)

func review(t *testing.T, client kubernetes.Interface, token string, audiences ...string) authenticationv1.TokenReviewStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	return tr.Status
}

func TestPodBoundTokenReview(t *testing.T) {
	env := kubetest.Start(t)
	t.Logf("ready after %v", env.ReadyAfter)

	const ns, sa, podName = "tether-test", "workload", "workload-0"
	token := env.PodToken(t, ns, sa, podName, "tether-ca", 10*time.Minute)
	if strings.Count(token, ".") != 2 {
		t.Fatalf("token %q is not a JWT", token)
	}

	ctx := context.Background()
	pod, err := env.Client.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod: %v", err)
	}
	if pod.Spec.ServiceAccountName != sa || len(pod.Spec.Containers) != 1 {
		t.Fatalf("pod spec: serviceAccountName=%q, %d containers", pod.Spec.ServiceAccountName, len(pod.Spec.Containers))
	}

	st := review(t, env.Client, token, "tether-ca")
	if !st.Authenticated {
		t.Fatalf("token not authenticated for audience tether-ca: error %q", st.Error)
	}
	if want := "system:serviceaccount:" + ns + ":" + sa; st.User.Username != want {
		t.Errorf("username = %q, want %q", st.User.Username, want)
	}
	if got := st.User.Extra["authentication.kubernetes.io/pod-name"]; len(got) != 1 || got[0] != podName {
		t.Errorf("extra pod-name = %q, want [%q]", got, podName)
	}
	if got := st.User.Extra["authentication.kubernetes.io/pod-uid"]; len(got) != 1 || got[0] != string(pod.UID) {
		t.Errorf("extra pod-uid = %q, want [%q]", got, pod.UID)
	}
	if len(st.Audiences) != 1 || st.Audiences[0] != "tether-ca" {
		t.Errorf("audiences = %q, want [tether-ca]", st.Audiences)
	}

	if st := review(t, env.Client, token, "not-tether-ca"); st.Authenticated {
		t.Errorf("token authenticated for the wrong audience: user %q", st.User.Username)
	}

	// A second token for the same pod reuses the existing objects.
	if again := env.PodToken(t, ns, sa, podName, "tether-ca", time.Hour); again == "" {
		t.Error("second PodToken returned an empty token")
	}
	if inject.Injected(pod) {
		t.Errorf("EnsurePod's pod carries the %s container", inject.SidecarContainerName)
	}

	// A pod of the mesh carries the sidecar, as the injector adds it.
	for range 2 { // the second call finds it
		mp := env.EnsureMeshPod(t, ns, sa, "mesh-0")
		if ic := mp.Spec.InitContainers; !inject.Injected(mp) || len(ic) != 1 || ic[0].RestartPolicy == nil ||
			*ic[0].RestartPolicy != corev1.ContainerRestartPolicyAlways || len(mp.Spec.Containers) != 1 {
			t.Fatalf("EnsureMeshPod: init containers %+v, %d containers; want the native sidecar %s and one container",
				ic, len(mp.Spec.Containers), inject.SidecarContainerName)
		}
	}
}

func TestServiceAccountConfigUsesRBAC(t *testing.T) {
	env := kubetest.Start(t)
	ctx := context.Background()

	saClient := kubernetes.NewForConfigOrDie(env.ServiceAccountConfig(t, "apps", "reader"))
	_, err := saClient.CoreV1().Pods("apps").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("listing pods as an unbound service account: err = %v, want Forbidden", err)
	}
	if !strings.Contains(err.Error(), "system:serviceaccount:apps:reader") {
		t.Errorf("Forbidden error does not name the service account: %v", err)
	}

	admin := kubernetes.NewForConfigOrDie(env.UserConfig(t, "someone", "system:masters"))
	if _, err := admin.CoreV1().Namespaces().Get(ctx, "apps", metav1.GetOptions{}); err != nil {
		t.Fatalf("system:masters user: %v", err)
	}
}
