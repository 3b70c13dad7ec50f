package check

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	"github.com/tether-mesh/tether/pkg/inject"
)

// Pod Security Admission's namespace label for the enforced level.
const (
	enforceLabel = "pod-security.kubernetes.io/enforce"
	privileged   = "privileged"
	// dryRunImage is never pulled: the pods are server-side dry runs.
	dryRunImage = "tether-check.invalid/dry-run:never-pulled"
)

// labelledNamespaces lists the namespaces labelled tether.dev/inject=enabled
// or required, sorted by name.
func (r *runner) labelledNamespaces(ctx context.Context) ([]corev1.Namespace, error) {
	req, err := labels.NewRequirement(inject.InjectLabel, selection.In, []string{"enabled", inject.RequiredValue})
	if err != nil {
		return nil, err
	}
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	list, err := r.client.CoreV1().Namespaces().List(cctx, metav1.ListOptions{LabelSelector: labels.NewSelector().Add(*req).String()})
	if err != nil {
		return nil, apiError("list namespaces labelled "+inject.InjectLabel+"=enabled or required", err)
	}
	var out []corev1.Namespace
	for _, ns := range list.Items {
		// Pods cannot be created in a namespace being deleted.
		if ns.Name != r.o.Namespace && ns.Name != "kube-system" && ns.Status.Phase != corev1.NamespaceTerminating {
			out = append(out, ns)
		}
	}
	slices.SortFunc(out, func(a, b corev1.Namespace) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// appPod is a pod whose own container meets the restricted Pod Security
// level, so that whatever Pod Security refuses in it comes from Tether's
// containers.
func appPod(ns string) *corev1.Pod {
	no, yes := false, true
	uid := int64(65532)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: "tether-check-",
			Labels: map[string]string{"app.kubernetes.io/name": "tether-check"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: dryRunImage,
			SecurityContext: &corev1.SecurityContext{
				RunAsNonRoot: &yes, RunAsUser: &uid, AllowPrivilegeEscalation: &no,
				Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
		}}},
	}
}

// injectedPod is appPod as tether-injector would inject it (pkg/inject with
// its default configuration, in redirect mode `mode`): tether-init (root,
// NET_ADMIN and NET_RAW), or in CNI mode tether-validate, and the native
// sidecar.
func injectedPod(ns, mode string) (*corev1.Pod, error) {
	pod := appPod(ns)
	cfg := inject.DefaultConfig(dryRunImage)
	cfg.RedirectMode = mode
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	res, err := cfg.Mutate(pod, ns)
	if err != nil {
		return nil, fmt.Errorf("inject the dry-run pod: %w", err)
	}
	patchJSON, err := res.Patch.JSON()
	if err != nil {
		return nil, err
	}
	patch, err := jsonpatch.DecodePatch(patchJSON)
	if err != nil {
		return nil, fmt.Errorf("decode the injection patch: %w", err)
	}
	podJSON, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	out, err := patch.Apply(podJSON)
	if err != nil {
		return nil, fmt.Errorf("apply the injection patch: %w", err)
	}
	injected := &corev1.Pod{}
	if err := json.Unmarshal(out, injected); err != nil {
		return nil, err
	}
	return injected, nil
}

// dryRun is the outcome of a server-side dry-run pod create in one
// namespace.
type dryRun struct {
	ns       corev1.Namespace
	injected bool   // the pod the API server returned has the sidecar
	err      error  // the create failed
	kind     string // "", "pod-security", "webhook", "forbidden" or "other"
}

