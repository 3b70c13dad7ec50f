package check

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/blang/semver/v4"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/internal/admin"
	"github.com/tether-mesh/tether/internal/meshkube"
	"github.com/tether-mesh/tether/internal/version"
	"github.com/tether-mesh/tether/pkg/discovery/xds"
	"github.com/tether-mesh/tether/pkg/inject"
)

// sidecarFanout bounds the sidecars asked at once.
const sidecarFanout = 16

// meshPods lists the pods that are not finished in ns, or, when ns is "",
// in every labelled namespace.
func (r *runner) meshPods(ctx context.Context, ns string) ([]corev1.Pod, error) {
	var nss []string
	if ns != "" {
		nss = []string{ns}
	} else {
		list, err := r.labelledNamespaces(ctx)
		if err != nil {
			return nil, err
		}
		for _, n := range list {
			nss = append(nss, n.Name)
		}
	}
	var out []corev1.Pod
	for _, n := range nss {
		cctx, cancel := r.ctx(ctx)
		list, err := r.client.CoreV1().Pods(n).List(cctx, metav1.ListOptions{})
		cancel()
		if err != nil {
			return nil, apiError("list pods in namespace "+n, err)
		}
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
				out = append(out, p)
			}
		}
	}
	slices.SortFunc(out, func(a, b corev1.Pod) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out, nil
}

func podName(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }

// sidecar is what tether check learned of one injected pod's sidecar.
type sidecar struct {
	pod     corev1.Pod
	metrics *meshkube.SidecarMetrics
	err     error // reading its /metrics
	// node is what discovery knows of it (nil: not connected, or
	// discovery could not be read: see nodesErr).
	node *xds.NodeInfo
}

// sidecarAdminPort is the sidecar container's admin port (named
// tether-admin by the injector), else inject.AdminPort.
func sidecarAdminPort(p *corev1.Pod) string {
	for _, c := range p.Spec.InitContainers {
		if c.Name != inject.SidecarContainerName {
			continue
		}
		for _, port := range c.Ports {
			if port.Name == "tether-admin" {
				return strconv.Itoa(int(port.ContainerPort))
			}
		}
	}
	return strconv.Itoa(inject.AdminPort)
}

// sidecarReport is the sidecars of the injected, running pods and what
// discovery said of them.
type sidecarReport struct {
	sidecars []sidecar
	nodesErr error
	// discoveryPod says which discovery replicas were read and what they
	// listed, for messages.
	discoveryPod string
}

// readSidecars reads each injected running pod's sidecar /metrics through
// the pod proxy, and discovery's list of connected sidecars.
func (r *runner) readSidecars(ctx context.Context, pods []corev1.Pod) *sidecarReport {
	rep := &sidecarReport{}
	for _, p := range pods {
		if inject.Injected(&p) && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
			rep.sidecars = append(rep.sidecars, sidecar{pod: p})
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, sidecarFanout)
	for i := range rep.sidecars {
		sc := &rep.sidecars[i]
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			cctx, cancel := r.ctx(ctx)
			defer cancel()
			sc.err = meshkube.ProxyGet(cctx, r.client, &sc.pod, sidecarAdminPort(&sc.pod), "/metrics", meshkube.MaxMetricsBody, need, func(body io.Reader) error {
				var err error
				sc.metrics, err = meshkube.ParseSidecarMetrics(body)
				return err
			})
		})
	}
	var nodes []xds.NodeInfo
	if len(rep.sidecars) > 0 {
		nodes, rep.discoveryPod, rep.nodesErr = r.discoveryNodes(ctx)
	}
	wg.Wait()
	byIP := map[string]*xds.NodeInfo{}
	for i := range nodes {
		n := &nodes[i]
		host, _, err := net.SplitHostPort(n.Peer)
		if err != nil {
			continue
		}
		if old, ok := byIP[host]; !ok || n.ConnectedSince.After(old.ConnectedSince) {
			byIP[host] = n
		}
	}
	for i := range rep.sidecars {
		rep.sidecars[i].node = byIP[rep.sidecars[i].pod.Status.PodIP]
	}
	if len(nodes) > 0 {
		var peers []string
		for _, n := range nodes[:min(len(nodes), 8)] {
			peers = append(peers, n.ID+" from "+n.Peer)
		}
		rep.discoveryPod += "; streams: " + strings.Join(peers, ", ")
	}
	return rep
}

