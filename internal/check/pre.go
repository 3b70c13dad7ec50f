package check

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/tether-mesh/tether/pkg/inject"
)

// Categories of the checks.
const (
	catCluster  = "Kubernetes"
	catInstall  = "Install"
	catIdentity = "Certificates"
	catInject   = "Injection"
	catData     = "Data plane"
)

// Names of the objects Tether installs (charts/tether).
const (
	webhookName   = "tether-injector"
	bundleMap     = inject.BundleConfig
	crdGroup      = "tether.dev"
	policyCRD     = "accesspolicies.tether.dev"
	minorNeeded   = 29
	minorAlphaGte = 28
)

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// Pre checks that the cluster can run Tether, before tether install: the
// API server's version (native sidecars), the caller's permissions for
// what install creates, the Pod Security level of the namespaces already
// labelled for injection, and an existing install.
func Pre(ctx context.Context, o Options) (*Report, error) {
	r, err := newRunner(o, "pre")
	if err != nil {
		return nil, err
	}
	r.rep.add(r.serverVersion(ctx))
	r.rep.add(r.permissions(ctx))
	r.rep.add(r.podSecurity(ctx))
	r.rep.add(r.existingInstall(ctx))
	return r.rep, nil
}

// serverVersion: native sidecars (init containers with restartPolicy
// Always) are on by default from Kubernetes 1.29.
func (r *runner) serverVersion(ctx context.Context) Check {
	c := Check{Name: "kubernetes-version", Category: catCluster}
	v, err := r.client.Discovery().ServerVersion()
	if err != nil {
		c.Result, c.Message = Fail, apiError("read the API server's version", err).Error()
		c.Hint = "check that the kubeconfig points at the cluster and its credentials are valid (kubectl version)"
		return c
	}
	major, _ := strconv.Atoi(v.Major)
	minor, _ := strconv.Atoi(strings.TrimRight(v.Minor, "+"))
	switch {
	case major == 0 && minor == 0:
		c.Result, c.Message = Warn, fmt.Sprintf("the API server reports version %q, which does not say its minor release", v.GitVersion)
		c.Hint = "Tether needs Kubernetes 1.29 or newer (native sidecars); check the version with your provider"
	case major > 1 || minor >= minorNeeded:
		c.Result, c.Message = OK, fmt.Sprintf("Kubernetes %s: native sidecars (restartPolicy: Always init containers) are on by default", v.GitVersion)
	case minor == minorAlphaGte:
		c.Result, c.Message = Fail, fmt.Sprintf("Kubernetes %s: native sidecars are alpha in 1.28 and off by default", v.GitVersion)
		c.Hint = "upgrade to 1.29 or newer, or turn on the SidecarContainers feature gate on the kube-apiserver, the kubelets and the scheduler (--feature-gates=SidecarContainers=true)"
	default:
		c.Result, c.Message = Fail, fmt.Sprintf("Kubernetes %s has no native sidecars, which tether-injector adds to every pod", v.GitVersion)
		c.Hint = "upgrade the cluster to Kubernetes 1.29 or newer"
	}
	return c
}

// access is one permission tether install's objects need.
type access struct {
	verb, group, resource, namespace string
}

func (a access) String() string {
	res := a.resource
	if a.group != "" {
		res += "." + a.group
	}
	if a.namespace != "" {
		return fmt.Sprintf("%s %s in namespace %s", a.verb, res, a.namespace)
	}
	return a.verb + " " + res
}

