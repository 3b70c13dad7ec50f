// Package meshkube reaches the parts of a mesh installed on Kubernetes
// through the API server alone: it finds the control plane's pods by label
// and reads their admin ports, and the sidecars', through the API server's
// pod proxy (pods/proxy), so nothing but the API server needs to be
// reachable from where a command runs; what a process answers only on its
// pod's loopback is read through a port-forward (ForwardGet). tether status,
// tether check and the observed-traffic policy commands use it.
package meshkube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Pod labels and ports of the control plane (manifests/base,
// docs/architecture.md "Kubernetes contract").
const (
	AppLabelKey       = "app.kubernetes.io/name"
	CAApp             = "tether-ca"
	DiscoveryApp      = "tether-discovery"
	InjectorApp       = "tether-injector"
	AdminPortName     = "admin"
	DefaultAdminPort  = 15014
	DefaultNamespace  = "tether-system"
	MaxMetricsBody    = 8 << 20
	sidecarMetricName = "tether_sidecar_svid_expiry_timestamp_seconds"
)

// NoPodsError is ControlPods' error when the API server answered but no
// pod of the component is running: other components may still have pods.
type NoPodsError struct{ msg string }

func (e *NoPodsError) Error() string { return e.msg }

// ControlPods lists the running pods of one control plane component (its
// app.kubernetes.io/name label) in namespace, sorted by name. An error says
// why there is none to ask; need names the permissions the caller's
// command needs, for RBAC errors.
func ControlPods(ctx context.Context, client kubernetes.Interface, namespace, app string, timeout time.Duration, need string) ([]corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sel := AppLabelKey + "=" + app
	list, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, APIError(fmt.Sprintf("list pods %s in namespace %s", sel, namespace), err, need)
	}
	if len(list.Items) == 0 {
		return nil, &NoPodsError{fmt.Sprintf("no pods labelled %s in namespace %s (is Tether installed? see docs/install.md; --namespace names the control plane's namespace)", sel, namespace)}
	}
	var running []corev1.Pod
	var idle []string
	for _, p := range list.Items {
		if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			running = append(running, p)
		} else {
			idle = append(idle, fmt.Sprintf("%s is %s", p.Name, cmp.Or(string(p.Status.Phase), "Pending")))
		}
	}
	if len(running) == 0 {
		return nil, &NoPodsError{fmt.Sprintf("no running pod labelled %s in namespace %s: %s", sel, namespace, strings.Join(idle, ", "))}
	}
	slices.SortFunc(running, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	return running, nil
}

// AdminPort is the pod's container port named "admin", else 15014.
func AdminPort(p *corev1.Pod) string {
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == AdminPortName {
				return strconv.Itoa(int(port.ContainerPort))
			}
		}
	}
	return strconv.Itoa(DefaultAdminPort)
}

// ProxyGet fetches path on the pod's port through the API server's pod
// proxy and hands decode at most limit+1 bytes of the answer (decode sees
// that it is too long). need is as for ControlPods.
func ProxyGet(ctx context.Context, client kubernetes.Interface, p *corev1.Pod, port, path string, limit int64, need string, decode func(io.Reader) error) error {
	rc, err := client.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, port, path, nil).Stream(ctx)
	if err != nil {
		return APIError(fmt.Sprintf("GET %s on pod %s/%s port %s through the API server's pod proxy", path, p.Namespace, p.Name, port), err, need)
	}
	defer rc.Close()
	return decode(io.LimitReader(rc, limit+1))
}

// APIError words an API error with what was tried and what may help; need
// names the permissions the command needs ("tether status needs list on
// pods and get on pods/proxy").
func APIError(what string, err error, need string) error {
	var st apierrors.APIStatus
	switch {
	case apierrors.IsForbidden(err):
		msg := fmt.Sprintf("%s: RBAC forbids it: %s", what, APIMessage(err))
		if need != "" {
			msg += " (" + need + ")"
		}
		return errors.New(msg)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%s: the API server rejected the credentials: %w", what, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: no answer within --timeout", what)
	case errors.As(err, &st):
		return fmt.Errorf("%s: %s", what, APIMessage(err))
	default:
		return fmt.Errorf("%s: cannot reach the API server: %w", what, err)
	}
}

// APIMessage returns an API error's message, which names the user, the verb
// and the resource.
func APIMessage(err error) string {
	var status apierrors.APIStatus
	if errors.As(err, &status) && status.Status().Message != "" {
		return status.Status().Message
	}
	return err.Error()
}