// discoveryNodes reads GET /debug/sidecars of every tether-discovery
// replica (each sidecar is connected to one). Discovery answers it on its
// pod's loopback only, which the pod proxy cannot reach, so it goes
// through a port-forward (pods/portforward). It fails only when no
// replica could be read; where names the replicas read.
func (r *runner) discoveryNodes(ctx context.Context) ([]xds.NodeInfo, string, error) {
	pods, err := meshkube.ControlPods(ctx, r.client, r.o.Namespace, meshkube.DiscoveryApp, r.o.Timeout, need)
	if err != nil {
		return nil, "", err
	}
	var nodes []xds.NodeInfo
	var read, errs []string
	for i := range pods {
		p := &pods[i]
		port, err := strconv.Atoi(meshkube.AdminPort(p))
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		body, err := r.forwardGet(ctx, p, port, "/debug/sidecars")
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		var list struct {
			Sidecars []xds.NodeInfo `json:"sidecars"`
		}
		if err := json.Unmarshal(body, &list); err != nil {
			errs = append(errs, fmt.Sprintf("GET /debug/sidecars of pod %s: not the expected JSON: %v", podName(p), err))
			continue
		}
		nodes = append(nodes, list.Sidecars...)
		read = append(read, fmt.Sprintf("%s: %d sidecar stream(s)", podName(p), len(list.Sidecars)))
	}
	where := strings.Join(read, ", ")
	if len(errs) > 0 {
		if len(read) == 0 {
			return nil, "", errors.New(strings.Join(errs, "; "))
		}
		where += "; not read: " + strings.Join(errs, "; ")
	}
	return nodes, where, nil
}

// forwardGet port-forwards to the pod's port, as kubectl port-forward
// does, and GETs path on it, within --timeout (meshkube.ForwardGet).
func (r *runner) forwardGet(ctx context.Context, p *corev1.Pod, port int, path string) ([]byte, error) {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	return meshkube.ForwardGet(cctx, r.cfg, r.client, p, port, path, meshkube.MaxMetricsBody)
}

// svidCheck: every sidecar holds an SVID that has not expired, and can
// reach the CA to renew it.
func svidCheck(rep *sidecarReport, now time.Time) Check {
	c := Check{Name: "sidecar-svids", Category: catData}
	if len(rep.sidecars) == 0 {
		c.Result, c.Message = OK, "no running injected pod"
		return c
	}
	var bad, warn []string
	var earliest time.Time
	for _, sc := range rep.sidecars {
		name := podName(&sc.pod)
		switch {
		case sc.err != nil:
			bad = append(bad, name+": "+sc.err.Error())
		case sc.metrics.SVIDExpiry.IsZero():
			bad = append(bad, name+": holds no SVID yet")
		case !sc.metrics.SVIDExpiry.After(now):
			bad = append(bad, fmt.Sprintf("%s: SVID expired %s", name, when(sc.metrics.SVIDExpiry, now)))
		case !sc.metrics.CAReachable:
			warn = append(warn, fmt.Sprintf("%s: SVID valid until %s, but the last exchange with tether-ca failed (it cannot renew now)", name, when(sc.metrics.SVIDExpiry, now)))
		}
		if sc.metrics != nil && !sc.metrics.SVIDExpiry.IsZero() && (earliest.IsZero() || sc.metrics.SVIDExpiry.Before(earliest)) {
			earliest = sc.metrics.SVIDExpiry
		}
	}
	switch {
	case len(bad) > 0:
		c.Result, c.Details = Fail, append(bad, warn...)
		c.Message = fmt.Sprintf("%d of %d sidecar(s) hold no valid SVID, or could not be read", len(bad), len(rep.sidecars))
		c.Hint = "see the sidecar's log (kubectl -n NS logs POD -c " + inject.SidecarContainerName + ") and the tether-ca check; a sidecar whose /metrics cannot be read through the pod proxy needs pods/proxy"
	case len(warn) > 0:
		c.Result, c.Details = Warn, warn
		c.Message = fmt.Sprintf("%d of %d sidecar(s) cannot reach tether-ca to renew their SVID", len(warn), len(rep.sidecars))
		c.Hint = "see the tether-ca check and the sidecar's log; a NetworkPolicy may block port 8443 of tether-ca"
	default:
		c.Result = OK
		c.Message = fmt.Sprintf("%d sidecar(s) hold a valid SVID (the first to expire: %s; they renew at half of its life)", len(rep.sidecars), when(earliest, now))
	}
	return c
}

