package kube

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corev1informers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/tether-mesh/tether/pkg/identity"
)

// Keys of the trust bundle ConfigMap.
const (
	BundlePEMKey  = "bundle.pem"
	BundleJWKSKey = "bundle.jwks"
	// FederatedBundlesKey holds the foreign trust domains' bundles, when
	// the CA federates: a JSON object from trust domain name to its SPIFFE
	// bundle document.
	FederatedBundlesKey = "federated-bundles.json"
)

// Publisher timing defaults.
const (
	DefaultBundleResync  = time.Minute
	leaderPollInterval   = time.Second
	publishRetryInterval = time.Second
)

// BundleSource hands out the current trust bundle version; *identity.CA is
// one. The version's Changed channel is closed when a newer one exists.
type BundleSource interface {
	Bundle() *identity.BundleVersion
}

// BundlePublisherConfig configures a BundlePublisher. Zero values take the
// defaults.
type BundlePublisherConfig struct {
	// Client reaches Namespaces and ConfigMaps. The CA's ServiceAccount
	// needs list and watch on namespaces, and get, create and update on
	// configmaps in every namespace.
	Client  kubernetes.Interface
	Bundles BundleSource
	// Federated, if set, adds the foreign bundles under FederatedBundlesKey.
	Federated *identity.FederatedBundles
	// IsLeader says whether this replica writes; nil means always.
	IsLeader func() bool
	// Name of the ConfigMap (default tether-trust-bundle).
	Name string
	// Selector picks the namespaces to publish to (default
	// tether.dev/inject in (enabled,required)).
	Selector string
	// Namespaces are published to whatever their labels: the CA's own
	// namespace, where tether-discovery and tether-injector bootstrap trust.
	Namespaces []string
	// ResyncPeriod is how often every ConfigMap is checked again, which
	// repairs edited or deleted ones (default 1m).
	ResyncPeriod time.Duration
	Logger       *slog.Logger
}

// BundlePublisher keeps a ConfigMap holding the trust bundle (keys
// bundle.pem, PEM roots, and bundle.jwks, the SPIFFE bundle format) in every
// namespace with injection enabled, so that sidecars can bootstrap trust.
// It writes when the bundle changes, when a namespace gets the label, and
// on a periodic resync, and only when the content differs. A namespace that
// loses the label keeps its ConfigMap: Pods may still mount it.
type BundlePublisher struct {
	cfg      BundlePublisherConfig
	selector labels.Selector
	log      *slog.Logger

	mu    sync.Mutex
	dirty map[string]bool // namespaces to check
	wake  chan struct{}
}

