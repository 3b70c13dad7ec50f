// Package kubesource feeds a discovery.Registry from the Kubernetes API:
// the Services whose endpoints run Tether's sidecar, their endpoints and
// identities, the namespaces' default policies and the AccessPolicy objects.
package kubesource

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	tetherv1alpha1 "github.com/tether-mesh/tether/api/tether/v1alpha1"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
	"github.com/tether-mesh/tether/pkg/discovery/wire"
	"github.com/tether-mesh/tether/pkg/inject"
)

// DefaultPolicyAnnotation is the namespace annotation that overrides the
// mesh default policy for the services of that namespace.
const DefaultPolicyAnnotation = "tether.dev/default-policy"

// DefaultCRDPoll is KubeSource.CRDPoll when it is zero.
const DefaultCRDPoll = 10 * time.Second

// DefaultKubeDebounce is KubeSource.Debounce when it is zero.
const DefaultKubeDebounce = 100 * time.Millisecond

// KubeSource feeds a Registry from a Kubernetes API server: Services,
// discovery.k8s.io/v1 EndpointSlices, the Pods behind their endpoints (for
// their sidecar and service account), Namespaces (for
// DefaultPolicyAnnotation) and AccessPolicy objects. It watches them with
// informers and, after every burst of changes, reports the whole State.
//
// Mapping:
//   - a Pod is in the mesh when it carries Tether's sidecar: a container
//     named inject.SidecarContainerName, as the injector adds it (a native
//     sidecar in initContainers) or among the containers.
//   - a mesh endpoint is an endpoint of the Service's EndpointSlices (label
//     kubernetes.io/service-name) with an address and a targetRef to a Pod
//     in the mesh. The Pod's spec.serviceAccountName gives the identity.
//     Only ready ones are kept (a nil ready condition counts as ready). An
//     endpoint whose Pod is not in the cache yet is skipped until it is.
//   - a Service is a Service of the registry only if at least one of its
//     endpoints, ready or not, is a mesh endpoint. Other Services (the API
//     server's own "kubernetes", whose endpoints have no targetRef; those of
//     Pods without the sidecar) are left out entirely, so that sidecars pass
//     traffic to them through unchanged, as to any destination outside the
//     mesh. A Service with endpoints both with and without the sidecar (a
//     rollout that injects it in progress) keeps only the mesh endpoints,
//     and says so in a Debug log: the others cannot terminate mTLS.
//   - ClusterIP "None" (headless) gives no ClusterIPs. Only TCP ports are
//     kept (the mesh proxies TCP; a Service may list port 53 both as TCP
//     and UDP).
//   - a named targetPort is resolved from the EndpointSlice port of the same
//     name (the first slice that has it); unresolved, it stays 0 (= Port).
//
// One bad object does not freeze the mesh: a namespace whose annotation is
// not a known default keeps the mesh default, and an AccessPolicy that does
// not decode or validate is left out; both are logged at Warn. Should the
// Registry still reject a State, the previous snapshot stays and the
// rejection is logged at Warn.
type KubeSource struct {
	// Client reads Services, EndpointSlices, Pods and Namespaces. Required.
	Client kubernetes.Interface
	// Dynamic reads AccessPolicy objects. Required; the CRD must be
	// installed, or Run waits for the policy informer until ctx ends.
	Dynamic dynamic.Interface
	// Resync is the informers' resync period; 0 disables resyncs.
	Resync time.Duration
	// Debounce is how long Run gathers changes after the first one before
	// it builds a State; 0 means DefaultKubeDebounce. Changes keep reaching
	// the registry even while events arrive without pause.
	Debounce time.Duration
	// CRDPoll is how often Run checks whether the RemoteService CRD, not
	// installed when it started, is served now (it then watches
	// RemoteServices too); 0 means DefaultCRDPoll.
	CRDPoll time.Duration
	// StatusRewrite is the least time between two writes of the same
	// status to one RemoteService by this replica, when something else
	// (another replica, a user) changed it in between; 0 means
	// DefaultStatusRewrite. A change of discovery's verdict is written at
	// once.
	StatusRewrite time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Rejected, if set, is called with the error each time Run cannot build
	// a State from the caches or the Registry rejects it (the previous
	// snapshot stays). Objects left out one by one are not reported. It
	// runs on Run's goroutine and must not block.
	Rejected func(err error)
}

