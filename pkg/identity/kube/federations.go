package kube

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"

	tetherv1 "github.com/tether-mesh/tether/api/tether/v1alpha1"
	"github.com/tether-mesh/tether/pkg/identity"
)

// FederationWatcherConfig configures a FederationWatcher.
type FederationWatcherConfig struct {
	Client    dynamic.Interface
	Federator *identity.Federator
	// Local is the CA's own trust domain name.
	Local string
	// IsLeader reports whether this replica writes the status; nil: always.
	IsLeader func() bool
	// Interval is how often the objects are listed (default 10s).
	Interval time.Duration
	Logger   *slog.Logger
}

// FederationWatcher feeds the cluster's TrustDomainFederation objects to a
// Federator and writes their status. An object that does not make a valid
// federation is left out (and its status says why); the others apply.
type FederationWatcher struct {
	cfg FederationWatcherConfig
	// refused are the objects left out, by name, with the reason.
	refused map[string]string
}

// NewFederationWatcher returns a watcher; Run runs it.
func NewFederationWatcher(cfg FederationWatcherConfig) *FederationWatcher {
	if cfg.Interval == 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &FederationWatcher{cfg: cfg, refused: map[string]string{}}
}

// Run syncs every Interval until ctx ends. Errors are logged and retried.
func (w *FederationWatcher) Run(ctx context.Context) error {
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		if err := w.Sync(ctx); err != nil && ctx.Err() == nil {
			w.cfg.Logger.Error("reading TrustDomainFederations failed; the federations stay as they were", slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Sync lists the objects once, applies them and, on the leader, writes
// their status.
func (w *FederationWatcher) Sync(ctx context.Context) error {
	res := w.cfg.Client.Resource(tetherv1.TrustDomainFederationGVR)
	list, err := res.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list trustdomainfederations: %w", err)
	}
	local, err := spiffeid.TrustDomainFromString(w.cfg.Local)
	if err != nil {
		return fmt.Errorf("local trust domain: %w", err)
	}
	var domains []identity.FederatedDomain
	byTD := map[string]*tetherv1.TrustDomainFederation{}
	refused := map[string]string{}
	for i := range list.Items {
		var f tetherv1.TrustDomainFederation
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(list.Items[i].Object, &f); err != nil {
			refused[list.Items[i].GetName()] = err.Error()
			continue
		}
		d, err := specOf(f).Domain("")
		if err == nil {
			err = d.Validate(local)
		}
		if err == nil && byTD[f.Spec.TrustDomain] != nil {
			err = fmt.Errorf("trust domain %s is already federated by TrustDomainFederation %s", f.Spec.TrustDomain, byTD[f.Spec.TrustDomain].Name)
		}
		if err != nil {
			refused[f.Name] = err.Error()
			if w.refused[f.Name] != err.Error() {
				w.cfg.Logger.Error("TrustDomainFederation refused", slog.String("name", f.Name), slog.Any("error", err))
			}
			continue
		}
		byTD[f.Spec.TrustDomain] = &f
		domains = append(domains, d)
	}
	w.refused = refused
	if err := w.cfg.Federator.SetDomains(domains); err != nil {
		return err
	}
	if w.cfg.IsLeader != nil && !w.cfg.IsLeader() {
		return nil
	}
	return w.writeStatus(ctx, res, list.Items, byTD)
}

// writeStatus writes each object's refresh status when it changed.
func (w *FederationWatcher) writeStatus(ctx context.Context, res dynamic.NamespaceableResourceInterface, items []unstructured.Unstructured, byTD map[string]*tetherv1.TrustDomainFederation) error {
	status := map[string]identity.ForeignStatus{}
	for _, s := range w.cfg.Federator.Status() {
		status[s.TrustDomain] = s
	}
	for i := range items {
		name := items[i].GetName()
		var want tetherv1.TrustDomainFederationStatus
		if reason, bad := w.refused[name]; bad {
			want.LastError = "not applied: " + reason
		} else {
			td := mustString(items[i].Object, "spec", "trustDomain")
			s, ok := status[td]
			if !ok || byTD[td] == nil || byTD[td].Name != name {
				continue
			}
			want.Sequence, want.LastError = int64(s.Sequence), s.LastError
			if !s.LastRefresh.IsZero() {
				t := metav1.NewTime(s.LastRefresh.Truncate(time.Second))
				want.LastRefresh = &t
			}
		}
		cur, _, _ := unstructured.NestedMap(items[i].Object, "status")
		wantMap, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&want)
		if err != nil {
			return err
		}
		if equalStatus(cur, wantMap) {
			continue
		}
		obj := items[i].DeepCopy()
		obj.Object["status"] = wantMap
		if _, err := res.UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) && !apierrors.IsNotFound(err) {
			return fmt.Errorf("update status of TrustDomainFederation %s: %w", name, err)
		}
	}
	return nil
}

func specOf(f tetherv1.TrustDomainFederation) identity.FederationSpec {
	return identity.FederationSpec{
		TrustDomain: f.Spec.TrustDomain, BundleEndpointURL: f.Spec.BundleEndpointURL, Profile: f.Spec.Profile,
		EndpointSPIFFEID: f.Spec.EndpointSPIFFEID, InitialBundle: f.Spec.InitialBundle, WebRoots: f.Spec.WebRoots,
	}
}

func mustString(obj map[string]any, fields ...string) string {
	s, _, _ := unstructured.NestedString(obj, fields...)
	return s
}

func equalStatus(a, b map[string]any) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}