// installAccess is what applying tether install's objects creates (kubectl apply
// --server-side also gets and patches them).
func installAccess(ns string) []access {
	out := []access{
		{"create", "", "namespaces", ""},
		{"create", "apiextensions.k8s.io", "customresourcedefinitions", ""},
		{"create", "rbac.authorization.k8s.io", "clusterroles", ""},
		{"create", "rbac.authorization.k8s.io", "clusterrolebindings", ""},
		{"create", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", ""},
	}
	for _, a := range [][2]string{
		{"", "serviceaccounts"}, {"", "services"}, {"", "configmaps"}, {"apps", "deployments"},
		{"rbac.authorization.k8s.io", "roles"}, {"rbac.authorization.k8s.io", "rolebindings"},
		{"policy", "poddisruptionbudgets"},
	} {
		out = append(out, access{"create", a[0], a[1], ns})
	}
	return out
}

// permissions asks the API server (SelfSubjectAccessReview) whether the
// caller may create what install creates.
func (r *runner) permissions(ctx context.Context) Check {
	c := Check{Name: "permissions", Category: catCluster}
	var denied []string
	for _, a := range installAccess(r.o.Namespace) {
		ok, reason, err := r.can(ctx, a)
		if err != nil {
			c.Result, c.Message = Fail, err.Error()
			c.Hint = "the caller must be able to create SelfSubjectAccessReviews (every authenticated user can, unless the cluster removed system:basic-user)"
			return c
		}
		if !ok {
			d := a.String()
			if reason != "" {
				d += " (" + reason + ")"
			}
			denied = append(denied, d)
		}
	}
	if len(denied) > 0 {
		c.Result, c.Message, c.Details = Fail, fmt.Sprintf("the caller may not do %d of the %d things tether install needs", len(denied), len(installAccess(r.o.Namespace))), denied
		c.Hint = "install as a cluster administrator (kubectl auth can-i --list shows what you may do); installing also grants the control plane's RBAC, which needs those permissions or the escalate and bind verbs"
		return c
	}
	c.Result, c.Message = OK, fmt.Sprintf("the caller may create everything tether install creates (%d permissions asked with SelfSubjectAccessReview)", len(installAccess(r.o.Namespace)))
	return c
}

func (r *runner) can(ctx context.Context, a access) (bool, string, error) {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	rev, err := r.client.AuthorizationV1().SelfSubjectAccessReviews().Create(cctx, &authorizationv1.SelfSubjectAccessReview{
		Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: a.verb, Group: a.group, Resource: a.resource, Namespace: a.namespace,
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		return false, "", apiError("ask whether the caller may "+a.String(), err)
	}
	return rev.Status.Allowed, rev.Status.Reason, nil
}

// existingInstall refuses a second install: tether install --crds may
// have run (CRDs alone are expected), but not the control plane.
func (r *runner) existingInstall(ctx context.Context) Check {
	c := Check{Name: "existing-install", Category: catInstall}
	var found []string
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	if _, err := r.client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(cctx, webhookName, metav1.GetOptions{}); err == nil {
		found = append(found, "MutatingWebhookConfiguration "+webhookName)
	} else if !apierrors.IsNotFound(err) {
		return r.cannot(c, apiError("get MutatingWebhookConfiguration "+webhookName, err))
	}
	deps, err := r.client.AppsV1().Deployments(r.o.Namespace).List(cctx, metav1.ListOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return r.cannot(c, apiError("list deployments in namespace "+r.o.Namespace, err))
	}
	if err == nil {
		for _, d := range deps.Items {
			if strings.HasPrefix(d.Name, "tether-") {
				found = append(found, "Deployment "+r.o.Namespace+"/"+d.Name)
			}
		}
	}
	crds, err := r.tetherCRDs(ctx)
	if err != nil {
		return r.cannot(c, err)
	}
	if len(found) > 0 {
		c.Result, c.Message, c.Details = Fail, "Tether is already installed", found
		c.Hint = "check it with tether check; to install again, uninstall first (tether uninstall | kubectl delete -f -)"
		return c
	}
	if len(crds) > 0 {
		c.Result, c.Message = OK, fmt.Sprintf("no control plane installed; Tether's CRDs are (%s), as tether install --crds leaves them", strings.Join(names(crds), ", "))
		return c
	}
	c.Result, c.Message = OK, "no Tether install found (no webhook configuration "+webhookName+", no tether-* deployment in "+r.o.Namespace+", no tether.dev CRD)"
	return c
}

// cannot is a check that could not be made: it fails (a check that
// cannot tell does not pass).
func (r *runner) cannot(c Check, err error) Check {
	c.Result, c.Message = Fail, "could not check: "+err.Error()
	c.Hint = "give the caller read access to what docs/check.md lists for this check, or run tether check as a cluster administrator"
	return c
}
