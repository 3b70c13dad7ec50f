package identity_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// checkSVID asserts that an issued chain is an X509-SVID for want that
// go-spiffe parses and verifies against bundle, at the clock's time.
func checkSVID(t *testing.T, chain [][]byte, key crypto.Signer, bundle *x509bundle.Bundle, want spiffeid.ID, now time.Time) *x509svid.SVID {
	t.Helper()
	var certPEM []byte
	for _, der := range chain {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.Parse(certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatalf("x509svid.Parse: %v", err)
	}
	if svid.ID != want {
		t.Fatalf("SVID ID = %s, want %s", svid.ID, want)
	}
	id, _, err := x509svid.Verify(svid.Certificates, bundle, x509svid.WithTime(now))
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if id != want {
		t.Fatalf("verified ID = %s, want %s", id, want)
	}
	return svid
}

func TestSignIssuesStandardSVID(t *testing.T) {
	clock := testutil.NewFakeClock()
	ca := testutil.NewCA(t, clock, nil)
	id := testutil.ID("/ns/default/sa/web")
	csr, key := testutil.NewCSR(t, nil, nil)

	iss, err := ca.Sign(id, csr)
	if err != nil {
		t.Fatal(err)
	}
	svid := checkSVID(t, iss.Chain, key, ca.Bundle().Bundle, id, clock.Now())
	leaf := svid.Certificates[0]
	if len(svid.Certificates) != 2 {
		t.Errorf("chain has %d certificates, want leaf + intermediate", len(svid.Certificates))
	}
	if !svid.Certificates[1].IsCA {
		t.Error("second certificate of the chain is not the intermediate CA")
	}
	if len(leaf.URIs) != 1 || len(leaf.DNSNames) != 0 {
		t.Errorf("SANs: URIs %v DNS %v, want exactly one URI", leaf.URIs, leaf.DNSNames)
	}
	if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("IsCA=%v KeyUsage=%v, want leaf with digitalSignature only", leaf.IsCA, leaf.KeyUsage)
	}
	if got := clock.Now().Sub(leaf.NotBefore); got != identity.DefaultBackdate {
		t.Errorf("NotBefore backdated by %s, want %s", got, identity.DefaultBackdate)
	}
	if got := leaf.NotAfter.Sub(clock.Now()); got != identity.DefaultSVIDTTL {
		t.Errorf("lifetime %s, want %s", got, identity.DefaultSVIDTTL)
	}
	for _, root := range ca.Bundle().Bundle.X509Authorities() {
		if !root.IsCA || root.KeyUsage&x509.KeyUsageCertSign == 0 || len(root.URIs) != 1 || root.URIs[0].Path != "" {
			t.Errorf("root does not follow the X509-SVID standard: IsCA=%v usage=%v URIs=%v", root.IsCA, root.KeyUsage, root.URIs)
		}
	}
}

func TestSignClampsToSigningCA(t *testing.T) {
	clock := testutil.NewFakeClock()
	ca := testutil.NewCA(t, clock, func(c *identity.Config) {
		c.IntermediateTTL = 4 * time.Hour
		c.SVIDTTL = 2 * time.Hour
	})
	clock.Add(3 * time.Hour) // 1h of intermediate life left, SVID TTL 2h
	csr, key := testutil.NewCSR(t, nil, nil)
	iss, err := ca.Sign(testutil.ID("/a"), csr)
	if err != nil {
		t.Fatal(err)
	}
	inter := checkSVID(t, iss.Chain, key, ca.Bundle().Bundle, testutil.ID("/a"), clock.Now()).Certificates[1]
	if !iss.NotAfter.Equal(inter.NotAfter) {
		t.Errorf("leaf NotAfter %s, want clamped to intermediate NotAfter %s", iss.NotAfter, inter.NotAfter)
	}
	clock.Add(2 * time.Hour) // intermediate expired
	if _, err := ca.Sign(testutil.ID("/a"), csr); !errors.Is(err, identity.ErrNotReady) {
		t.Errorf("sign with expired intermediate: err = %v, want ErrNotReady", err)
	}
	if err := ca.Ready(); !errors.Is(err, identity.ErrNotReady) {
		t.Errorf("Ready with expired intermediate = %v, want ErrNotReady", err)
	}
}

