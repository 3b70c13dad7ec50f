package kube

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestBundlePublisher runs the publisher against a real API server and
// checks that labelled namespaces, and only they, get the CA's bundle, kept
// current through a rotation, written only when it changed, and only by
// the leader.
func TestBundlePublisher(t *testing.T) {
	env := kubetest.Start(t)
	ctx := testContext(t, 2*time.Minute)
	ca := testutil.NewCA(t, identity.RealClock, nil)

	labelled := map[string]string{InjectLabel: InjectEnabled}
	for name, lbls := range map[string]map[string]string{
		"inj-a":    labelled,
		"inj-req":  {InjectLabel: InjectRequired}, // the webhook injects every pod there too
		"plain":    nil,
		"disabled": {InjectLabel: "disabled"},
		"own":      nil, // the CA's namespace, published to without the label
	} {
		if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	writes := &requestCounter{match: func(r *http.Request) bool {
		return (r.Method == http.MethodPost || r.Method == http.MethodPut) && strings.Contains(r.URL.Path, "/configmaps")
	}}
	var leading atomic.Bool
	pub, err := NewBundlePublisher(BundlePublisherConfig{
		Client:       kubernetes.NewForConfigOrDie(writes.wrap(env.Config)),
		Bundles:      ca,
		IsLeader:     leading.Load,
		ResyncPeriod: time.Second,
		Namespaces:   []string{"own"},
		Logger:       testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := pub.Run(runCtx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	t.Cleanup(func() { stop(); wg.Wait() })

	t.Run("missing RBAC is reported", func(t *testing.T) {
		cfg := env.ServiceAccountConfig(t, "default", "no-rbac")
		pub, err := NewBundlePublisher(BundlePublisherConfig{Client: kubernetes.NewForConfigOrDie(cfg), Bundles: ca})
		if err != nil {
			t.Fatal(err)
		}
		err = pub.Run(ctx)
		if err == nil || !strings.Contains(err.Error(), "list and watch on namespaces") {
			t.Fatalf("Run = %v, want an error naming the missing permission", err)
		}
	})

	cms := func(ns string) (*corev1.ConfigMap, error) {
		return env.Client.CoreV1().ConfigMaps(ns).Get(ctx, BundleConfigMapName, metav1.GetOptions{})
	}
	// published waits until ns holds a ConfigMap with the CA's current roots.
	published := func(t *testing.T, ns string) *corev1.ConfigMap {
		t.Helper()
		var cm *corev1.ConfigMap
		eventually(t, 15*time.Second, "trust bundle in "+ns, func() (err error) {
			if cm, err = cms(ns); err != nil {
				return err
			}
			return checkBundle(cm, ca)
		})
		return cm
	}

	t.Run("only the leader writes", func(t *testing.T) {
		time.Sleep(1500 * time.Millisecond) // a resync passes
		if _, err := cms("inj-a"); !apierrors.IsNotFound(err) {
			t.Fatalf("a replica that does not lead published: %v", err)
		}
		leading.Store(true)
		published(t, "inj-a")
		published(t, "inj-req")
		published(t, "own")
	})

	t.Run("labelled namespaces only", func(t *testing.T) {
		if _, err := env.Client.CoreV1().Namespaces().Patch(ctx, "plain", types.MergePatchType,
			[]byte(`{"metadata":{"labels":{"`+InjectLabel+`":"`+InjectEnabled+`"}}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		env.EnsureNamespace(t, "later")
		cm := published(t, "plain")
		if cm.Labels[PartOfLabel] != PartOfValue {
			t.Fatalf("ConfigMap labels %v", cm.Labels)
		}
		for _, ns := range []string{"disabled", "later", "default"} {
			if _, err := cms(ns); !apierrors.IsNotFound(err) {
				t.Fatalf("namespace %s without the label got a ConfigMap: %v", ns, err)
			}
		}
	})

	t.Run("rotation reaches every namespace", func(t *testing.T) {
		if err := ca.Rotate(ctx, identity.StepPrepare, false); err != nil {
			t.Fatal(err)
		}
		for _, ns := range []string{"inj-a", "plain", "own"} {
			cm := published(t, ns)
			if n := strings.Count(cm.Data[BundlePEMKey], "BEGIN CERTIFICATE"); n != 2 {
				t.Fatalf("%s: %d roots after prepare, want 2", ns, n)
			}
		}
	})

	t.Run("writes only what changed", func(t *testing.T) {
		before := writes.count()
		time.Sleep(2500 * time.Millisecond) // two resyncs
		if n := writes.count() - before; n != 0 {
			t.Fatalf("%d ConfigMap writes with nothing changed", n)
		}
		// A deleted ConfigMap is restored, an edited one repaired, and
		// other keys are kept.
		if err := env.Client.CoreV1().ConfigMaps("inj-a").Delete(ctx, BundleConfigMapName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := env.Client.CoreV1().ConfigMaps("plain").Patch(ctx, BundleConfigMapName, types.MergePatchType,
			[]byte(`{"data":{"bundle.pem":"garbage","extra":"kept"}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		published(t, "inj-a")
		if cm := published(t, "plain"); cm.Data["extra"] != "kept" {
			t.Fatalf("other keys were dropped: %v", keys(cm.Data))
		}
		if n := writes.count() - before; n != 2 {
			t.Fatalf("%d ConfigMap writes to repair two, want 2", n)
		}
	})
}

// checkBundle checks that cm holds the CA's current roots, as PEM and as a
// SPIFFE bundle.
func checkBundle(cm *corev1.ConfigMap, ca *identity.CA) error {
	bv := ca.Bundle()
	want := bv.Bundle.X509Authorities()
	var got []*x509.Certificate
	rest := []byte(cm.Data[BundlePEMKey])
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return fmt.Errorf("bundle.pem: %w", err)
		}
		got = append(got, c)
	}
	if !sameCerts(got, want) {
		return fmt.Errorf("bundle.pem holds %d roots, not the CA's %d", len(got), len(want))
	}
	sb, err := spiffebundle.Parse(ca.TrustDomain(), []byte(cm.Data[BundleJWKSKey]))
	if err != nil {
		return fmt.Errorf("bundle.jwks: %w", err)
	}
	if !sameCerts(sb.X509Authorities(), want) {
		return errors.New("bundle.jwks does not hold the CA's roots")
	}
	if seq, ok := sb.SequenceNumber(); !ok || seq != bv.Sequence {
		return fmt.Errorf("bundle.jwks sequence %d, want %d", seq, bv.Sequence)
	}
	return nil
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}