// NewBundlePublisher checks cfg and returns the publisher.
func NewBundlePublisher(cfg BundlePublisherConfig) (*BundlePublisher, error) {
	if cfg.Client == nil {
		return nil, errors.New("bundle publisher: no Kubernetes client")
	}
	if cfg.Bundles == nil {
		return nil, errors.New("bundle publisher: no bundle source")
	}
	if cfg.Name == "" {
		cfg.Name = BundleConfigMapName
	}
	if cfg.Selector == "" {
		// Both injecting webhooks mount the bundle into every pod they
		// inject: a namespace without it would hold pods that never start.
		cfg.Selector = InjectLabel + " in (" + InjectEnabled + "," + InjectRequired + ")"
	}
	sel, err := labels.Parse(cfg.Selector)
	if err != nil {
		return nil, fmt.Errorf("bundle publisher: namespace selector %q: %w", cfg.Selector, err)
	}
	if cfg.ResyncPeriod <= 0 {
		cfg.ResyncPeriod = DefaultBundleResync
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &BundlePublisher{
		cfg:      cfg,
		selector: sel,
		log:      cfg.Logger.With(slog.String("configmap", cfg.Name)),
		dirty:    map[string]bool{},
		wake:     make(chan struct{}, 1),
	}, nil
}

// Run publishes until ctx ends, and returns nil then. It returns an error
// only when it may not list namespaces or has no bundle to publish; other
// API errors are logged and retried.
func (p *BundlePublisher) Run(ctx context.Context) error {
	// The informer retries forever and logs through klog only; a missing
	// permission is better reported once, here.
	_, err := p.cfg.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: p.selector.String(), Limit: 1})
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("bundle publisher: list namespaces: %w (grant the CA's ServiceAccount list and watch on namespaces)", err)
	}
	if err != nil && ctx.Err() == nil {
		p.log.Warn("cannot list namespaces yet; will keep trying", slog.Any("error", err))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	inf := corev1informers.NewFilteredNamespaceInformer(p.cfg.Client, 0, cache.Indexers{}, func(o *metav1.ListOptions) {
		o.LabelSelector = p.selector.String()
	})
	onNamespace := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok {
			p.enqueue(ns.Name)
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    onNamespace,
		UpdateFunc: func(_, obj any) { onNamespace(obj) },
	}); err != nil {
		return fmt.Errorf("bundle publisher: %w", err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { inf.RunWithContext(ctx) })
	defer func() { cancel(); wg.Wait() }() // the informer stops before Run returns
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil // ctx ended
	}
	all := func() {
		for _, name := range inf.GetStore().ListKeys() {
			p.enqueue(name)
		}
		for _, name := range p.cfg.Namespaces {
			p.enqueue(name)
		}
	}
	all()

	bv := p.cfg.Bundles.Bundle()
	if bv == nil {
		return errors.New("bundle publisher: the bundle source has no bundle")
	}
	fedChanged := p.federatedChanged()
	content, err := p.content(bv)
	if err != nil {
		return err
	}
	resync := time.NewTicker(p.cfg.ResyncPeriod)
	defer resync.Stop()
	leaderPoll := time.NewTicker(leaderPollInterval)
	defer leaderPoll.Stop()
	var retry <-chan time.Time
	wasLeader := p.leader()
	for {
		if p.leader() && retry == nil {
			if failed := p.publish(ctx, inf.GetStore(), bv.Sequence, content); failed > 0 {
				retry = time.After(publishRetryInterval)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-bv.Changed:
			bv = p.cfg.Bundles.Bundle()
			if content, err = p.content(bv); err != nil {
				return err
			}
			p.log.Info("trust bundle changed; publishing it", slog.Uint64("bundle_sequence", bv.Sequence))
			all()
		case <-fedChanged:
			fedChanged = p.federatedChanged()
			if content, err = p.content(bv); err != nil {
				return err
			}
			p.log.Info("federated bundles changed; publishing them")
			all()
		case <-p.wake:
		case <-resync.C:
			all()
		case <-retry:
			retry = nil
		case <-leaderPoll.C:
			if now := p.leader(); now != wasLeader {
				wasLeader = now
				all()
			}
		}
	}
}

func (p *BundlePublisher) leader() bool {
	return p.cfg.IsLeader == nil || p.cfg.IsLeader()
}