// ErrNotSynced is wrapped by the error Run returns when ctx ends before the
// informer caches have synced.
var ErrNotSynced = errors.New("informer caches did not sync")

// Run watches the API server and updates reg until ctx ends. It returns
// an error if the caches do not sync before ctx ends (naming the resources
// that did not), and nil when ctx ends after that. All goroutines it
// starts have stopped when it returns.
func (k *KubeSource) Run(ctx context.Context, reg *discovery.Registry) error {
	if k.Client == nil || k.Dynamic == nil {
		return errors.New("kube source: Client and Dynamic are required")
	}
	if reg == nil {
		return errors.New("kube source: registry is required")
	}
	log := k.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With(slog.String("source", "kubernetes"))
	for {
		err := k.run(ctx, reg, log)
		if !errors.Is(err, errRemoteCRD) {
			return err
		}
		log.Info("the RemoteService CRD is installed now; watching remote services")
	}
}

// errRemoteCRD is what run returns when the RemoteService CRD, missing
// when it started, is served: Run starts the informers again with it.
var errRemoteCRD = errors.New("the RemoteService CRD appeared")

// run is Run with one set of informers.
func (k *KubeSource) run(ctx context.Context, reg *discovery.Registry, log *slog.Logger) error {
	debounce := k.Debounce
	if debounce <= 0 {
		debounce = DefaultKubeDebounce
	}
	var wg sync.WaitGroup
	defer wg.Wait()

	factory := informers.NewSharedInformerFactory(k.Client, k.Resync)
	dynFactory := dynamicinformer.NewDynamicSharedInformerFactory(k.Dynamic, k.Resync)
	// Deferred in this order so that the informers are told to stop
	// (cancel) before Shutdown waits for them.
	defer dynFactory.Shutdown()
	defer factory.Shutdown()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	services := factory.Core().V1().Services()
	endpointSlices := factory.Discovery().V1().EndpointSlices()
	pods := factory.Core().V1().Pods()
	namespaces := factory.Core().V1().Namespaces()
	policies := dynFactory.ForResource(policy.SchemeGroupVersionResource)
	var remotes informers.GenericInformer
	var appeared atomic.Bool
	if err := k.remoteServicesServed(ctx); err == nil {
		remotes = dynFactory.ForResource(tetherv1alpha1.RemoteServiceGVR)
	} else {
		log.Warn("the RemoteService CRD is not installed; remote services are not served until it is", slog.Any("error", err))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if k.awaitRemoteCRD(ctx) {
				appeared.Store(true)
				cancel()
			}
		}()
	}
	// ended is what run returns once ctx is done.
	ended := func() error {
		if appeared.Load() {
			return errRemoteCRD
		}
		return nil
	}

	// Keep only what the source reads of a Pod: the cache holds every Pod.
	if err := pods.Informer().SetTransform(trimPod); err != nil {
		return fmt.Errorf("kube source: pod transform: %w", err)
	}

	kick := make(chan struct{}, 1)
	notify := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	named := []struct {
		name string
		inf  cache.SharedIndexInformer
	}{
		{"services", services.Informer()},
		{"endpointslices", endpointSlices.Informer()},
		{"pods", pods.Informer()},
		{"namespaces", namespaces.Informer()},
		{policy.Resource + "." + policy.GroupName, policies.Informer()},
	}
	synced := make([]cache.InformerSynced, 0, len(named)+1)
	for _, n := range named {
		if _, err := n.inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("kube source: watch %s: %w", n.name, err)
		}
		synced = append(synced, n.inf.HasSynced)
	}
	var status *statusWriter
	if remotes != nil {
		status = newStatusWriter(k.Dynamic.Resource(tetherv1alpha1.RemoteServiceGVR), remotes.Lister(), log, k.StatusRewrite)
		named = append(named, struct {
			name string
			inf  cache.SharedIndexInformer
		}{tetherv1alpha1.RemoteServiceResource + "." + policy.GroupName, remotes.Informer()})
		if _, err := remotes.Informer().AddEventHandler(remoteHandler(notify, status.poke)); err != nil {
			return fmt.Errorf("kube source: watch remoteservices: %w", err)
		}
		synced = append(synced, remotes.Informer().HasSynced)
	}

	factory.Start(ctx.Done())
	dynFactory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		if appeared.Load() {
			return errRemoteCRD
		}
		var missing []string
		for _, n := range named {
			if !n.inf.HasSynced() {
				missing = append(missing, n.name)
			}
		}
		return fmt.Errorf("kube source: %w: %s (is the API server reachable, and is the AccessPolicy CRD installed?): %w",
			ErrNotSynced, strings.Join(missing, ", "), ctx.Err())
	}
	log.Info("informer caches synced")

	b := &kubeBuilder{
		log:        log,
		td:         reg.TrustDomain(),
		services:   services.Lister(),
		slices:     endpointSlices.Lister(),
		pods:       pods.Lister(),
		namespaces: namespaces.Lister(),
		policies:   policies.Lister(),
	}
	if remotes != nil {
		b.remotes = remotes.Lister()
		wg.Add(1)
		go func() {
			defer wg.Done()
			status.run(ctx)
		}()
	}
	timer := time.NewTimer(0) // the first State goes out at once
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ended()
		case <-timer.C:
		}
		// Drain the kick so that events seen by this build do not cause
		// another one; later events kick again.
		select {
		case <-kick:
		default:
		}
		st, err := b.build()
		prev := reg.Snapshot()
		if err != nil {
			log.Warn("building state from the API server", slog.Any("error", err))
			k.rejected(err)
		} else if err := reg.Update(st); err != nil {
			log.Warn("registry rejected the state; keeping the previous snapshot", slog.Any("error", err))
			k.rejected(err)
		} else {
			discovery.LogRefusals(log, prev, reg.Snapshot())
			if status != nil {
				status.set(verdicts(reg.Snapshot(), b.remoteGens))
			}
			log.Debug("registry updated", slog.Uint64("version", reg.Snapshot().Version()),
				slog.Int("services", len(st.Services)), slog.Int("services_outside_mesh", b.outside),
				slog.Int("policies", len(st.Policies)))
		}
		select {
		case <-ctx.Done():
			return ended()
		case <-kick:
			timer.Reset(debounce)
		}
	}
}

