package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-mesh/tether/internal/meshkube"
)

// Pod labels and the port of the control plane's admin servers
// (manifests/base).
const (
	caAppLabel        = meshkube.CAApp
	discoveryAppLabel = meshkube.DiscoveryApp
	appLabelKey       = meshkube.AppLabelKey
)

// kubeTargets reaches a cluster's mesh through the API server: it finds
// the control plane's pods by label and every part's admin port through
// the pod proxy (pods/proxy), so nothing but the API server needs to be
// reachable from where the command runs.
type kubeTargets struct {
	opts   statusOptions
	client kubernetes.Interface
	where  string

	mu   sync.Mutex
	pods map[string][]corev1.Pod // sidecar pods by "namespace/ip"
}

var _ statusTargets = (*kubeTargets)(nil)

func newKubeTargets(o statusOptions, stderr io.Writer) (*kubeTargets, error) {
	p := &policySource{kubeconfig: o.kubeconfig, kubeContext: o.kubeContext}
	cfg, where, err := p.restConfig(&lockedWriter{w: stderr})
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "tether-status"
	cfg.Timeout = o.timeout
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	return &kubeTargets{opts: o, client: client, where: where, pods: map[string][]corev1.Pod{}}, nil
}

func (k *kubeTargets) describe() (string, string) { return "kubernetes", k.where }

// statusNeeds is what tether status needs of RBAC in a cluster.
const statusNeeds = "tether status and tether version need list on pods and get on pods/proxy"

// controlPods lists the running pods of one control plane component. An
// error says why there is none to ask.
func (k *kubeTargets) controlPods(ctx context.Context, app string) ([]corev1.Pod, error) {
	return meshkube.ControlPods(ctx, k.client, k.opts.namespace, app, k.opts.timeout, statusNeeds)
}

// adminPort is the pod's container port named "admin", else 15014.
func adminPort(p *corev1.Pod) string { return meshkube.AdminPort(p) }

// proxyGet fetches path on the pod's port through the API server.
func (k *kubeTargets) proxyGet(ctx context.Context, p *corev1.Pod, port, path string, limit int64, decode func(io.Reader) error) error {
	return meshkube.ProxyGet(ctx, k.client, p, port, path, limit, statusNeeds, decode)
}

// kubeError words an API error with what was tried and what may help.
func kubeError(what string, err error) error { return meshkube.APIError(what, err, statusNeeds) }

func (k *kubeTargets) ca(ctx context.Context) *caStatus {
	source := "pods " + appLabelKey + "=" + caAppLabel + " in " + k.opts.namespace
	pods, err := k.controlPods(ctx, caAppLabel)
	if err != nil {
		return &caStatus{Source: source, Error: err.Error()}
	}
	// Every replica exports the state it has loaded: take the newest.
	var best *caStatus
	var errs []string
	for i := range pods {
		p := &pods[i]
		pctx, cancel := context.WithTimeout(ctx, k.opts.timeout)
		var c *caStatus
		err := k.proxyGet(pctx, p, adminPort(p), "/metrics", maxMetricsBody, func(r io.Reader) error {
			var err error
			c, err = caFromMetrics(r)
			return err
		})
		cancel()
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		c.Source = "pod " + p.Namespace + "/" + p.Name + " /metrics"
		if best == nil || c.BundleSequence > best.BundleSequence {
			best = c
		}
	}
	if best == nil {
		return &caStatus{Source: source, Error: strings.Join(errs, "; ")}
	}
	return best
}

// caFromMetrics reads the CA's state from its Prometheus metrics
// (meshkube.ParseCAMetrics).
func caFromMetrics(r io.Reader) (*caStatus, error) {
	m, err := meshkube.ParseCAMetrics(r)
	if err != nil {
		return nil, err
	}
	c := &caStatus{BundleSequence: m.BundleSequence, IntermediateRenewalOverdue: m.IntermediateRenewalOverdue, Generations: []generationStatus{},
		Note: "from /metrics: retired generations, root fingerprints and the rotation schedule are shown by `tether ca status` in the CA's pod"}
	for _, g := range m.Generations {
		c.Generations = append(c.Generations, generationStatus{ID: g.ID, State: g.State, RootExpires: g.RootExpires, IntermediateExpires: g.IntermediateExpires})
	}
	return c, nil
}