func TestSignRejectsBadCSRs(t *testing.T) {
	ca := testutil.NewCA(t, nil, nil)
	id := testutil.ID("/ns/default/sa/web")
	good, _ := testutil.NewCSR(t, nil, nil)
	tampered := bytes.Clone(good)
	tampered[len(tampered)-5] ^= 0xff // inside the signature
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	weakRSA, _ := testutil.NewCSR(t, rsa1024, nil)
	weakEC, _ := testutil.NewCSR(t, p224, nil)
	ed, _ := testutil.NewCSR(t, edKey, nil)
	tests := []struct {
		name string
		csr  []byte
		want error
	}{
		{"empty", nil, identity.ErrBadCSR},
		{"garbage", []byte("definitely not DER"), identity.ErrBadCSR},
		{"truncated", good[:len(good)/2], identity.ErrBadCSR},
		{"bad signature", tampered, identity.ErrCSRSignature},
		{"RSA 1024", weakRSA, identity.ErrWeakKey},
		{"P-224", weakEC, identity.ErrWeakKey},
		{"Ed25519", ed, identity.ErrWeakKey},
		{"oversized", make([]byte, identity.MaxCSRSize+1), identity.ErrBadCSR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.Sign(id, tt.csr)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestSignAcceptsStrongKeys(t *testing.T) {
	clock := testutil.NewFakeClock()
	ca := testutil.NewCA(t, clock, nil)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for name, key := range map[string]crypto.Signer{"RSA 2048": rsa2048, "P-384": p384} {
		t.Run(name, func(t *testing.T) {
			csr, _ := testutil.NewCSR(t, key, nil)
			iss, err := ca.Sign(testutil.ID("/x"), csr)
			if err != nil {
				t.Fatal(err)
			}
			checkSVID(t, iss.Chain, key, ca.Bundle().Bundle, testutil.ID("/x"), clock.Now())
		})
	}
}

func TestSignIgnoresNamesInCSR(t *testing.T) {
	clock := testutil.NewFakeClock()
	ca := testutil.NewCA(t, clock, nil)
	caller := testutil.ID("/ns/default/sa/web")
	evil, _ := url.Parse("spiffe://cluster.local/ns/kube-system/sa/admin")
	csr, key := testutil.NewCSR(t, nil, &x509.CertificateRequest{
		URIs:     []*url.URL{evil},
		DNSNames: []string{"kubernetes.default.svc"},
	})
	iss, err := ca.Sign(caller, csr)
	if err != nil {
		t.Fatal(err)
	}
	svid := checkSVID(t, iss.Chain, key, ca.Bundle().Bundle, caller, clock.Now())
	if leaf := svid.Certificates[0]; len(leaf.URIs) != 1 || len(leaf.DNSNames) != 0 || leaf.Subject.CommonName != "" {
		t.Errorf("names from the CSR leaked into the SVID: URIs %v DNS %v CN %q", leaf.URIs, leaf.DNSNames, leaf.Subject.CommonName)
	}
}

func TestSignRefusesOtherTrustDomain(t *testing.T) {
	ca := testutil.NewCA(t, nil, nil)
	csr, _ := testutil.NewCSR(t, nil, nil)
	_, err := ca.Sign(spiffeid.RequireFromString("spiffe://evil.example/x"), csr)
	if !errors.Is(err, identity.ErrPermissionDenied) {
		t.Fatalf("err = %v, want ErrPermissionDenied", err)
	}
}

func TestConfigValidation(t *testing.T) {
	store, err := identity.NewDiskStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	td := testutil.TrustDomain
	tests := []struct {
		name string
		cfg  identity.Config
		want string
	}{
		{"no trust domain", identity.Config{Store: store}, "no trust domain"},
		{"no store", identity.Config{TrustDomain: td}, "no store"},
		{"SVID longer than half the intermediate", identity.Config{TrustDomain: td, Store: store, SVIDTTL: 20 * 24 * time.Hour}, "at most half"},
		{"intermediate longer than root", identity.Config{TrustDomain: td, Store: store, IntermediateTTL: 400 * 24 * time.Hour}, "longer than the root"},
		{"SVID too short", identity.Config{TrustDomain: td, Store: store, SVIDTTL: time.Second}, "shorter than a minute"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := identity.NewCA(context.Background(), tt.cfg)
			if !errors.Is(err, identity.ErrConfig) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want ErrConfig containing %q", err, tt.want)
			}
		})
	}
}

func TestStoreKeepsTrustDomain(t *testing.T) {
	dir := t.TempDir()
	store, _ := identity.NewDiskStore(dir)
	if _, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store}); err != nil {
		t.Fatal(err)
	}
	_, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("other.example"), Store: store})
	if err == nil || !strings.Contains(err.Error(), "cluster.local") {
		t.Fatalf("opening a cluster.local store as other.example: err = %v, want a clear refusal", err)
	}
}

// TestSignRefusesBareTrustDomain: an X509-SVID's ID must have a path
// (go-spiffe is the spec); the CA refuses to sign the trust domain's own ID.
func TestSignRefusesBareTrustDomain(t *testing.T) {
	ca := testutil.NewCA(t, nil, nil)
	csr, key := testutil.NewCSR(t, nil, nil)
	iss, err := ca.Sign(testutil.TrustDomain.ID(), csr)
	if err == nil {
		var certPEM []byte
		for _, der := range iss.Chain {
			certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
		keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
		_, perr := x509svid.Parse(certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
		t.Fatalf("the CA signed %s; go-spiffe says of that leaf: %v", testutil.TrustDomain.ID(), perr)
	}
	if !errors.Is(err, identity.ErrPermissionDenied) || !strings.Contains(err.Error(), "path") {
		t.Fatalf("err = %v, want ErrPermissionDenied saying the ID has no path", err)
	}
	// The same CA still issues an ID with a path, which go-spiffe accepts.
	iss, err = ca.Sign(testutil.ID("/ns/default/sa/web"), csr)
	if err != nil {
		t.Fatal(err)
	}
	checkSVID(t, iss.Chain, key, ca.Bundle().Bundle, testutil.ID("/ns/default/sa/web"), iss.NotAfter.Add(-time.Minute))
}
