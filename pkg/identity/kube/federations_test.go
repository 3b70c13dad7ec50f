package kube_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
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

// privateWebPKI makes a private root CA and a server certificate it signs
// for 127.0.0.1, written to dir; it returns the root's PEM and the files.
func privateWebPKI(t *testing.T, dir, name string) (rootPEM []byte, certFile, keyFile string) {
	t.Helper()
	rootKey, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " private root"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "bundle.c.example"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}), certFile, keyFile
}

// TestFederationWebRootsAgainstAPIServer: an https_web endpoint behind a
// certificate of a private root (a Tether CA's endpoint, c.example) is
// refused while the TrustDomainFederation has no webRoots (system roots)
// or another private root, and followed once spec.webRoots holds its root;
// webRoots that are not PEM certificates leave the object out with the
// reason in its status.
func TestFederationWebRootsAgainstAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dc, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	env.InstallCRD(t, filepath.Join("..", "..", "..", "charts", "tether", "crds", "tether.dev_trustdomainfederations.yaml"))

	c := testutil.NewCA(t, identity.RealClock, func(cfg *identity.Config) { cfg.TrustDomain = spiffeid.RequireTrustDomainFromString("c.example") })
	dir := t.TempDir()
	rootPEM, certFile, keyFile := privateWebPKI(t, dir, "corp")
	otherRootPEM, _, _ := privateWebPKI(t, dir, "other")
	web, err := identity.NewWebCertificate(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	h, err := c.BundleEndpointHandler(time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(tls.NewListener(l, web.TLSConfig())) }()
	t.Cleanup(func() { _ = srv.Close() })
	url := "https://" + l.Addr().String()

	f := identity.NewFederator(identity.FederatorConfig{TrustDomain: spiffeid.RequireTrustDomainFromString("a.example"),
		MinRefresh: 20 * time.Millisecond, MaxRefresh: 200 * time.Millisecond})
	fctx, fcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = f.Run(fctx); close(done) }()
	defer func() { fcancel(); <-done }()
	w := kube.NewFederationWatcher(kube.FederationWatcherConfig{Client: dc, Federator: f, Local: "a.example"})
	res := dc.Resource(tetherv1.TrustDomainFederationGVR)
	ctd := spiffeid.RequireTrustDomainFromString("c.example")

	// apply creates or replaces the object's spec, then syncs until its
	// status says what cond waits for.
	apply := func(spec map[string]any, what string, cond func(status map[string]any) bool) {
		t.Helper()
		obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": tetherv1.SchemeGroupVersion.String(),
			"kind": "TrustDomainFederation", "metadata": map[string]any{"name": "c"}, "spec": spec}}
		for {
			cur, err := res.Get(ctx, "c", metav1.GetOptions{})
			if err == nil {
				obj.SetResourceVersion(cur.GetResourceVersion())
				_, err = res.Update(ctx, obj, metav1.UpdateOptions{})
			} else if apierrors.IsNotFound(err) {
				_, err = res.Create(ctx, obj, metav1.CreateOptions{})
			}
			if err == nil {
				break
			}
			if !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) || ctx.Err() != nil {
				t.Fatalf("apply: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		testutil.Eventually(t, what, 20*time.Second, func() bool {
			if err := w.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			got, err := res.Get(ctx, "c", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			st, _, _ := unstructured.NestedMap(got.Object, "status")
			return cond(st)
		})
	}
	lastError := func(st map[string]any) string { e, _ := st["lastError"].(string); return e }
	spec := map[string]any{"trustDomain": "c.example", "bundleEndpointURL": url, "profile": "https_web"}

	apply(spec, "a refusal with the system roots", func(st map[string]any) bool {
		return strings.Contains(lastError(st), "https_web") && strings.Contains(lastError(st), "certificate signed by unknown authority")
	})
	if _, err := f.Bundles().GetBundleForTrustDomain(ctd); err == nil {
		t.Fatal("c.example trusted although its endpoint's certificate chains to a root the federation does not name")
	}
	spec["webRoots"] = string(otherRootPEM)
	apply(spec, "a refusal with another private root", func(st map[string]any) bool {
		return strings.Contains(lastError(st), "certificate signed by unknown authority")
	})
	if _, err := f.Bundles().GetBundleForTrustDomain(ctd); err == nil {
		t.Fatal("c.example trusted with another private root")
	}
	spec["webRoots"] = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
	apply(spec, "webRoots that are no certificate refused", func(st map[string]any) bool {
		return strings.Contains(lastError(st), "not applied") && strings.Contains(lastError(st), `a PEM block of type "PRIVATE KEY", want CERTIFICATE`)
	})
	spec["webRoots"] = string(rootPEM)
	apply(spec, "c.example followed with its private root", func(st map[string]any) bool {
		seq, _ := st["sequence"].(int64)
		return seq == 1 && lastError(st) == ""
	})
	got, err := f.Bundles().GetBundleForTrustDomain(ctd)
	if err != nil || !got.X509Bundle().Equal(c.Bundle().Bundle) {
		t.Fatalf("held bundle for c.example: %v", err)
	}
}
