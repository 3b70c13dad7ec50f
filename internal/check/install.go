package check

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/tether-mesh/tether/internal/humanize"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/tether-mesh/tether/internal/meshkube"
)

// Install checks an installed Tether: its CRDs, the control plane's
// deployments (and, in CNI redirect mode, the node agent's DaemonSet),
// the roots' and intermediates' expiry, the webhook (its caBundle and a
// dry-run pod it injects), discovery's endpoints, every sidecar's SVID,
// pods that escaped injection, and sidecars older than the control plane.
func Install(ctx context.Context, o Options) (*Report, error) {
	r, err := newRunner(o, "install")
	if err != nil {
		return nil, err
	}
	r.rep.add(r.crds(ctx))
	for _, app := range []string{meshkube.CAApp, meshkube.DiscoveryApp, meshkube.InjectorApp} {
		r.rep.add(r.deployment(ctx, app))
	}
	r.rep.add(r.cniNode(ctx))
	r.rep.add(r.discoveryEndpoints(ctx))
	r.rep.add(r.roots(ctx))
	r.rep.add(r.intermediates(ctx))
	r.rep.add(r.webhookCABundle(ctx))
	inj, ps := r.injection(ctx)
	r.rep.add(inj)
	r.rep.add(ps)
	pods, err := r.meshPods(ctx, "")
	if err != nil {
		for _, name := range []string{"sidecar-svids", "pods-without-sidecar", "sidecar-versions"} {
			r.rep.add(r.cannot(Check{Name: name, Category: catData}, err))
		}
		return r.rep, nil
	}
	sidecars := r.readSidecars(ctx, pods)
	r.rep.add(svidCheck(sidecars, r.now))
	r.rep.add(withoutSidecar(pods, ""))
	r.rep.add(r.versions(ctx, sidecars))
	return r.rep, nil
}

// tetherCRDs lists the CRDs of group tether.dev.
func (r *runner) tetherCRDs(ctx context.Context) ([]unstructured.Unstructured, error) {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	list, err := r.dyn.Resource(crdGVR).List(cctx, metav1.ListOptions{})
	if err != nil {
		return nil, apiError("list CustomResourceDefinitions", err)
	}
	var out []unstructured.Unstructured
	for _, crd := range list.Items {
		if g, _, _ := unstructured.NestedString(crd.Object, "spec", "group"); g == crdGroup {
			out = append(out, crd)
		}
	}
	slices.SortFunc(out, func(a, b unstructured.Unstructured) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out, nil
}

func names(objs []unstructured.Unstructured) []string {
	var out []string
	for _, o := range objs {
		out = append(out, o.GetName())
	}
	return out
}

// crds: every tether.dev CRD is Established, and AccessPolicy is there.
func (r *runner) crds(ctx context.Context) Check {
	c := Check{Name: "crds", Category: catInstall}
	crds, err := r.tetherCRDs(ctx)
	if err != nil {
		return r.cannot(c, err)
	}
	var bad []string
	found := false
	for _, crd := range crds {
		found = found || crd.GetName() == policyCRD
		if !established(crd) {
			bad = append(bad, crd.GetName()+" is not Established")
		}
	}
	if !found {
		bad = append(bad, policyCRD+" is missing")
	}
	if len(bad) > 0 {
		c.Result, c.Message, c.Details = Fail, "Tether's CRDs are not all served", bad
		c.Hint = "install them with tether install --crds | kubectl apply --server-side -f - (kubectl get crd NAME -o yaml shows why one is not Established)"
		return c
	}
	c.Result, c.Message = OK, fmt.Sprintf("%d CRD(s) Established: %s", len(crds), strings.Join(names(crds), ", "))
	return c
}

func established(crd unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// deployment: a control-plane deployment is Available with every replica
// updated and ready.
func (r *runner) deployment(ctx context.Context, app string) Check {
	c := Check{Name: app, Category: catInstall}
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	d, err := r.client.AppsV1().Deployments(r.o.Namespace).Get(cctx, app, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		c.Result, c.Message = Fail, fmt.Sprintf("no Deployment %s in namespace %s", app, r.o.Namespace)
		c.Hint = "install Tether (docs/install.md), or give --namespace if it runs elsewhere"
		return c
	}
	if err != nil {
		return r.cannot(c, apiError("get Deployment "+r.o.Namespace+"/"+app, err))
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	st := d.Status
	msg := fmt.Sprintf("%d/%d replicas ready, %d updated", st.ReadyReplicas, want, st.UpdatedReplicas)
	hint := fmt.Sprintf("see kubectl -n %s describe deploy/%s and kubectl -n %s logs deploy/%s", r.o.Namespace, app, r.o.Namespace, app)
	switch {
	case want == 0 || st.AvailableReplicas == 0:
		c.Result, c.Message = Fail, msg+": none available"
		c.Hint = hint
		if want == 0 {
			c.Hint = fmt.Sprintf("it is scaled to 0: kubectl -n %s scale deploy/%s --replicas=2", r.o.Namespace, app)
		}
	case !available(d) || st.ReadyReplicas < want || st.UpdatedReplicas < want:
		c.Result, c.Message, c.Hint = Warn, msg, hint
	default:
		c.Result, c.Message = OK, msg
	}
	return c
}

func available(d *appsv1.Deployment) bool {
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// discoveryEndpoints: the tether-discovery Service has ready endpoints
// (the sidecars dial it).
func (r *runner) discoveryEndpoints(ctx context.Context) Check {
	c := Check{Name: "discovery-endpoints", Category: catInstall}
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	list, err := r.client.DiscoveryV1().EndpointSlices(r.o.Namespace).List(cctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + meshkube.DiscoveryApp})
	if err != nil {
		return r.cannot(c, apiError("list EndpointSlices of Service "+r.o.Namespace+"/"+meshkube.DiscoveryApp, err))
	}
	ready := 0
	for _, s := range list.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				ready++
			}
		}
	}
	if ready == 0 {
		c.Result, c.Message = Fail, fmt.Sprintf("Service %s/%s has no ready endpoint: sidecars get no configuration", r.o.Namespace, meshkube.DiscoveryApp)
		c.Hint = fmt.Sprintf("see kubectl -n %s get endpointslices -l %s=%s and the tether-discovery check above", r.o.Namespace, discoveryv1.LabelServiceName, meshkube.DiscoveryApp)
		return c
	}
	c.Result, c.Message = OK, fmt.Sprintf("Service %s/%s has %d ready endpoint(s)", r.o.Namespace, meshkube.DiscoveryApp, ready)
	return c
}

