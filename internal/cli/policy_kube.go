package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	tetherv1alpha1 "github.com/tether-mesh/tether/api/tether/v1alpha1"
	"github.com/tether-mesh/tether/pkg/discovery"
	"github.com/tether-mesh/tether/pkg/discovery/kubesource"
	"github.com/tether-mesh/tether/pkg/discovery/policy"
)

// kubeResources are what kubesource.KubeSource lists and watches, in the
// order the policy commands probe them.
var kubeResources = []schema.GroupVersionResource{
	{Version: "v1", Resource: "namespaces"},
	{Version: "v1", Resource: "services"},
	{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"},
	{Version: "v1", Resource: "pods"},
	policy.SchemeGroupVersionResource,
	tetherv1alpha1.RemoteServiceGVR,
}

// kubeRBACHint says what the policy commands need from RBAC.
const kubeRBACHint = "the policy commands need list and watch on namespaces, services, pods, " +
	"endpointslices.discovery.k8s.io, accesspolicies.tether.dev and remoteservices.tether.dev in every namespace"

// loadKube reads the mesh from Kubernetes: it runs a kubesource.KubeSource
// until its first snapshot, within p.timeout.
func (p *policySource) loadKube(ctx context.Context, stderr io.Writer) (*meshView, error) {
	// Warnings from the API server and from the source come from several
	// goroutines.
	stderr = &lockedWriter{w: stderr}
	cfg, where, err := p.restConfig(stderr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if err := probeKube(ctx, dyn); err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}

	td, def := p.settings(spiffeid.TrustDomain{}, 0)
	reg, err := discovery.NewRegistry(td, def, p.modeOption(""))
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{
		Level: slog.LevelWarn,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	snap, err := firstSnapshot(ctx, &kubesource.KubeSource{Client: client, Dynamic: dyn, Logger: log}, reg)
	if err != nil {
		return nil, fmt.Errorf("%s: no answer within --timeout %v: %w", where, p.timeout, err)
	}
	view := &meshView{snap: snap, where: where, kube: true, listPods: func(ctx context.Context, name string) ([]corev1.Pod, error) {
		ctx, cancel := context.WithTimeout(ctx, p.timeout)
		defer cancel()
		l, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
		if err != nil {
			return nil, fmt.Errorf("%s: list pods named %s: %w", where, name, err)
		}
		return l.Items, nil
	}}
	if p.defaultPolicy == "" {
		view.assumedDefault = "mesh default " + reg.MeshDefault().String()
	}
	return view, nil
}

// restConfig resolves the client configuration as kubectl does: --kubeconfig,
// else $KUBECONFIG, else ~/.kube/config, else in-cluster; --context picks a
// context. It also returns a description for messages.
func (p *policySource) restConfig(stderr io.Writer) (*rest.Config, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = p.kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: p.kubeContext})
	cfg, err := cc.ClientConfig()
	switch {
	case err != nil && p.kubeconfig == "" && clientcmd.IsEmptyConfig(err):
		return nil, "", usagef("no mesh to read: give --mesh FILE for a mesh.yaml, or --kubeconfig PATH for a cluster "+
			"(there is no kubeconfig at %s, and this is not a pod of a cluster)", strings.Join(rules.Precedence, ", "))
	case err != nil:
		return nil, "", fmt.Errorf("kubeconfig: %w", err)
	}
	where := "Kubernetes (in-cluster) at " + cfg.Host
	if raw, err := cc.RawConfig(); err == nil {
		if name := cmp.Or(p.kubeContext, raw.CurrentContext); name != "" {
			where = fmt.Sprintf("Kubernetes context %q at %s", name, cfg.Host)
		}
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "tether-policy"
	// Starting the informers lists and watches five resources at once.
	cfg.QPS, cfg.Burst = 50, 100
	cfg.WarningHandler = rest.NewWarningWriter(stderr, rest.WarningWriterOptions{Deduplicate: true})
	return cfg, where, nil
}

// probeKube lists one object of each resource the source needs, so that an
// unreachable server, missing credentials or RBAC rules, or a missing CRD
// are reported at once and by name, rather than as informers that never
// sync.
func probeKube(ctx context.Context, dyn dynamic.Interface) error {
	for _, gvr := range kubeResources {
		_, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1})
		var status apierrors.APIStatus
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return fmt.Errorf("the API server did not answer within --timeout: %w", err)
		case gvr == policy.SchemeGroupVersionResource && apierrors.IsNotFound(err):
			return fmt.Errorf("the AccessPolicy CRD (%s.%s) is not installed; install it with "+
				"kubectl apply -f manifests/crds/accesspolicies.tether.dev.yaml", policy.Resource, policy.GroupName)
		case gvr == tetherv1alpha1.RemoteServiceGVR && apierrors.IsNotFound(err):
			// A cluster installed before remote services existed: the
			// source reads the mesh without them and says so.
		case apierrors.IsForbidden(err):
			return fmt.Errorf("RBAC forbids reading the mesh: %s; %s", apiMessage(err), kubeRBACHint)
		case apierrors.IsUnauthorized(err):
			return fmt.Errorf("the API server rejected the credentials: %w", err)
		case !errors.As(err, &status):
			return fmt.Errorf("cannot reach the API server: %w", err)
		default:
			return fmt.Errorf("list %s: %w", gvr.GroupResource(), err)
		}
	}
	return nil
}

// apiMessage returns an API error's message, which names the user, the verb
// and the resource.
func apiMessage(err error) string {
	var status apierrors.APIStatus
	if errors.As(err, &status) && status.Status().Message != "" {
		return status.Status().Message
	}
	return err.Error()
}

// firstSnapshot runs src until it installs its first snapshot in reg (or
// ctx ends), then stops it and returns that snapshot.
func firstSnapshot(ctx context.Context, src *kubesource.KubeSource, reg *discovery.Registry) (*discovery.Snapshot, error) {
	first := reg.Changed()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, reg) }()
	var err error
	select {
	case <-first:
		cancel()
		<-done
		return reg.Snapshot(), nil
	case err = <-done:
	}
	if snap := reg.Snapshot(); snap.Version() > 0 {
		return snap, nil
	}
	if err == nil {
		err = errors.New("the objects read do not make a valid mesh (see the warnings above)")
	}
	return nil, err
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