func (k *KubeSource) rejected(err error) {
	if k.Rejected != nil {
		k.Rejected(err)
	}
}

// trimPod is the Pod informer's transform: it keeps the name, namespace, UID,
// service account and, if the Pod carries the sidecar (inject.Injected),
// an init container with the sidecar's name and nothing else, so that
// inject.Injected still says so of the trimmed Pod. Other objects
// (tombstones) pass unchanged.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	t := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
		},
		Spec: corev1.PodSpec{ServiceAccountName: p.Spec.ServiceAccountName},
	}
	if inject.Injected(p) {
		t.Spec.InitContainers = []corev1.Container{{Name: inject.SidecarContainerName}}
	}
	return t, nil
}

// kubeBuilder turns the informer caches into a State.
type kubeBuilder struct {
	log *slog.Logger
	td  spiffeid.TrustDomain

	services   corev1listers.ServiceLister
	slices     discoverylisters.EndpointSliceLister
	pods       corev1listers.PodLister
	namespaces corev1listers.NamespaceLister
	policies   cache.GenericLister
	remotes    cache.GenericLister // nil: the RemoteService CRD is not installed
	// remoteGens is the generation of each RemoteService object the last
	// build read, for the status its verdict is written to.
	remoteGens map[discovery.ServiceKey]int64

	// outside is the number of Services the last build left out because
	// no endpoint of theirs is in the mesh.
	outside int
}