func (p *BundlePublisher) enqueue(ns string) {
	p.mu.Lock()
	p.dirty[ns] = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// publish checks every dirty namespace still selected, and returns how
// many failed (they stay dirty).
func (p *BundlePublisher) publish(ctx context.Context, namespaces cache.Store, seq uint64, content map[string]string) (failed int) {
	p.mu.Lock()
	todo := slices.Sorted(maps.Keys(p.dirty))
	clear(p.dirty)
	p.mu.Unlock()
	written := 0
	for _, name := range todo {
		obj, ok, _ := namespaces.GetByKey(name)
		ns, isNS := obj.(*corev1.Namespace)
		selected := ok && isNS && p.selector.Matches(labels.Set(ns.Labels)) && ns.Status.Phase != corev1.NamespaceTerminating
		if !selected && !slices.Contains(p.cfg.Namespaces, name) {
			continue
		}
		wrote, err := p.reconcile(ctx, name, content)
		if err != nil {
			if ctx.Err() != nil {
				return 0
			}
			failed++
			p.log.Warn("cannot publish the trust bundle; will retry", slog.String("namespace", name), slog.Any("error", err))
			p.mu.Lock()
			p.dirty[name] = true
			p.mu.Unlock()
			continue
		}
		if wrote {
			written++
			p.log.Debug("published trust bundle", slog.String("namespace", name), slog.Uint64("bundle_sequence", seq))
		}
	}
	if written > 0 {
		p.log.Info("published trust bundle", slog.Int("namespaces", written), slog.Uint64("bundle_sequence", seq))
	}
	return failed
}

// reconcile makes the ConfigMap in ns hold content, and reports whether it
// had to write.
func (p *BundlePublisher) reconcile(ctx context.Context, ns string, content map[string]string) (bool, error) {
	cms := p.cfg.Client.CoreV1().ConfigMaps(ns)
	cur, err := cms.Get(ctx, p.cfg.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: p.cfg.Name, Labels: map[string]string{PartOfLabel: PartOfValue}},
			Data:       maps.Clone(content),
		}, metav1.CreateOptions{})
		return err == nil, p.apiError("create", ns, err)
	}
	if err != nil {
		return false, p.apiError("read", ns, err)
	}
	same := cur.Labels[PartOfLabel] == PartOfValue
	for k, v := range content {
		if cur.Data[k] != v {
			same = false
		}
	}
	if same {
		return false, nil
	}
	upd := cur.DeepCopy()
	if upd.Labels == nil {
		upd.Labels = map[string]string{}
	}
	upd.Labels[PartOfLabel] = PartOfValue
	if upd.Data == nil {
		upd.Data = map[string]string{}
	}
	maps.Copy(upd.Data, content)
	_, err = cms.Update(ctx, upd, metav1.UpdateOptions{})
	return err == nil, p.apiError("update", ns, err)
}

func (p *BundlePublisher) apiError(verb, ns string, err error) error {
	if err == nil {
		return nil
	}
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("%s ConfigMap %s/%s: %w (grant the CA's ServiceAccount get, create and update on configmaps)", verb, ns, p.cfg.Name, err)
	}
	return fmt.Errorf("%s ConfigMap %s/%s: %w", verb, ns, p.cfg.Name, err)
}

// bundleContent renders a bundle version as the ConfigMap's data.
func bundleContent(bv *identity.BundleVersion) (map[string]string, error) {
	roots := bv.Bundle.X509Authorities()
	var pemData []byte
	for _, c := range roots {
		pemData = append(pemData, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	sb := spiffebundle.FromX509Authorities(bv.Bundle.TrustDomain(), roots)
	sb.SetSequenceNumber(bv.Sequence)
	jwks, err := sb.Marshal()
	if err != nil {
		return nil, fmt.Errorf("bundle publisher: marshal SPIFFE bundle %d: %w", bv.Sequence, err)
	}
	return map[string]string{BundlePEMKey: string(pemData), BundleJWKSKey: string(jwks)}, nil
}

// federatedChanged is closed at the next change of the federated bundles
// (nil, never ready, without them).
func (p *BundlePublisher) federatedChanged() <-chan struct{} {
	if p.cfg.Federated == nil {
		return nil
	}
	_, ch := p.cfg.Federated.Snapshot()
	return ch
}

// content is the ConfigMap's data: the bundle and, when federating, the
// foreign bundles.
func (p *BundlePublisher) content(bv *identity.BundleVersion) (map[string]string, error) {
	c, err := bundleContent(bv)
	if err != nil || p.cfg.Federated == nil {
		return c, err
	}
	bundles, _ := p.cfg.Federated.Snapshot()
	docs := make(map[string]json.RawMessage, len(bundles))
	for _, b := range bundles {
		doc, err := b.Marshal()
		if err != nil {
			return nil, fmt.Errorf("federated bundle of %s: %w", b.TrustDomain(), err)
		}
		docs[b.TrustDomain().Name()] = doc
	}
	data, err := json.Marshal(docs)
	if err != nil {
		return nil, err
	}
	c[FederatedBundlesKey] = string(data)
	return c, nil
}
