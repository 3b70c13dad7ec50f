package kubesource

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"

	tetherv1alpha1 "github.com/tether-mesh/tether/api/tether/v1alpha1"
	"github.com/tether-mesh/tether/pkg/discovery"
)

// remoteServicesServed returns nil if the API server serves the
// RemoteService resource. Without its CRD (a chart upgrade does not
// install new CRDs) discovery runs without remote services rather than
// waiting for an informer that cannot sync, and watches for the CRD (see
// awaitRemoteCRD).
func (k *KubeSource) remoteServicesServed(ctx context.Context) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	list, err := k.Client.Discovery().ServerResourcesForGroupVersion(tetherv1alpha1.SchemeGroupVersion.String())
	if err != nil {
		return err
	}
	for _, r := range list.APIResources {
		if r.Name == tetherv1alpha1.RemoteServiceResource {
			return nil
		}
	}
	return fmt.Errorf("%s is not served in %s", tetherv1alpha1.RemoteServiceResource, tetherv1alpha1.SchemeGroupVersion)
}

// awaitRemoteCRD checks every CRDPoll whether the RemoteService resource
// is served, until it is (true) or ctx ends (false).
func (k *KubeSource) awaitRemoteCRD(ctx context.Context) bool {
	every := k.CRDPoll
	if every <= 0 {
		every = DefaultCRDPoll
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
		if k.remoteServicesServed(ctx) == nil {
			return true
		}
	}
}

// remoteServices adds the RemoteService objects to st. One that does not
// decode or validate, or is named like a Kubernetes Service of its
// namespace (a mesh service or not: the Service keeps its name), is left
// out and listed in st.Refused with the reason.
func (b *kubeBuilder) remoteServices(st *discovery.State, svcs []*corev1.Service) error {
	if b.remotes == nil {
		return nil
	}
	objs, err := b.remotes.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list remoteservices: %w", err)
	}
	names := make(map[discovery.ServiceKey]bool, len(svcs))
	for _, s := range svcs {
		names[discovery.ServiceKey{Namespace: s.Namespace, Name: s.Name}] = true
	}
	b.remoteGens = make(map[discovery.ServiceKey]int64, len(objs))
	for _, obj := range objs {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		key := discovery.ServiceKey{Namespace: u.GetNamespace(), Name: u.GetName()}
		b.remoteGens[key] = u.GetGeneration()
		var o tetherv1alpha1.RemoteService
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &o); err != nil {
			st.Refused = append(st.Refused, discovery.Refusal{Key: key, Cause: tetherv1alpha1.RemoteServiceReasonInvalid, Reason: "does not decode: " + err.Error()})
			continue
		}
		// Only the spec is read: the status is discovery's own output, and
		// whoever may write it could fake an acceptance.
		o.Status = tetherv1alpha1.RemoteServiceStatus{}
		rs, errs := remoteService(b.td, &o)
		switch {
		case len(errs) > 0:
			st.Refused = append(st.Refused, discovery.Refusal{Key: key, Cause: tetherv1alpha1.RemoteServiceReasonInvalid, Reason: strings.Join(errs, "; ")})
		case names[key]:
			st.Refused = append(st.Refused, discovery.Refusal{Key: key, Cause: tetherv1alpha1.RemoteServiceReasonNameConflict, Reason: fmt.Sprintf(
				"a Kubernetes Service %s has the name; the Service keeps it (rename the RemoteService)", key)})
		default:
			st.RemoteServices = append(st.RemoteServices, rs)
		}
	}
	slices.SortFunc(st.RemoteServices, func(a, b discovery.RemoteService) int {
		return cmp.Or(strings.Compare(a.Key.Namespace, b.Key.Namespace), strings.Compare(a.Key.Name, b.Key.Name))
	})
	return nil
}

// remoteHandler handles the RemoteService informer's events: a change of
// an object's spec (or its arrival or deletion) rebuilds the State
// (rebuild); a change of its status alone does not, and only wakes the
// status writer (recheck), which puts back a status it did not write.
func remoteHandler(rebuild, recheck func()) cache.ResourceEventHandlerFuncs {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { rebuild() },
		DeleteFunc: func(any) { rebuild() },
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*unstructured.Unstructured)
			n, ok2 := newObj.(*unstructured.Unstructured)
			if !ok1 || !ok2 || !equality.Semantic.DeepEqual(o.Object["spec"], n.Object["spec"]) || o.GetGeneration() != n.GetGeneration() {
				rebuild()
			}
			recheck()
		},
	}
}

// remoteService maps a RemoteService object for a mesh of trust domain
// td, returning every problem (as discovery.ValidateRemoteService).
func remoteService(td spiffeid.TrustDomain, o *tetherv1alpha1.RemoteService) (discovery.RemoteService, []string) {
	rs := discovery.RemoteService{Key: discovery.ServiceKey{Namespace: o.Namespace, Name: o.Name}}
	var errs []string
	if rs.TrustDomain, _ = spiffeid.TrustDomainFromString(o.Spec.TrustDomain); rs.TrustDomain.IsZero() && o.Spec.TrustDomain != "" {
		errs = append(errs, fmt.Sprintf("trustDomain %q is not a trust domain name", o.Spec.TrustDomain))
	}
	for i, a := range o.Spec.Addresses {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			errs = append(errs, fmt.Sprintf("addresses[%d]: %q is not an IP address", i, a))
		}
		rs.Addresses = append(rs.Addresses, ip)
	}
	for i, p := range o.Spec.Ports {
		if p.Port < 1 || p.Port > 65535 || p.TargetPort < 0 || p.TargetPort > 65535 {
			errs = append(errs, fmt.Sprintf("ports[%d]: port or targetPort outside 1-65535", i))
			continue
		}
		rs.Ports = append(rs.Ports, discovery.Port{Name: p.Name, Port: uint16(p.Port), TargetPort: uint16(p.TargetPort), AppProtocol: p.AppProtocol})
	}
	for i, e := range o.Spec.Endpoints {
		var ep discovery.RemoteEndpoint
		var err error
		if ep.Addr, err = netip.ParseAddr(e.Address); err != nil {
			errs = append(errs, fmt.Sprintf("endpoints[%d]: address %q is not an IP address", i, e.Address))
		}
		if e.Port < 1 || e.Port > 65535 {
			errs = append(errs, fmt.Sprintf("endpoints[%d]: port %d is outside 1-65535", i, e.Port))
		} else {
			ep.Port = uint16(e.Port)
		}
		if e.Identity != "" {
			if ep.ID, err = spiffeid.FromString(e.Identity); err != nil {
				errs = append(errs, fmt.Sprintf("endpoints[%d]: identity %q: %v", i, e.Identity, err))
			}
		}
		rs.Endpoints = append(rs.Endpoints, ep)
	}
	if len(errs) > 0 {
		return rs, errs
	}
	return rs, discovery.ValidateRemoteService(td, &rs)
}