func (k *kubeTargets) discovery(ctx context.Context) []discoveryStatus {
	pods, err := k.controlPods(ctx, discoveryAppLabel)
	if err != nil {
		return []discoveryStatus{{Source: "pods " + appLabelKey + "=" + discoveryAppLabel + " in " + k.opts.namespace, Error: err.Error()}}
	}
	// The API server's pod proxy reaches the pod IP, where /debug/sidecars
	// is refused: it answers only on the pod's loopback (docs/sidecar.md,
	// Security model: Admin ports).
	out := make([]discoveryStatus, len(pods))
	for i, p := range pods {
		port := adminPort(&p)
		out[i] = discoveryStatus{Source: "pod " + p.Namespace + "/" + p.Name, Error: fmt.Sprintf(
			"tether-discovery serves the list of sidecars (/debug/sidecars) only on its pod's loopback, which the API server's pod proxy cannot reach: "+
				"run kubectl port-forward -n %s pod/%s %s and tether status --discovery-admin http://127.0.0.1:%s", p.Namespace, p.Name, port, port)}
	}
	return out
}

func (k *kubeTargets) denials(ctx context.Context, sc *sidecarStatus) (*denialsBody, error) {
	host, port, err := net.SplitHostPort(sc.AdminAddr)
	if err != nil {
		return nil, fmt.Errorf("admin address %q: %w", sc.AdminAddr, err)
	}
	p, err := k.sidecarPod(ctx, sc.SpiffeID, host)
	if err != nil {
		return nil, err
	}
	sc.Pod = p.Namespace + "/" + p.Name
	var body denialsBody
	if err := k.proxyGet(ctx, p, port, "/debug/denials", maxDenialsBody, func(r io.Reader) error {
		return decodeBody(r, maxDenialsBody, &body)
	}); err != nil {
		return nil, err
	}
	return &body, nil
}

// sidecarPod finds the running pod with the sidecar's IP: in the
// namespace its SPIFFE ID names (spiffe://td/ns/NS/sa/SA), preferring
// pods of its service account; anywhere if the ID names none.
func (k *kubeTargets) sidecarPod(ctx context.Context, id, ip string) (*corev1.Pod, error) {
	ns, sa := "", ""
	if parts := strings.Split(idPath(id), "/"); len(parts) == 4 && parts[0] == "ns" && parts[2] == "sa" {
		ns, sa = parts[1], parts[3]
	}
	key := ns + "/" + ip
	k.mu.Lock()
	pods, ok := k.pods[key]
	k.mu.Unlock()
	if !ok {
		list, err := k.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("status.podIP", ip).String()})
		if err != nil {
			where := "namespace " + ns
			if ns == "" {
				where = "any namespace"
			}
			return nil, kubeError("find the pod with IP "+ip+" in "+where, err)
		}
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
				pods = append(pods, p)
			}
		}
		other := func(p corev1.Pod) int { // 0 for the sidecar's service account
			if p.Spec.ServiceAccountName == sa {
				return 0
			}
			return 1
		}
		slices.SortFunc(pods, func(a, b corev1.Pod) int {
			return cmp.Or(cmp.Compare(other(a), other(b)), strings.Compare(a.Name, b.Name))
		})
		k.mu.Lock()
		k.pods[key] = pods
		k.mu.Unlock()
	}
	if len(pods) == 0 {
		return nil, fmt.Errorf("no running pod has IP %s (the address the sidecar connected to discovery from)", ip)
	}
	return &pods[0], nil
}
