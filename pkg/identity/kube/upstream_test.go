package kube

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/typed/certmanager/v1"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestCertManagerUpstream runs the upstream against a real API server with
// cert-manager's CertificateRequest CRD; the test plays cert-manager's
// controller, with a root CA of its own.
func TestCertManagerUpstream(t *testing.T) {
	env := kubetest.Start(t)
	ctx := testContext(t, 2*time.Minute)
	installCRD(t, env.Config, "testdata/cert-manager.io_certificaterequests.yaml")
	env.EnsureNamespace(t, DefaultNamespace)
	client := cmclient.NewForConfigOrDie(env.Config)
	root := newTestRoot(t)
	runIssuer(t, client, root)

	newUpstream := func(t *testing.T, issuer string, mod func(*CertManagerConfig)) *CertManagerUpstream {
		cfg := CertManagerConfig{Client: client, IssuerName: issuer, IssuerKind: cmapi.ClusterIssuerKind, Logger: testLogger(t)}
		if mod != nil {
			mod(&cfg)
		}
		u, err := NewCertManagerUpstream(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}

	t.Run("CA issues SVIDs under the upstream root", func(t *testing.T) {
		for _, issuer := range []string{"with-ca", "chain-only"} {
			t.Run(issuer, func(t *testing.T) {
				up := newUpstream(t, issuer, nil)
				if up.Name() != "cert-manager ClusterIssuer/"+issuer {
					t.Fatalf("Name() = %q", up.Name())
				}
				ca := testutil.NewCA(t, identity.RealClock, func(c *identity.Config) {
					c.Upstream = up
					c.IntermediateTTL = 24 * time.Hour
				})
				csr, _ := testutil.NewCSR(t, nil, nil)
				id := testutil.ID("/ns/team-a/sa/web")
				iss, err := ca.Sign(id, csr)
				if err != nil {
					t.Fatal(err)
				}
				// The mesh trusts the intermediate cert-manager signed for
				// tether-ca, not the issuer's root (which signs for others).
				if anchors := ca.Bundle().Bundle.X509Authorities(); len(anchors) != 1 || !bytes.Equal(anchors[0].Raw, iss.Chain[1]) {
					t.Fatalf("the CA's bundle holds %d anchors, not just its own intermediate", len(anchors))
				}
				got, chains, err := x509svid.ParseAndVerify(iss.Chain, ca.Bundle().Bundle)
				if err != nil || got != id || len(chains[0]) != 2 {
					t.Fatalf("SVID against the CA's bundle: %s, %v", got, err)
				}
				bundle := x509bundle.FromX509Authorities(testutil.TrustDomain, []*x509.Certificate{root.cert})
				got, chains, err = x509svid.ParseAndVerify(iss.Chain, bundle)
				if err != nil {
					t.Fatalf("SVID does not chain up to the upstream root: %v", err)
				}
				if got != id || len(chains[0]) != 3 {
					t.Fatalf("verified %s through %d certificates", got, len(chains[0]))
				}
				if d := iss.Chain[1]; len(d) == 0 {
					t.Fatal("no intermediate in the chain")
				}
				inter, _ := x509.ParseCertificate(iss.Chain[1])
				if life := inter.NotAfter.Sub(inter.NotBefore); life != 24*time.Hour {
					t.Fatalf("intermediate lives %v, want the 24h asked for", life)
				}
			})
		}
	})

	// Another cluster on the same corporate PKI, with the default trust
	// domain, has its tether-ca signed by the same ClusterIssuer: its SVIDs
	// are the upstream's, but not this mesh's.
	t.Run("another Tether CA under the same issuer is not trusted", func(t *testing.T) {
		newCA := func() *identity.CA {
			return testutil.NewCA(t, identity.RealClock, func(c *identity.Config) {
				c.Upstream = newUpstream(t, "with-ca", nil)
				c.IntermediateTTL = 24 * time.Hour
			})
		}
		ca, other := newCA(), newCA()
		id := testutil.ID("/ns/team-a/sa/web")
		csr, key := testutil.NewCSR(t, nil, nil)
		iss, err := other.Sign(id, csr)
		if err != nil {
			t.Fatal(err)
		}
		foreign := &x509svid.SVID{ID: id, PrivateKey: key}
		for _, der := range iss.Chain {
			c, _ := x509.ParseCertificate(der)
			foreign.Certificates = append(foreign.Certificates, c)
		}
		if _, _, err := x509svid.Verify(foreign.Certificates, x509bundle.FromX509Authorities(testutil.TrustDomain, []*x509.Certificate{root.cert})); err != nil {
			t.Fatalf("the other cluster's SVID does not chain to the shared issuer: %v", err)
		}
		if _, _, err := x509svid.Verify(foreign.Certificates, ca.Bundle().Bundle); err == nil {
			t.Fatal("the other cluster's SVID verifies against this mesh's bundle")
		}
		// Nor does it renew at this CA over mTLS (a real server on loopback).
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g := identity.NewServer(ca, nil, nil).GRPCServer()
		go g.Serve(l)
		t.Cleanup(g.Stop)
		renew := func(s *x509svid.SVID) error {
			client, err := identity.Dial(l.Addr().String(), ca.TrustDomain(), ca, s)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			_, _, err = client.FetchSVID(ctx, nil)
			return err
		}
		own, err := ca.GetX509SVID() // control: an SVID of this mesh renews
		if err != nil {
			t.Fatal(err)
		}
		csr, key = testutil.NewCSR(t, nil, nil)
		mine, err := ca.Sign(id, csr)
		if err != nil {
			t.Fatal(err)
		}
		if err := renew(&x509svid.SVID{ID: id, PrivateKey: key, Certificates: append([]*x509.Certificate{mustParse(t, mine.Chain[0])}, own.Certificates[1:]...)}); err != nil {
			t.Fatalf("this mesh's own SVID does not renew: %v", err)
		}
		// Refused at the TLS handshake (the client sees "bad certificate"
		// or, if the alert loses the race, a broken connection).
		if err := renew(foreign); status.Code(errors.Unwrap(err)) != codes.Unavailable {
			t.Fatalf("renewing the other cluster's SVID at this CA: %v; want the handshake refused", err)
		}
	})

	refusals := []struct {
		issuer  string
		timeout time.Duration
		wantErr []string
	}{
		{issuer: "deny", wantErr: []string{"Denied", "policy forbids CA certificates"}},
		{issuer: "fail", wantErr: []string{"Ready=False", "Failed", "the issuer's CA has expired"}},
		{issuer: "invalid", wantErr: []string{"InvalidRequest", "bad CSR"}},
		{issuer: "wrong-key", wantErr: []string{"not for the CA's key"}},
		{issuer: "not-ca", wantErr: []string{"not a signing CA"}},
		{issuer: "other-root", wantErr: []string{"does not chain to the issuer's CA"}},
		{issuer: "no-root", wantErr: []string{"returned no CA certificate"}},
		{issuer: "silent", timeout: time.Second, wantErr: []string{"not issued in time", "not approved"}},
	}
	for _, tt := range refusals {
		t.Run("refused: "+tt.issuer, func(t *testing.T) {
			up := newUpstream(t, tt.issuer, func(c *CertManagerConfig) { c.Timeout = tt.timeout })
			csr, _ := testutil.NewCSR(t, nil, nil)
			res, err := up.SignIntermediate(ctx, csr, time.Hour)
			if err == nil {
				t.Fatalf("SignIntermediate = %v, want an error", res)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Fatalf("err = %v, want it to mention %q", err, want)
				}
			}
			if tt.timeout == 0 && !errors.Is(err, ErrUpstreamRefused) {
				t.Fatalf("err = %v, want ErrUpstreamRefused", err)
			}
			t.Log(err)
		})
	}

	t.Run("a refusal stops NewCA with a clear error", func(t *testing.T) {
		store, err := identity.NewDiskStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		_, err = identity.NewCA(ctx, identity.Config{TrustDomain: testutil.TrustDomain, Store: store,
			Upstream: newUpstream(t, "deny", nil), IntermediateTTL: 24 * time.Hour})
		if !errors.Is(err, ErrUpstreamRefused) || !strings.Contains(err.Error(), "policy forbids") {
			t.Fatalf("NewCA = %v", err)
		}
	})

	t.Run("old requests are deleted", func(t *testing.T) {
		up := newUpstream(t, "with-ca", func(c *CertManagerConfig) { c.Keep = 2 })
		var chains [][]byte
		for range 3 {
			csr, _ := testutil.NewCSR(t, nil, nil)
			res, err := up.SignIntermediate(ctx, csr, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			chains = append(chains, res.Chain[0])
		}
		list, err := client.CertificateRequests(DefaultNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 2 {
			t.Fatalf("%d CertificateRequests left, want 2", len(list.Items))
		}
		for _, cr := range list.Items {
			if !strings.HasPrefix(cr.Name, DefaultRequestPrefix) || cr.Labels[PartOfLabel] != PartOfValue {
				t.Fatalf("request %s, labels %v", cr.Name, cr.Labels)
			}
			if !cr.Spec.IsCA || cr.Spec.IssuerRef.Name != "with-ca" || cr.Spec.IssuerRef.Group != "cert-manager.io" || cr.Spec.Duration.Duration != time.Hour {
				t.Fatalf("request %s: the wrong ones were kept (issuer %s, %v)", cr.Name, cr.Spec.IssuerRef.Name, cr.Spec.Duration)
			}
			block, _ := pem.Decode(cr.Status.Certificate)
			if block == nil || (!bytes.Equal(block.Bytes, chains[1]) && !bytes.Equal(block.Bytes, chains[2])) {
				t.Fatalf("request %s is not one of the two newest", cr.Name)
			}
		}
	})
}

// installCRD creates the CRD in path and waits until it is served.
func installCRD(t *testing.T, cfg *rest.Config, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &obj.Object); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	crds := dynamic.NewForConfigOrDie(cfg).Resource(schema.GroupVersionResource{
		Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	ctx := testContext(t, 30*time.Second)
	if _, err := crds.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CRD: %v", err)
	}
	eventually(t, 20*time.Second, "CRD "+obj.GetName()+" established", func() error {
		got, err := crds.Get(ctx, obj.GetName(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
				return nil
			}
		}
		return errors.New("not established")
	})
	// Discovery of the new resource lags its establishment a little.
	client := cmclient.NewForConfigOrDie(cfg)
	eventually(t, 20*time.Second, "CertificateRequests served", func() error {
		_, err := client.CertificateRequests("default").List(ctx, metav1.ListOptions{})
		return err
	})
}

type testRoot struct {
	cert *x509.Certificate
	key  any
}

func newTestRoot(t *testing.T) *testRoot {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"Corp"}, CommonName: "Corp root CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testRoot{cert: cert, key: key}
}

// sign issues a certificate for pub, as a cert-manager CA issuer would.
func (r *testRoot) sign(t *testing.T, csr *x509.CertificateRequest, pub any, isCA bool, d time.Duration) []byte {
	now := time.Now().Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               csr.Subject,
		URIs:                  csr.URIs,
		NotBefore:             now,
		NotAfter:              now.Add(d),
		BasicConstraintsValid: true,
		IsCA:                  isCA,
		KeyUsage:              x509.KeyUsageDigitalSignature,
	}
	if isCA {
		tmpl.KeyUsage |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, pub, r.key)
	if err != nil {
		t.Error(err)
	}
	return der
}

