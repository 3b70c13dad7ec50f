package kube_test

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	tetherv1 "github.com/tether-mesh/tether/api/tether/v1alpha1"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/kube"
)

// serveEndpoint serves ca's bundle endpoint (https_spiffe) on loopback.
func serveEndpoint(t *testing.T, ca *identity.CA) string {
	t.Helper()
	h, err := ca.BundleEndpointHandler(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ca.BundleEndpointSPIFFETLS()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(tls.NewListener(l, cfg)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "https://" + l.Addr().String()
}

// TestFederationWatcherAgainstAPIServer: TrustDomainFederation objects in a
// real kube-apiserver drive the federator; a second object for the same
// domain and one for the CA's own domain are left out with the reason in
// their status; the status of the applied one carries the fetched sequence;
// deleting it stops the trust.
func TestFederationWatcherAgainstAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	env.InstallCRD(t, filepath.Join("..", "..", "..", "charts", "tether", "crds", "tether.dev_trustdomainfederations.yaml"))

	b := testutil.NewCA(t, identity.RealClock, func(c *identity.Config) { c.TrustDomain = spiffeid.RequireTrustDomainFromString("b.example") })
	if err := b.Rotate(ctx, identity.StepPrepare, false); err != nil { // sequence 2: told apart from the initial bundle
		t.Fatal(err)
	}
	var initial []byte
	for _, c := range b.Bundle().Bundle.X509Authorities() {
		initial = append(initial, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	url := serveEndpoint(t, b)
	res := dc.Resource(tetherv1.TrustDomainFederationGVR)
	create := func(name string, spec map[string]any) {
		obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": tetherv1.SchemeGroupVersion.String(),
			"kind": "TrustDomainFederation", "metadata": map[string]any{"name": name}, "spec": spec}}
		for {
			_, err := res.Create(ctx, obj, metav1.CreateOptions{})
			if err == nil {
				return
			}
			if !apierrors.IsNotFound(err) || ctx.Err() != nil {
				t.Fatalf("create %s: %v", name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	good := map[string]any{"trustDomain": "b.example", "bundleEndpointURL": url,
		"endpointSPIFFEID": "spiffe://b.example/tether/bundle-endpoint", "initialBundle": string(initial)}
	create("b", good)
	create("b-again", good)
	create("self", map[string]any{"trustDomain": "a.example", "bundleEndpointURL": "https://a.example/", "profile": "https_web"})

	f := identity.NewFederator(identity.FederatorConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("a.example"),
		MinRefresh: 20 * time.Millisecond, MaxRefresh: time.Second})
	fctx, fcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = f.Run(fctx); close(done) }()
	defer func() { fcancel(); <-done }()
	w := kube.NewFederationWatcher(kube.FederationWatcherConfig{Client: dc, Federator: f, Local: "a.example"})

	btd := spiffeid.RequireTrustDomainFromString("b.example")
	status := func(name string) map[string]any {
		got, err := res.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st, _, _ := unstructured.NestedMap(got.Object, "status")
		return st
	}
	testutil.Eventually(t, "b.example's served bundle held and its status written", 20*time.Second, func() bool {
		if err := w.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		seq, _ := status("b")["sequence"].(int64)
		return seq == 2
	})
	if got, err := f.Bundles().GetBundleForTrustDomain(btd); err != nil || len(got.X509Authorities()) != 2 {
		t.Fatalf("held bundle for b.example: %v", err)
	}
	if e, _ := status("b-again")["lastError"].(string); !strings.Contains(e, "already federated by TrustDomainFederation b") {
		t.Fatalf("b-again status error = %q, want the duplicate named", e)
	}
	if e, _ := status("self")["lastError"].(string); !strings.Contains(e, "own trust domain") {
		t.Fatalf("self status error = %q, want the own domain refused", e)
	}

	if err := res.Delete(ctx, "b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := res.Delete(ctx, "b-again", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Bundles().GetBundleForTrustDomain(btd); err == nil {
		t.Fatal("b.example is still trusted after its TrustDomainFederation was deleted")
	}
}