// roots: the roots of the trust bundle ConfigMap (what every sidecar
// trusts) expire after --expiry-warning.
func (r *runner) roots(ctx context.Context) Check {
	c := Check{Name: "root-expiry", Category: catIdentity}
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	cm, err := r.client.CoreV1().ConfigMaps(r.o.Namespace).Get(cctx, bundleMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		c.Result, c.Message = Fail, fmt.Sprintf("no ConfigMap %s/%s: tether-ca has not published the trust bundle", r.o.Namespace, bundleMap)
		c.Hint = "see the tether-ca check above and kubectl -n " + r.o.Namespace + " logs deploy/tether-ca"
		return c
	}
	if err != nil {
		return r.cannot(c, apiError("get ConfigMap "+r.o.Namespace+"/"+bundleMap, err))
	}
	roots, err := parseCerts([]byte(cm.Data["bundle.pem"]))
	if err != nil || len(roots) == 0 {
		c.Result, c.Message = Fail, fmt.Sprintf("ConfigMap %s/%s has no root certificate in bundle.pem", r.o.Namespace, bundleMap)
		if err != nil {
			c.Message += ": " + err.Error()
		}
		c.Hint = "tether-ca rewrites it; see kubectl -n " + r.o.Namespace + " logs deploy/tether-ca"
		return c
	}
	var soon []string
	latest := time.Time{}
	for _, root := range roots {
		d := fmt.Sprintf("root %s expires %s", fingerprint(root), when(root.NotAfter, r.now))
		c.Details = append(c.Details, d)
		if root.NotAfter.Sub(r.now) < r.o.ExpiryWarning {
			soon = append(soon, d)
		}
		if root.NotAfter.After(latest) {
			latest = root.NotAfter
		}
	}
	if latest.Sub(r.now) < r.o.ExpiryWarning {
		c.Result, c.Details = Fail, soon
		c.Message = fmt.Sprintf("every root of the trust bundle expires within --expiry-warning %s", days(r.o.ExpiryWarning))
		c.Hint = "rotate the root now: tether ca rotate prepare, then activate and retire (docs/ca.md, Rotation); when it expires every SVID stops verifying"
		return c
	}
	if len(soon) > 0 {
		c.Result = OK
		c.Message = fmt.Sprintf("%d root(s) in the trust bundle; the newest expires %s (an older one within --expiry-warning is being rotated out)", len(roots), when(latest, r.now))
		return c
	}
	c.Result, c.Message = OK, fmt.Sprintf("%d root(s) in the trust bundle, none expiring within --expiry-warning %s", len(roots), days(r.o.ExpiryWarning))
	return c
}

