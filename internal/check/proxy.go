package check

import (
	"cmp"
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/pkg/inject"
)

// Proxy checks the data plane of one namespace: the namespace is labelled,
// every pod is injected, every sidecar is ready, holds a valid SVID whose
// SPIFFE ID names the pod's ServiceAccount, and runs the control plane's
// release or newer.
func Proxy(ctx context.Context, o Options, namespace string) (*Report, error) {
	if namespace == "" {
		return nil, fmt.Errorf("check --proxy: no namespace")
	}
	r, err := newRunner(o, "proxy")
	if err != nil {
		return nil, err
	}
	r.rep.Namespace = namespace
	r.rep.add(r.namespaceLabel(ctx, namespace))
	pods, err := r.meshPods(ctx, namespace)
	if err != nil {
		for _, name := range []string{"pods-without-sidecar", "sidecar-ready", "sidecar-svids", "sidecar-identity", "sidecar-versions"} {
			r.rep.add(r.cannot(Check{Name: name, Category: catData}, err))
		}
		return r.rep, nil
	}
	r.rep.add(withoutSidecar(pods, namespace))
	sidecars := r.readSidecars(ctx, pods)
	r.rep.add(readyCheck(pods))
	r.rep.add(svidCheck(sidecars, r.now))
	r.rep.add(identityCheck(sidecars))
	r.rep.add(r.versions(ctx, sidecars))
	return r.rep, nil
}

// namespaceLabel: the namespace exists and is labelled for injection.
func (r *runner) namespaceLabel(ctx context.Context, name string) Check {
	c := Check{Name: "namespace-labelled", Category: catInject}
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	ns, err := r.client.CoreV1().Namespaces().Get(cctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		c.Result, c.Message, c.Hint = Fail, "no namespace "+name, "name an existing namespace with -n"
		return c
	}
	if err != nil {
		return r.cannot(c, apiError("get namespace "+name, err))
	}
	switch v := ns.Labels[inject.InjectLabel]; v {
	case "enabled", inject.RequiredValue:
		c.Result, c.Message = OK, fmt.Sprintf("namespace %s is labelled %s=%s", name, inject.InjectLabel, v)
	default:
		c.Result = Fail
		c.Message = fmt.Sprintf("namespace %s is not labelled %s=enabled or required (label %q): its new pods get no sidecar", name, inject.InjectLabel, v)
		c.Hint = fmt.Sprintf("kubectl label namespace %s %s=enabled --overwrite, then restart its workloads", name, inject.InjectLabel)
	}
	return c
}

// readyCheck: the sidecar container of every running injected pod is
// ready.
func readyCheck(pods []corev1.Pod) Check {
	c := Check{Name: "sidecar-ready", Category: catData}
	var bad []string
	n := 0
	for _, p := range pods {
		if !inject.Injected(&p) {
			continue
		}
		n++
		st := sidecarStatus(&p)
		switch {
		case st == nil:
			bad = append(bad, fmt.Sprintf("%s: %s, the sidecar has not started", podName(&p), cmp.Or(string(p.Status.Phase), "Pending")))
		case !st.Ready:
			why := "not ready"
			if w := st.State.Waiting; w != nil {
				why = "waiting: " + w.Reason
			} else if t := st.LastTerminationState.Terminated; t != nil {
				why = fmt.Sprintf("not ready; last exit %d (%s)", t.ExitCode, t.Reason)
			}
			bad = append(bad, fmt.Sprintf("%s: %s (%d restarts)", podName(&p), why, st.RestartCount))
		}
	}
	if len(bad) > 0 {
		c.Result, c.Details = Fail, limit(bad)
		c.Message = fmt.Sprintf("%d of %d sidecar(s) are not ready", len(bad), n)
		c.Hint = "kubectl -n NS logs POD -c " + inject.SidecarContainerName + " says why; a sidecar is ready once it holds an SVID"
		return c
	}
	c.Result, c.Message = OK, fmt.Sprintf("%d sidecar(s) ready", n)
	return c
}

func sidecarStatus(p *corev1.Pod) *corev1.ContainerStatus {
	for i, s := range p.Status.InitContainerStatuses {
		if s.Name == inject.SidecarContainerName {
			return &p.Status.InitContainerStatuses[i]
		}
	}
	return nil
}

// identityCheck: the SPIFFE ID each sidecar connected to discovery with
// (verified against its certificate) names its pod's namespace and
// ServiceAccount.
func identityCheck(rep *sidecarReport) Check {
	c := Check{Name: "sidecar-identity", Category: catData}
	if len(rep.sidecars) == 0 {
		c.Result, c.Message = OK, "no running injected pod"
		return c
	}
	if rep.nodesErr != nil {
		c.Result, c.Message = Warn, "the sidecars' identities could not be read from discovery: "+rep.nodesErr.Error()
		c.Hint = "the identities come from tether-discovery's /debug/sidecars, which answers on its pod's loopback only: the caller needs create on pods/portforward in the control plane's namespace"
		return c
	}
	var bad, unknown, good []string
	for _, sc := range rep.sidecars {
		sa := cmp.Or(sc.pod.Spec.ServiceAccountName, "default")
		want := "/ns/" + sc.pod.Namespace + "/sa/" + sa
		switch {
		case sc.node == nil:
			unknown = append(unknown, podName(&sc.pod)+": not connected to discovery (discovery "+rep.discoveryPod+")")
		case !strings.HasPrefix(sc.node.ID, "spiffe://") || !strings.HasSuffix(sc.node.ID, want) || strings.Count(strings.TrimPrefix(sc.node.ID, "spiffe://"), "/") != 4:
			bad = append(bad, fmt.Sprintf("%s: %s, want …%s", podName(&sc.pod), clean(sc.node.ID), want))
		default:
			good = append(good, podName(&sc.pod)+": "+sc.node.ID)
		}
	}
	switch {
	case len(bad) > 0:
		c.Result, c.Details = Fail, bad
		c.Message = fmt.Sprintf("%d sidecar(s) hold an identity that is not their pod's ServiceAccount", len(bad))
		c.Hint = "two pods may share an IP address in discovery's view (a pod replaced moments ago), run the check again; if it stays, report it: the CA issues only the ID of the caller's projected token"
	case len(unknown) > 0:
		c.Result, c.Details = Warn, append(unknown, good...)
		c.Message = fmt.Sprintf("%d sidecar(s) are not connected to discovery, their identity is unknown", len(unknown))
		c.Hint = "see the sidecar's log (kubectl -n NS logs POD -c " + inject.SidecarContainerName + ") and the tether-discovery check of tether check"
	default:
		c.Result, c.Details = OK, good
		c.Message = fmt.Sprintf("%d sidecar(s) hold the SPIFFE ID of their pod's ServiceAccount", len(good))
	}
	return c
}