func pemOf(ders ...[]byte) []byte {
	var out []byte
	for _, d := range ders {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	return out
}

// runIssuer plays cert-manager's controller until the test ends: it
// answers every CertificateRequest in tether-system according to the name
// of the issuer it names.
func runIssuer(t *testing.T, client cmclient.CertificateRequestsGetter, root *testRoot) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	crs := client.CertificateRequests(DefaultNamespace)
	w, err := crs.Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			cr, ok := ev.Object.(*cmapi.CertificateRequest)
			if !ok || ev.Type != watch.Added {
				continue
			}
			if err := answer(t, crs, cr, root); err != nil && ctx.Err() == nil {
				t.Errorf("test issuer: %v", err)
			}
		}
	})
}

func answer(t *testing.T, crs cmclient.CertificateRequestInterface, cr *cmapi.CertificateRequest, root *testRoot) error {
	ctx := context.Background()
	block, _ := pem.Decode(cr.Spec.Request)
	if block == nil {
		return fmt.Errorf("%s: spec.request is not PEM", cr.Name)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return err
	}
	if !cr.Spec.IsCA || len(cr.Spec.Usages) != 3 || cr.Spec.Duration == nil {
		return fmt.Errorf("%s: spec %+v", cr.Name, cr.Spec)
	}
	cond := func(typ cmapi.CertificateRequestConditionType, status cmmeta.ConditionStatus, reason, msg string) cmapi.CertificateRequestCondition {
		return cmapi.CertificateRequestCondition{Type: typ, Status: status, Reason: reason, Message: msg, LastTransitionTime: &metav1.Time{Time: time.Now()}}
	}
	approved := cond(cmapi.CertificateRequestConditionApproved, cmmeta.ConditionTrue, "policy", "approved")
	ready := cond(cmapi.CertificateRequestConditionReady, cmmeta.ConditionTrue, cmapi.CertificateRequestReasonIssued, "issued")
	d := cr.Spec.Duration.Duration
	st := &cr.Status
	switch cr.Spec.IssuerRef.Name {
	case "with-ca":
		st.Certificate, st.CA = pemOf(root.sign(t, csr, csr.PublicKey, true, d)), pemOf(root.cert.Raw)
		st.Conditions = []cmapi.CertificateRequestCondition{approved, ready}
	case "chain-only":
		st.Certificate = pemOf(root.sign(t, csr, csr.PublicKey, true, d), root.cert.Raw)
		st.Conditions = []cmapi.CertificateRequestCondition{approved, ready}
	case "deny":
		st.Conditions = []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionDenied, cmmeta.ConditionTrue, "policy", "policy forbids CA certificates"),
			cond(cmapi.CertificateRequestConditionReady, cmmeta.ConditionFalse, cmapi.CertificateRequestReasonDenied, "denied"),
		}
	case "fail":
		st.Conditions = []cmapi.CertificateRequestCondition{approved,
			cond(cmapi.CertificateRequestConditionReady, cmmeta.ConditionFalse, cmapi.CertificateRequestReasonFailed, "the issuer's CA has expired")}
	case "invalid":
		st.Conditions = []cmapi.CertificateRequestCondition{
			cond(cmapi.CertificateRequestConditionInvalidRequest, cmmeta.ConditionTrue, "BadCSR", "bad CSR")}
	case "wrong-key":
		other, _ := identity.NewKey()
		st.Certificate, st.CA = pemOf(root.sign(t, csr, other.Public(), true, d)), pemOf(root.cert.Raw)
		st.Conditions = []cmapi.CertificateRequestCondition{approved, ready}
	case "not-ca":
		st.Certificate, st.CA = pemOf(root.sign(t, csr, csr.PublicKey, false, d)), pemOf(root.cert.Raw)
		st.Conditions = []cmapi.CertificateRequestCondition{approved, ready}
	case "other-root":
		st.Certificate, st.CA = pemOf(root.sign(t, csr, csr.PublicKey, true, d)), pemOf(newTestRoot(t).cert.Raw)
		st.Conditions = []cmapi.CertificateRequestCondition{approved, ready}
	case "no-root":
		st.Certificate = pemOf(root.sign(t, csr, csr.PublicKey, true, d))
		st.Conditions = []cmapi.CertificateRequestCondition{approved, ready}
	default: // "silent": never answers
		return nil
	}
	// Like cert-manager, answer a moment later, so the upstream waits.
	time.Sleep(50 * time.Millisecond)
	_, err = crs.UpdateStatus(ctx, cr, metav1.UpdateOptions{})
	return err
}

func mustParse(t *testing.T, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