// withoutSidecar lists the pods of labelled namespaces (or of ns) that run
// without a sidecar, with the command that recreates them with one. Pods
// that opted out (label tether.dev/inject=disabled) and hostNetwork pods
// are listed but do not fail.
func withoutSidecar(pods []corev1.Pod, ns string) Check {
	c := Check{Name: "pods-without-sidecar", Category: catData}
	var escaped, optedOut []string
	total := 0
	for _, p := range pods {
		if inject.Injected(&p) {
			total++
			continue
		}
		total++
		switch {
		case p.Labels[inject.InjectLabel] == "disabled":
			optedOut = append(optedOut, podName(&p)+": opted out (label "+inject.InjectLabel+"=disabled)")
		case p.Spec.HostNetwork:
			optedOut = append(optedOut, podName(&p)+": hostNetwork, never injected")
		default:
			escaped = append(escaped, podName(&p)+": "+restartCommand(&p))
		}
	}
	where := "labelled namespaces"
	if ns != "" {
		where = "namespace " + ns
	}
	if len(escaped) > 0 {
		c.Result, c.Details = Fail, append(limit(escaped), optedOut...)
		c.Message = fmt.Sprintf("%d pod(s) of %s run without a sidecar: no identity, refused by strict peers, outside policy", len(escaped), where)
		c.Hint = "they were created before the namespace was labelled or while the injector was down; recreate them with the commands shown (the webhook injects the new pods)"
		return c
	}
	c.Result, c.Details = OK, optedOut
	c.Message = fmt.Sprintf("every pod of %s runs with its sidecar (%d pod(s)", where, total)
	if len(optedOut) > 0 {
		c.Message += fmt.Sprintf(", %d opted out or hostNetwork", len(optedOut))
	}
	c.Message += ")"
	return c
}

// restartCommand is how to recreate a pod so that the webhook injects it.
func restartCommand(p *corev1.Pod) string {
	for _, o := range p.OwnerReferences {
		if o.Controller == nil || !*o.Controller {
			continue
		}
		switch o.Kind {
		case "ReplicaSet":
			// A Deployment's ReplicaSet is named <deployment>-<hash>.
			if i := strings.LastIndexByte(o.Name, '-'); i > 0 && p.Labels["pod-template-hash"] != "" {
				return fmt.Sprintf("kubectl -n %s rollout restart deploy/%s", p.Namespace, o.Name[:i])
			}
			return fmt.Sprintf("kubectl -n %s delete pod %s (its ReplicaSet %s creates it again)", p.Namespace, p.Name, o.Name)
		case "StatefulSet":
			return fmt.Sprintf("kubectl -n %s rollout restart statefulset/%s", p.Namespace, o.Name)
		case "DaemonSet":
			return fmt.Sprintf("kubectl -n %s rollout restart daemonset/%s", p.Namespace, o.Name)
		default:
			return fmt.Sprintf("kubectl -n %s delete pod %s (its %s %s creates it again)", p.Namespace, p.Name, o.Kind, o.Name)
		}
	}
	return fmt.Sprintf("kubectl -n %s delete pod %s, then create it again from its manifest (a bare pod: nothing recreates it)", p.Namespace, p.Name)
}

func limit(s []string) []string {
	if len(s) <= maxListed {
		return s
	}
	return append(s[:maxListed:maxListed], fmt.Sprintf("... and %d more", len(s)-maxListed))
}

