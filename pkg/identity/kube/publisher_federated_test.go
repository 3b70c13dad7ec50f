package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestBundlePublisherFederated: with a federated-bundle set, the
// tether-trust-bundle ConfigMap carries the foreign bundles under
// federated-bundles.json, and follows the set when a domain is dropped.
func TestBundlePublisherFederated(t *testing.T) {
	env := kubetest.Start(t)
	ctx := testContext(t, 2*time.Minute)
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "own"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ca := testutil.NewCA(t, identity.RealClock, nil)
	b := testutil.NewCA(t, identity.RealClock, func(c *identity.Config) { c.TrustDomain = spiffeid.RequireTrustDomainFromString("b.example") })
	f := identity.NewFederator(identity.FederatorConfig{TrustDomain: ca.TrustDomain()})
	btd := b.TrustDomain()
	initial := b.Bundle().SPIFFE.Clone()
	if err := f.SetDomains([]identity.FederatedDomain{{TrustDomain: btd, URL: "https://bundle.b.example/", Profile: identity.ProfileHTTPSWeb, Initial: initial}}); err != nil {
		t.Fatal(err)
	}
	pub, err := NewBundlePublisher(BundlePublisherConfig{Client: env.Client, Bundles: ca, Federated: f.Bundles(),
		Namespaces: []string{"own"}, ResyncPeriod: time.Second, Logger: testLogger(t)})
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

	federated := func() (map[string]json.RawMessage, error) {
		cm, err := env.Client.CoreV1().ConfigMaps("own").Get(ctx, BundleConfigMapName, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		raw, ok := cm.Data[FederatedBundlesKey]
		if !ok {
			return nil, fmt.Errorf("no %s key", FederatedBundlesKey)
		}
		var docs map[string]json.RawMessage
		return docs, json.Unmarshal([]byte(raw), &docs)
	}
	eventually(t, 15*time.Second, "b.example's bundle in the ConfigMap", func() error {
		docs, err := federated()
		if err != nil {
			return err
		}
		doc, ok := docs["b.example"]
		if !ok || len(docs) != 1 {
			return fmt.Errorf("federated bundles for %d domains, want b.example only", len(docs))
		}
		got, err := spiffebundle.Parse(btd, doc)
		if err != nil {
			return err
		}
		if !got.X509Bundle().Equal(b.Bundle().Bundle) {
			return fmt.Errorf("the published b.example roots differ from b.example's")
		}
		return nil
	})
	if err := f.SetDomains(nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "b.example dropped from the ConfigMap", func() error {
		docs, err := federated()
		if err != nil {
			return err
		}
		if len(docs) != 0 {
			return fmt.Errorf("still %d federated bundles", len(docs))
		}
		return nil
	})
}