// build reads the caches into a State, leaving out (and logging) what the
// Registry would reject, so that one bad object cannot block every update.
func (b *kubeBuilder) build() (discovery.State, error) {
	var st discovery.State
	svcs, err := b.services.List(labels.Everything())
	if err != nil {
		return st, fmt.Errorf("list services: %w", err)
	}
	all, err := b.slices.List(labels.Everything())
	if err != nil {
		return st, fmt.Errorf("list endpointslices: %w", err)
	}
	bySvc := make(map[discovery.ServiceKey][]*discoveryv1.EndpointSlice)
	for _, es := range all {
		name := es.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			continue
		}
		k := discovery.ServiceKey{Namespace: es.Namespace, Name: name}
		bySvc[k] = append(bySvc[k], es)
	}
	b.outside = 0
	for _, svc := range svcs {
		k := discovery.ServiceKey{Namespace: svc.Namespace, Name: svc.Name}
		eps := bySvc[k]
		// Stable order, so that "the first slice" means the same one every time.
		slices.SortFunc(eps, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
		if s, ok := b.service(svc, eps); ok {
			st.Services = append(st.Services, s)
		} else {
			b.outside++
		}
	}

	nss, err := b.namespaces.List(labels.Everything())
	if err != nil {
		return st, fmt.Errorf("list namespaces: %w", err)
	}
	for _, ns := range nss {
		n := discovery.Namespace{Name: ns.Name}
		if v, ok := ns.Annotations[DefaultPolicyAnnotation]; ok && v != "" {
			if _, err := wire.ParseDefault(v); err != nil {
				b.log.Warn("ignoring namespace default policy; the mesh default applies",
					slog.String("namespace", ns.Name), slog.String("annotation", DefaultPolicyAnnotation), slog.Any("error", err))
			} else {
				n.DefaultPolicy = v
			}
		}
		if v, ok := ns.Annotations[policy.DefaultModeAnnotation]; ok && v != "" {
			if _, err := policy.ParseDefaultMode(v); err != nil {
				// Enforce is the safe reading: audit would let through
				// what the default denies.
				b.log.Warn("ignoring namespace default policy mode; the default is enforced",
					slog.String("namespace", ns.Name), slog.String("annotation", policy.DefaultModeAnnotation), slog.Any("error", err))
			} else {
				n.DefaultPolicyMode = v
			}
		}
		st.Namespaces = append(st.Namespaces, n)
	}

	objs, err := b.policies.List(labels.Everything())
	if err != nil {
		return st, fmt.Errorf("list accesspolicies: %w", err)
	}
	for _, obj := range objs {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			b.log.Warn("ignoring AccessPolicy of unexpected type", slog.String("type", fmt.Sprintf("%T", obj)))
			continue
		}
		// policy.AccessPolicy is the API type of api/tether/v1alpha1, the
		// type the CRD is generated from: the standard converter decodes it.
		var p policy.AccessPolicy
		err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &p)
		if err == nil {
			err = p.Validate()
		}
		if err != nil {
			// The CRD schema should already have rejected such an object;
			// it can only come from an older or hand-edited CRD.
			b.log.Warn("ignoring invalid AccessPolicy", slog.String("namespace", u.GetNamespace()),
				slog.String("name", u.GetName()), slog.Any("error", err))
			continue
		}
		st.Policies = append(st.Policies, p)
	}
	slices.SortFunc(st.Policies, func(a, b policy.AccessPolicy) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	if err := b.remoteServices(&st, svcs); err != nil {
		return st, err
	}
	return st, nil
}