// versions: no sidecar runs an older release than the control plane.
// The sidecars report their version to discovery; the control plane's is
// that of the release the injector injects (its image, as the CLI's
// version when the image has no version tag).
func (r *runner) versions(ctx context.Context, rep *sidecarReport) Check {
	c := Check{Name: "sidecar-versions", Category: catData}
	if len(rep.sidecars) == 0 {
		c.Result, c.Message = OK, "no running injected pod"
		return c
	}
	if rep.nodesErr != nil {
		c.Result, c.Message = Warn, "the sidecars' versions could not be read from discovery: "+rep.nodesErr.Error()
		c.Hint = "the versions come from tether-discovery's /debug/sidecars, which answers on its pod's loopback only, through a port-forward: the caller needs create on pods/portforward in " + r.o.Namespace + " and a running tether-discovery pod"
		return c
	}
	cp, cpFrom := r.controlPlaneVersion(ctx)
	cpv, cpErr := semver.ParseTolerant(cp)
	var older, unknown, same []string
	for _, sc := range rep.sidecars {
		name := podName(&sc.pod)
		if sc.node == nil || sc.node.Metadata.Version == "" {
			unknown = append(unknown, name+": not connected to discovery, or reported no version (discovery "+rep.discoveryPod+")")
			continue
		}
		rel := version.Release(sc.node.Metadata.Version)
		v, err := semver.ParseTolerant(rel)
		switch {
		case err != nil || cpErr != nil:
			if rel != cp {
				unknown = append(unknown, fmt.Sprintf("%s: version %q, not comparable with %q", name, clean(rel), cp))
			}
		case v.LT(cpv):
			older = append(older, fmt.Sprintf("%s: %s: %s", name, clean(rel), restartCommand(&sc.pod)))
		default:
			same = append(same, name)
		}
	}
	switch {
	case len(older) > 0:
		c.Result, c.Details = Fail, limit(older)
		c.Message = fmt.Sprintf("%d sidecar(s) run a release older than the control plane's %s (%s)", len(older), cp, cpFrom)
		c.Hint = "restart their workloads after an upgrade (commands shown) so the injector gives them the current sidecar; the control plane supports sidecars one release behind (docs/architecture.md)"
	case len(unknown) > 0:
		c.Result, c.Details = Warn, limit(unknown)
		c.Message = fmt.Sprintf("the version of %d sidecar(s) is unknown", len(unknown))
		c.Hint = "a sidecar that is not connected to discovery gets no configuration: see its log (kubectl -n NS logs POD -c " + inject.SidecarContainerName + ")"
	default:
		c.Result = OK
		c.Message = fmt.Sprintf("%d sidecar(s) on the control plane's release %s or newer (%s)", len(same), cp, cpFrom)
	}
	return c
}

// controlPlaneVersion is the release tether-discovery reports on GET
// /version (its admin port, through the pod proxy): the sidecars talk to
// it. Else the tag of the image tether-injector injects, else this CLI's
// version; the second string says which.
func (r *runner) controlPlaneVersion(ctx context.Context) (string, string) {
	if pods, err := meshkube.ControlPods(ctx, r.client, r.o.Namespace, meshkube.DiscoveryApp, r.o.Timeout, need); err == nil {
		for i := range pods {
			p := &pods[i]
			var info admin.VersionInfo
			cctx, cancel := r.ctx(ctx)
			err := meshkube.ProxyGet(cctx, r.client, p, meshkube.AdminPort(p), "/version", 4096, need, func(body io.Reader) error {
				return json.NewDecoder(body).Decode(&info)
			})
			cancel()
			if err == nil && info.Version != "" {
				return version.Release(info.Version), "GET /version of " + podName(p)
			}
		}
	}
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	if d, err := r.client.AppsV1().Deployments(r.o.Namespace).Get(cctx, meshkube.InjectorApp, metav1.GetOptions{}); err == nil {
		for _, ctr := range d.Spec.Template.Spec.Containers {
			for _, e := range ctr.Env {
				if e.Name != "TETHER_IMAGE" {
					continue
				}
				if i := strings.LastIndexByte(e.Value, ':'); i > 0 && !strings.Contains(e.Value[i:], "/") {
					if _, err := semver.ParseTolerant(e.Value[i+1:]); err == nil {
						return strings.TrimPrefix(e.Value[i+1:], "v"), "the tag of the image tether-injector injects"
					}
				}
			}
		}
	}
	return version.Release(version.String()), "this tether CLI's version: the control plane reports none"
}
