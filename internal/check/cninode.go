package check

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/internal/meshkube"
)

// cniNodeApp is the label app.kubernetes.io/name of the node agent's
// DaemonSet (charts/tether, injector.redirectMode=cni).
const cniNodeApp = "tether-cni-node"

// redirectModeCNI reports whether the injector Deployment runs with
// --redirect-mode=cni (or --redirect-mode cni).
func redirectModeCNI(containers []corev1.Container) bool {
	for _, c := range containers {
		args := append(slices.Clone(c.Command), c.Args...)
		for i, a := range args {
			if a == "--redirect-mode=cni" || (a == "--redirect-mode" && i+1 < len(args) && args[i+1] == "cni") {
				return true
			}
		}
	}
	return false
}

// injectorCNI reports whether the installed injector runs in CNI redirect
// mode (false when it cannot be read: the other checks say why).
func (r *runner) injectorCNI(ctx context.Context) bool {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	d, err := r.client.AppsV1().Deployments(r.o.Namespace).Get(cctx, meshkube.InjectorApp, metav1.GetOptions{})
	return err == nil && redirectModeCNI(d.Spec.Template.Spec.Containers)
}

// cniNode: in CNI redirect mode, the node agent's DaemonSet exists and is
// ready on every node it is scheduled on. Where it is not ready, meshed
// pods fail their tether-validate init container (fail closed).
func (r *runner) cniNode(ctx context.Context) Check {
	c := Check{Name: "cni-node", Category: catInstall}
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	d, err := r.client.AppsV1().Deployments(r.o.Namespace).Get(cctx, meshkube.InjectorApp, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		c.Result, c.Message = OK, "no Deployment "+meshkube.InjectorApp+": the redirect mode is unknown (see the "+meshkube.InjectorApp+" check)"
		return c
	}
	if err != nil {
		return r.cannot(c, apiError("get Deployment "+r.o.Namespace+"/"+meshkube.InjectorApp, err))
	}
	if !redirectModeCNI(d.Spec.Template.Spec.Containers) {
		c.Result, c.Message = OK, "the injector runs in init redirect mode (tether-init in each pod): no node agent needed"
		return c
	}
	list, err := r.client.AppsV1().DaemonSets("").List(cctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + cniNodeApp})
	if err != nil {
		return r.cannot(c, apiError("list DaemonSets labelled app.kubernetes.io/name="+cniNodeApp, err))
	}
	if len(list.Items) == 0 {
		c.Result, c.Message = Fail, "the injector runs in CNI redirect mode but there is no DaemonSet "+cniNodeApp+": every meshed pod fails its tether-validate init container"
		c.Hint = "install it: tether install --redirect-mode cni | kubectl apply --server-side -f - (docs/install.md, CNI mode)"
		return c
	}
	ds := list.Items[0]
	st := ds.Status
	msg := fmt.Sprintf("DaemonSet %s/%s: %d of %d node(s) ready", ds.Namespace, ds.Name, st.NumberReady, st.DesiredNumberScheduled)
	switch {
	case st.DesiredNumberScheduled == 0:
		c.Result, c.Message = Fail, msg+": it runs on no node"
		c.Hint = fmt.Sprintf("see kubectl -n %s describe daemonset/%s (node selectors, taints, the priority class)", ds.Namespace, ds.Name)
	case st.NumberReady < st.DesiredNumberScheduled:
		c.Result, c.Message = Fail, msg+": meshed pods created on the others fail their tether-validate init container"
		c.Details = r.notReadyAgents(ctx, ds.Namespace)
		c.Hint = fmt.Sprintf("see kubectl -n %s logs POD of the nodes listed; once ready, delete the meshed pods stuck in Init there so they are created again", ds.Namespace)
	default:
		c.Result, c.Message = OK, msg+" (the chain entry is in place)"
	}
	return c
}

// notReadyAgents lists the node agent's pods that are not ready, with
// their nodes.
func (r *runner) notReadyAgents(ctx context.Context, ns string) []string {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	pods, err := r.client.CoreV1().Pods(ns).List(cctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=" + cniNodeApp})
	if err != nil {
		return []string{"could not list its pods: " + err.Error()}
	}
	var out []string
	for _, p := range pods.Items {
		if !podReady(p) {
			out = append(out, fmt.Sprintf("node %s: pod %s not ready (%s)", p.Spec.NodeName, p.Name, strings.ToLower(string(p.Status.Phase))))
		}
	}
	slices.Sort(out)
	return out
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
