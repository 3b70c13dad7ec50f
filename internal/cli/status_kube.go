package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
)

// Pod labels and the port of the control plane's admin servers
// (manifests/base).
const (
	caAppLabel        = "tether-ca"
	discoveryAppLabel = "tether-discovery"
	appLabelKey       = "app.kubernetes.io/name"
	adminPortName     = "admin"
	defaultAdminPort  = 15014
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

// controlPods lists the running pods of one control plane component. An
// error says why there is none to ask.
func (k *kubeTargets) controlPods(ctx context.Context, app string) ([]corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, k.opts.timeout)
	defer cancel()
	sel := appLabelKey + "=" + app
	list, err := k.client.CoreV1().Pods(k.opts.namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, kubeError(fmt.Sprintf("list pods %s in namespace %s", sel, k.opts.namespace), err)
	}
	if len(list.Items) == 0 {
		return nil, &noPodsError{fmt.Sprintf("no pods labelled %s in namespace %s (is Tether installed? see docs/install.md; --namespace names the control plane's namespace)", sel, k.opts.namespace)}
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
		return nil, &noPodsError{fmt.Sprintf("no running pod labelled %s in namespace %s: %s", sel, k.opts.namespace, strings.Join(idle, ", "))}
	}
	slices.SortFunc(running, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	return running, nil
}

// noPodsError is controlPods' error when the API server answered but no
// pod is running: other components may still have pods.
type noPodsError struct{ msg string }

func (e *noPodsError) Error() string { return e.msg }

// adminPort is the pod's container port named "admin", else 15014.
func adminPort(p *corev1.Pod) string {
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == adminPortName {
				return strconv.Itoa(int(port.ContainerPort))
			}
		}
	}
	return strconv.Itoa(defaultAdminPort)
}

// proxyGet fetches path on the pod's port through the API server.
func (k *kubeTargets) proxyGet(ctx context.Context, p *corev1.Pod, port, path string, limit int64, decode func(io.Reader) error) error {
	rc, err := k.client.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, port, path, nil).Stream(ctx)
	if err != nil {
		return kubeError(fmt.Sprintf("GET %s on pod %s/%s port %s through the API server's pod proxy", path, p.Namespace, p.Name, port), err)
	}
	defer rc.Close()
	return decode(io.LimitReader(rc, limit+1))
}

// kubeError words an API error with what was tried and what may help.
func kubeError(what string, err error) error {
	var st apierrors.APIStatus
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%s: RBAC forbids it: %s (tether status and tether version need list on pods and get on pods/proxy)", what, apiMessage(err))
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%s: the API server rejected the credentials: %w", what, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: no answer within --timeout", what)
	case errors.As(err, &st):
		return fmt.Errorf("%s: %s", what, apiMessage(err))
	default:
		return fmt.Errorf("%s: cannot reach the API server: %w", what, err)
	}
}

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

// caFromMetrics reads the CA's state from its Prometheus metrics: the
// bundle sequence, and the root and intermediate expiry of every
// generation not retired.
func caFromMetrics(r io.Reader) (*caStatus, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("read /metrics: %w", err)
	}
	c := &caStatus{Generations: []generationStatus{}, Note: "from /metrics: retired generations, root fingerprints and the rotation schedule are shown by `tether ca status` in the CA's pod"}
	seq, ok := mfs["tether_ca_bundle_sequence"]
	if !ok || len(seq.GetMetric()) == 0 {
		return nil, errors.New("/metrics has no tether_ca_bundle_sequence: is this tether-ca?")
	}
	c.BundleSequence = uint64(seq.GetMetric()[0].GetGauge().GetValue())
	if o := mfs["tether_ca_intermediate_renewal_overdue"].GetMetric(); len(o) > 0 && o[0].GetGauge().GetValue() > 0 {
		c.IntermediateRenewalOverdue = true
	}
	gens := map[uint64]*generationStatus{}
	for name, set := range map[string]func(*generationStatus, float64){
		"tether_ca_root_expiry_timestamp_seconds":         func(g *generationStatus, v float64) { g.RootExpires = unix(int64(v)) },
		"tether_ca_intermediate_expiry_timestamp_seconds": func(g *generationStatus, v float64) { g.IntermediateExpires = unix(int64(v)) },
	} {
		for _, m := range mfs[name].GetMetric() {
			var id uint64
			var state string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "generation":
					id, _ = strconv.ParseUint(l.GetValue(), 10, 64)
				case "state":
					state = l.GetValue()
				}
			}
			g, ok := gens[id]
			if !ok {
				g = &generationStatus{ID: id, State: state}
				gens[id] = g
			}
			set(g, m.GetGauge().GetValue())
		}
	}
	for _, g := range gens {
		c.Generations = append(c.Generations, *g)
	}
	slices.SortFunc(c.Generations, func(a, b generationStatus) int { return cmp.Compare(a.ID, b.ID) })
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