// intermediates: the CA's signing intermediates, from its /metrics
// through the pod proxy, expire after --intermediate-expiry-warning and
// the CA does not report their renewal overdue.
func (r *runner) intermediates(ctx context.Context) Check {
	c := Check{Name: "intermediate-expiry", Category: catIdentity}
	pods, err := meshkube.ControlPods(ctx, r.client, r.o.Namespace, meshkube.CAApp, r.o.Timeout, need)
	if err != nil {
		return r.cannot(c, err)
	}
	var m *meshkube.CAMetrics
	var errs []string
	for i := range pods {
		p := &pods[i]
		cctx, cancel := r.ctx(ctx)
		err := meshkube.ProxyGet(cctx, r.client, p, meshkube.AdminPort(p), "/metrics", meshkube.MaxMetricsBody, need, func(body io.Reader) error {
			got, err := meshkube.ParseCAMetrics(body)
			if err == nil && (m == nil || got.BundleSequence > m.BundleSequence) {
				m = got
			}
			return err
		})
		cancel()
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	if m == nil {
		return r.cannot(c, errors.New(strings.Join(errs, "; ")))
	}
	var bad []string
	for _, g := range m.Generations {
		if g.IntermediateExpires.IsZero() || g.State == "superseded" {
			continue // superseded generations no longer sign
		}
		d := fmt.Sprintf("generation %d (%s): intermediate expires %s", g.ID, g.State, when(g.IntermediateExpires, r.now))
		c.Details = append(c.Details, d)
		if g.IntermediateExpires.Sub(r.now) < r.o.IntermediateExpiryWarning {
			bad = append(bad, d)
		}
	}
	switch {
	case m.IntermediateRenewalOverdue:
		c.Result, c.Message = Fail, "tether-ca reports the renewal of its signing intermediate overdue (tether_ca_intermediate_renewal_overdue)"
		c.Hint = "see kubectl -n " + r.o.Namespace + " logs deploy/tether-ca (with an upstream issuer, its errors); renew by hand with tether ca rotate renew-intermediate in a tether-ca pod"
	case len(bad) > 0:
		c.Result, c.Details = Fail, bad
		c.Message = fmt.Sprintf("a signing intermediate expires within --intermediate-expiry-warning %s", days(r.o.IntermediateExpiryWarning))
		c.Hint = "the CA renews it at 1/3 of its life left; see kubectl -n " + r.o.Namespace + " logs deploy/tether-ca, or renew by hand: tether ca rotate renew-intermediate"
	case len(c.Details) == 0:
		c.Result, c.Message = Fail, "tether-ca's /metrics shows no signing intermediate"
		c.Hint = "see kubectl -n " + r.o.Namespace + " logs deploy/tether-ca"
	default:
		c.Result, c.Message = OK, fmt.Sprintf("no signing intermediate expires within --intermediate-expiry-warning %s, renewal not overdue", days(r.o.IntermediateExpiryWarning))
	}
	return c
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

func fingerprint(c *x509.Certificate) string {
	return fmt.Sprintf("%x", sha256Sum(c.Raw))[:16]
}

// when is an absolute time with how far it is from now.
func when(t, now time.Time) string {
	d := t.Sub(now)
	if d < 0 {
		return t.UTC().Format(time.RFC3339) + " (" + humanize.Duration(-d) + " ago)"
	}
	return t.UTC().Format(time.RFC3339) + " (in " + humanize.Duration(d) + ")"
}

func days(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}