// tryPod creates pod in its namespace as a server-side dry run: admission
// (webhooks, Pod Security) runs, nothing is stored.
func (r *runner) tryPod(ctx context.Context, ns corev1.Namespace, pod *corev1.Pod) dryRun {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	d := dryRun{ns: ns}
	got, err := r.client.CoreV1().Pods(ns.Name).Create(cctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err == nil {
		d.injected = inject.Injected(got)
		return d
	}
	d.err = err
	msg := err.Error()
	switch {
	case strings.Contains(msg, "violates PodSecurity"):
		d.kind = "pod-security"
	case strings.Contains(msg, "failed calling webhook"):
		d.kind = "webhook"
	case apierrors.IsForbidden(err) && strings.Contains(msg, "cannot create resource"):
		d.kind = "forbidden"
		d.err = apiError("create a pod (server-side dry run) in namespace "+ns.Name, err)
	default:
		d.kind = "other"
	}
	return d
}

// podSecurityCheck judges the Pod Security of the labelled namespaces
// from dry-run pods that carry Tether's containers: tether-init runs as
// root with NET_ADMIN and NET_RAW, which only the privileged level allows;
// in CNI redirect mode (cni) they pass restricted. Where the dry run could
// not tell (RBAC, a webhook), the namespace's enforce label decides.
func podSecurityCheck(runs []dryRun, listErr error, cni bool) Check {
	c := Check{Name: "pod-security", Category: catCluster}
	if listErr != nil {
		c.Result, c.Message = Fail, "could not check: "+listErr.Error()
		c.Hint = "give the caller list on namespaces, or run tether check as a cluster administrator"
		return c
	}
	if len(runs) == 0 && cni {
		c.Result, c.Message = OK, "no namespace is labelled "+inject.InjectLabel+"=enabled or required yet; in CNI redirect mode Tether's containers pass every Pod Security level, restricted included"
		return c
	}
	if len(runs) == 0 {
		c.Result, c.Message = OK, "no namespace is labelled "+inject.InjectLabel+"=enabled or required yet; the namespaces you label must allow the privileged Pod Security level (tether-init needs root with NET_ADMIN and NET_RAW)"
		return c
	}
	var bad, unsure, good []string
	for _, d := range runs {
		level := d.ns.Labels[enforceLabel]
		fix := fmt.Sprintf("kubectl label namespace %s %s=%s --overwrite", d.ns.Name, enforceLabel, privileged)
		switch {
		case d.err == nil:
			good = append(good, d.ns.Name)
		case d.kind == "pod-security":
			bad = append(bad, fmt.Sprintf("%s: %s; fix: %s", d.ns.Name, violation(d.err), fix))
		case level == privileged || (cni && level != ""):
			good = append(good, d.ns.Name+" (by its label; the dry run could not tell: "+firstLine(d.err.Error())+")")
		case level == "":
			unsure = append(unsure, fmt.Sprintf("%s: no %s label, the cluster's default level applies, and the dry run could not tell: %s", d.ns.Name, enforceLabel, firstLine(d.err.Error())))
		default:
			bad = append(bad, fmt.Sprintf("%s: enforces %s (label %s); fix: %s", d.ns.Name, level, enforceLabel, fix))
		}
	}
	switch {
	case len(bad) > 0 && cni:
		c.Result, c.Details = Fail, append(bad, unsure...)
		c.Message = fmt.Sprintf("Pod Security refuses the injected pod in %d of %d labelled namespace(s)", len(bad), len(runs))
		c.Hint = "in CNI redirect mode Tether's containers pass restricted: the refusal quoted names what does not (another webhook's container?); fix it, or label those namespaces as shown"
	case len(bad) > 0:
		c.Result, c.Details = Fail, append(bad, unsure...)
		c.Message = fmt.Sprintf("Pod Security refuses Tether's init container in %d of %d labelled namespace(s)", len(bad), len(runs))
		c.Hint = "tether-init installs the traffic capture rules as root with NET_ADMIN and NET_RAW, which only the privileged level allows: label those namespaces as shown, remove their " + inject.InjectLabel + " label, or install in CNI redirect mode (tether install --redirect-mode cni; docs/install.md, CNI mode), whose injected pods pass restricted"
	case len(unsure) > 0 && cni:
		c.Result, c.Details = Warn, unsure
		c.Message = fmt.Sprintf("the Pod Security level of %d labelled namespace(s) is unknown", len(unsure))
		c.Hint = "in CNI redirect mode Tether's containers pass every level; give the caller create on pods (dry run) in those namespaces to be sure"
	case len(unsure) > 0:
		c.Result, c.Details = Warn, unsure
		c.Message = fmt.Sprintf("the Pod Security level of %d labelled namespace(s) is unknown", len(unsure))
		c.Hint = "make sure the cluster's default Pod Security level is privileged, or label those namespaces " + enforceLabel + "=" + privileged
	default:
		c.Result, c.Details = OK, good
		c.Message = fmt.Sprintf("a pod with Tether's containers is admitted in all %d labelled namespace(s) (server-side dry run)", len(runs))
	}
	return c
}

// podSecurity dry-runs a pod as the injector would inject it in each
// labelled namespace (before install: no webhook injects it yet).
func (r *runner) podSecurity(ctx context.Context) Check {
	cni := r.o.RedirectMode == inject.RedirectCNI
	nss, err := r.labelledNamespaces(ctx)
	if err != nil {
		return podSecurityCheck(nil, err, cni)
	}
	var runs []dryRun
	for _, ns := range nss[:min(len(nss), maxListed)] {
		pod, err := injectedPod(ns.Name, r.o.RedirectMode)
		if err != nil {
			return podSecurityCheck(nil, err, cni)
		}
		runs = append(runs, r.tryPod(ctx, ns, pod))
	}
	return podSecurityCheck(runs, nil, cni)
}

// violation is Pod Security's refusal without the generated pod name.
func violation(err error) string {
	msg := firstLine(err.Error())
	if i := strings.Index(msg, "violates PodSecurity"); i >= 0 {
		return msg[i:]
	}
	return msg
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