// service maps a Kubernetes Service and its EndpointSlices. It returns
// false if no endpoint, ready or not, is a Pod in the mesh: the Service is
// not a mesh service.
func (b *kubeBuilder) service(svc *corev1.Service, eps []*discoveryv1.EndpointSlice) (discovery.Service, bool) {
	s := discovery.Service{Key: discovery.ServiceKey{Namespace: svc.Namespace, Name: svc.Name}}
	seen := make(map[netip.Addr]bool)
	meshed, plain := 0, 0
	for _, es := range eps {
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		for _, ep := range es.Endpoints {
			pod, state := b.pod(s.Key, es.Namespace, ep)
			switch state {
			case podUnknown:
				continue
			case podPlain:
				plain++
				continue
			}
			meshed++
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			e, ok := b.endpoint(s.Key, pod)
			if !ok {
				continue
			}
			for _, a := range ep.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil || seen[ip] {
					continue
				}
				seen[ip] = true
				e.Addr = ip
				s.Endpoints = append(s.Endpoints, e)
			}
		}
	}
	if meshed == 0 {
		return s, false
	}
	if plain > 0 {
		b.log.Debug("service has endpoints without the sidecar; only those with it are mesh endpoints",
			slog.String("service", s.Key.String()), slog.Int("with_sidecar", meshed), slog.Int("without_sidecar", plain))
	}
	slices.SortFunc(s.Endpoints, func(a, b discovery.Endpoint) int { return a.Addr.Compare(b.Addr) })

	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, a := range ips {
		if a == "" || a == corev1.ClusterIPNone {
			continue
		}
		ip, err := netip.ParseAddr(a)
		if err != nil {
			b.log.Warn("ignoring unparsable cluster IP", slog.String("service", s.Key.String()), slog.String("ip", a))
			continue
		}
		s.ClusterIPs = append(s.ClusterIPs, ip)
	}
	for _, sp := range svc.Spec.Ports {
		if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
			continue
		}
		p := discovery.Port{Name: sp.Name, Port: uint16(sp.Port)}
		if sp.AppProtocol != nil {
			p.AppProtocol = *sp.AppProtocol
		}
		switch tp := sp.TargetPort; {
		case tp.Type == intstr.Int && tp.IntVal > 0 && tp.IntVal <= 65535:
			p.TargetPort = uint16(tp.IntVal)
		case tp.Type == intstr.String && tp.StrVal != "":
			if n, ok := slicePort(eps, sp.Name); ok {
				p.TargetPort = n
			} else {
				b.log.Debug("named target port not resolved yet", slog.String("service", s.Key.String()),
					slog.String("targetPort", tp.StrVal))
			}
		}
		s.Ports = append(s.Ports, p)
	}
	return s, true
}

// podState is what an endpoint's targetRef leads to.
type podState int

const (
	podUnknown podState = iota // a Pod that is not in the cache (yet)
	podPlain                   // no Pod, or a Pod without the sidecar
	podMeshed                  // a Pod with the sidecar
)

// pod returns the Pod behind ep (in the slice's namespace unless the
// targetRef names another) and whether it is in the mesh.
func (b *kubeBuilder) pod(key discovery.ServiceKey, sliceNS string, ep discoveryv1.Endpoint) (*corev1.Pod, podState) {
	ref := ep.TargetRef
	if ref == nil || ref.Kind != "Pod" || ref.Name == "" {
		return nil, podPlain
	}
	ns := cmp.Or(ref.Namespace, sliceNS)
	pod, err := b.pods.Pods(ns).Get(ref.Name)
	if err != nil {
		b.log.Debug("skipping endpoint whose Pod is not known yet", slog.String("service", key.String()),
			slog.String("pod", ns+"/"+ref.Name), slog.Any("error", err))
		return nil, podUnknown
	}
	if !inject.Injected(pod) {
		return pod, podPlain
	}
	return pod, podMeshed
}

// endpoint returns the Endpoint (without its address) served by pod, a Pod
// in the mesh, or false if its identity cannot be made.
func (b *kubeBuilder) endpoint(key discovery.ServiceKey, pod *corev1.Pod) (discovery.Endpoint, bool) {
	e := discovery.Endpoint{ServiceAccount: cmp.Or(pod.Spec.ServiceAccountName, "default"), Pod: pod.Name}
	if pod.Namespace != key.Namespace {
		// The identity is the Pod's namespace's, not the Service's.
		id, err := wire.WorkloadID(b.td, pod.Namespace, e.ServiceAccount)
		if err != nil {
			b.log.Debug("skipping endpoint", slog.String("service", key.String()), slog.Any("error", err))
			return discovery.Endpoint{}, false
		}
		e.ID = id
	}
	return e, true
}

// slicePort returns the port named name in the first slice that has it.
func slicePort(eps []*discoveryv1.EndpointSlice, name string) (uint16, bool) {
	for _, es := range eps {
		for _, p := range es.Ports {
			if p.Port != nil && *p.Port > 0 && *p.Port <= 65535 && p.Name != nil && *p.Name == name {
				return uint16(*p.Port), true
			}
		}
	}
	return 0, false
}
