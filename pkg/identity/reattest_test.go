package identity_test

import (
	"context"
	"crypto/x509"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// nearNowCA is a CA on a fake clock set to start back, in the past of the
// wall clock. SVIDs live a day, so every one the test issues is still valid
// by the wall clock, which TLS checks, while the CA's clock moves hours.
func nearNowCA(t *testing.T, back time.Duration, mod func(*identity.Config)) (*identity.CA, *testutil.FakeClock) {
	t.Helper()
	clock := testutil.NewFakeClock()
	clock.Set(time.Now().Add(-back))
	ca := testutil.NewCA(t, clock, func(c *identity.Config) {
		c.SVIDTTL = 24 * time.Hour
		if mod != nil {
			mod(c)
		}
	})
	return ca, clock
}

func attestationOf(t *testing.T, svid *x509svid.SVID) identity.Attestation {
	t.Helper()
	att, ok, err := identity.AttestationOf(svid.Certificates[0])
	if err != nil || !ok {
		t.Fatalf("SVID of %s has no attestation record (found %v, err %v)", svid.ID, ok, err)
	}
	return att
}

// TestAttestationRecordedInSVID: the CA records in each SVID when and how
// its chain was last attested (signed by the CA, not the client's word),
// copies it forward on mTLS renewal and resets it on a fresh attestation.
// Stock verifiers (go-spiffe, openssl) accept the SVID with the extension.
func TestAttestationRecordedInSVID(t *testing.T) {
	ctx := context.Background()
	ca, clock := nearNowCA(t, 10*time.Hour, nil)
	addr := serve(t, ca, nil)
	web := testutil.ID("/ns/default/sa/web")

	attestedAt := clock.Now()
	svid, bundle, err := dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatal(err)
	}
	att := attestationOf(t, svid)
	if att.Kind != identity.KindJoinToken || !att.At.Equal(attestedAt.Truncate(time.Second)) {
		t.Fatalf("bootstrap SVID records %+v, want join_token at %s", att, attestedAt.Truncate(time.Second))
	}
	leaf := svid.Certificates[0]
	var ext bool
	for _, e := range leaf.Extensions {
		if e.Id.Equal(identity.OIDAttestation) {
			ext = true
			if e.Critical {
				t.Fatal("the attestation extension is critical; verifiers that do not know it would reject the SVID")
			}
		}
	}
	if !ext {
		t.Fatalf("no extension %s in the SVID", identity.OIDAttestation)
	}
	// go-spiffe, the X509-SVID spec's reference, accepts it.
	raw := make([][]byte, 0, len(svid.Certificates))
	for _, c := range svid.Certificates {
		raw = append(raw, c.Raw)
	}
	if id, _, err := x509svid.ParseAndVerify(raw, bundle.X509Bundle()); err != nil || id != web {
		t.Fatalf("go-spiffe: %s, %v", id, err)
	}
	opensslVerify(t, svid, bundle.X509Bundle().X509Authorities())

	// Renewal over mTLS, two hours on: the record is copied forward.
	clock.Add(2 * time.Hour)
	renewed, _, err := dial(t, addr, ca, svid).FetchSVID(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := attestationOf(t, renewed); got != att {
		t.Fatalf("renewed SVID records %+v, want the original %+v copied forward", got, att)
	}
	// A fresh join token, sent with the SVID, resets it.
	renewed2, _, err := dial(t, addr, ca, renewed).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatal(err)
	}
	if got := attestationOf(t, renewed2); !got.At.Equal(clock.Now().Truncate(time.Second)) || got.Kind != identity.KindJoinToken {
		t.Fatalf("re-attested SVID records %+v, want join_token at %s", got, clock.Now())
	}
}

// opensslVerify checks the SVID chain with the openssl command, when it is
// installed (make deps installs it).
func opensslVerify(t *testing.T, svid *x509svid.SVID, roots []*x509.Certificate) {
	t.Helper()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Log("openssl not installed; skipped openssl verify (make deps installs it)")
		return
	}
	dir := t.TempDir()
	out, err := exec.Command(openssl, "verify", "-x509_strict", "-purpose", "sslclient",
		"-CAfile", writePEM(t, dir, "roots.pem", roots...), "-untrusted", writePEM(t, dir, "chain.pem", svid.Certificates[1:]...),
		writePEM(t, dir, "leaf.pem", svid.Certificates[:1]...)).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
}

// TestJoinTokenRenewalChainEnds: a copied join-token SVID renews over mTLS
// only until MaxRenewalAge after the join token was spent; then the CA
// refuses and says a new join token is needed.
func TestJoinTokenRenewalChainEnds(t *testing.T) {
	ctx := context.Background()
	ca, clock := nearNowCA(t, 20*time.Hour, func(c *identity.Config) { c.MaxRenewalAge = 3 * time.Hour })
	addr := serve(t, ca, nil)
	web := testutil.ID("/ns/default/sa/web")

	svid, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatal(err)
	}
	// The attacker holding a copy renews often: fine for 3 hours.
	for range 3 {
		clock.Add(59 * time.Minute)
		if svid, _, err = dial(t, addr, ca, svid).FetchSVID(ctx, nil); err != nil {
			t.Fatalf("renewal within the max renewal age: %v", err)
		}
	}
	clock.Add(3*time.Minute + time.Second)
	_, _, err = dial(t, addr, ca, svid).FetchSVID(ctx, nil)
	wantCode(t, err, codes.Unauthenticated)
	if !strings.Contains(err.Error(), "new join token") || !strings.Contains(err.Error(), "max-renewal-age") {
		t.Fatalf("refusal does not say what to do: %v", err)
	}
	// A new join token (with or without the old SVID) starts a new chain.
	fresh, _, err := dial(t, addr, ca, svid).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatalf("re-attestation with a new join token: %v", err)
	}
	clock.Add(time.Hour)
	if _, _, err := dial(t, addr, ca, fresh).FetchSVID(ctx, nil); err != nil {
		t.Fatalf("renewal after re-attestation: %v", err)
	}
}

// TestKubernetesIdentityRenewalNeedsToken: an SVID attested with a
// Kubernetes token never renews on the SVID alone. The attestor here is a
// stand-in that accepts one token (the TokenReview attestor against a real
// API server, with a deleted pod, is tested in pkg/identity/kube).
func TestKubernetesIdentityRenewalNeedsToken(t *testing.T) {
	ctx := context.Background()
	ca, clock := nearNowCA(t, 10*time.Hour, nil)
	web := testutil.ID("/ns/default/sa/web")
	valid := true
	k8s := identity.AttestorFunc(func(_ context.Context, token string) (spiffeid.ID, error) {
		if token != "pod-token" || !valid {
			return spiffeid.ID{}, identity.ErrUnauthenticated
		}
		return web, nil
	})
	addr := serve(t, ca, map[string]identity.Attestor{identity.KindK8sSAT: k8s, identity.KindJoinToken: ca.JoinTokens()})
	cred := &cav1.Credential{Kind: identity.KindK8sSAT, Token: "pod-token"}
	svid, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, cred)
	if err != nil {
		t.Fatal(err)
	}
	if att := attestationOf(t, svid); att.Kind != identity.KindK8sSAT {
		t.Fatalf("records %+v", att)
	}
	clock.Add(time.Minute)
	_, _, err = dial(t, addr, ca, svid).FetchSVID(ctx, nil)
	wantCode(t, err, codes.Unauthenticated)
	if !strings.Contains(err.Error(), "Kubernetes") || !strings.Contains(err.Error(), "token") {
		t.Fatalf("refusal does not say a token is needed: %v", err)
	}
	renewed, _, err := dial(t, addr, ca, svid).FetchSVID(ctx, cred)
	if err != nil {
		t.Fatalf("renewal with the SVID and a token: %v", err)
	}
	valid = false // the pod is gone
	_, _, err = dial(t, addr, ca, renewed).FetchSVID(ctx, cred)
	wantCode(t, err, codes.Unauthenticated)
}

// TestLegacySVIDRenewalBounded: an SVID issued before attestation records
// existed renews as if attested at its NotBefore, so its chain ends at most
// MaxRenewalAge after the CA is upgraded.
func TestLegacySVIDRenewalBounded(t *testing.T) {
	ctx := context.Background()
	ca, clock := nearNowCA(t, 20*time.Hour, func(c *identity.Config) { c.MaxRenewalAge = 3 * time.Hour })
	addr := serve(t, ca, nil)
	web := testutil.ID("/ns/default/sa/web")
	legacy := ca.SignUnrecordedForTest(t, web)
	if _, ok, err := identity.AttestationOf(legacy.Certificates[0]); ok || err != nil {
		t.Fatalf("legacy SVID has a record (%v, %v)", ok, err)
	}
	clock.Add(time.Hour)
	renewed, _, err := dial(t, addr, ca, legacy).FetchSVID(ctx, nil)
	if err != nil {
		t.Fatalf("legacy renewal within the bound: %v", err)
	}
	att := attestationOf(t, renewed)
	if att.Kind != identity.KindUnrecorded || !att.At.Equal(legacy.Certificates[0].NotBefore) {
		t.Fatalf("renewed legacy SVID records %+v, want %s at its NotBefore %s", att, identity.KindUnrecorded, legacy.Certificates[0].NotBefore)
	}
	clock.Add(2*time.Hour + time.Minute)
	_, _, err = dial(t, addr, ca, renewed).FetchSVID(ctx, nil)
	wantCode(t, err, codes.Unauthenticated)
}

// TestMaxRenewalAgeConfig: bad values are refused when the CA starts.
func TestMaxRenewalAgeConfig(t *testing.T) {
	store, err := identity.NewDiskStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		age  time.Duration
		want string
	}{
		{age: -time.Hour, want: "must be positive"},
		{age: 30 * time.Second, want: "shorter than a minute"},
	} {
		_, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store, MaxRenewalAge: tt.age})
		if !errors.Is(err, identity.ErrConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("MaxRenewalAge %s: err %v, want ErrConfig with %q", tt.age, err, tt.want)
		}
	}
	ca := testutil.NewCA(t, nil, nil)
	if got := ca.MaxRenewalAge(); got != 7*24*time.Hour {
		t.Fatalf("default max renewal age %s", got)
	}
}

// TestShortTTLForPrefixes: IDs under a configured path prefix get a
// shorter SVID lifetime, the longest prefix winning; bad rules are refused.
func TestShortTTLForPrefixes(t *testing.T) {
	clock := testutil.NewFakeClock()
	ca := testutil.NewCA(t, clock, func(c *identity.Config) {
		c.TTLByPrefix = []identity.PrefixTTL{{Prefix: "/ns/payments", TTL: 10 * time.Minute}, {Prefix: "/ns/payments/sa/ledger/", TTL: 2 * time.Minute}}
	})
	for path, want := range map[string]time.Duration{
		"/ns/payments/sa/api":     10 * time.Minute,
		"/ns/payments":            10 * time.Minute,
		"/ns/payments/sa/ledger":  2 * time.Minute,
		"/ns/payments-v2/sa/api":  identity.DefaultSVIDTTL,
		"/ns/default/sa/payments": identity.DefaultSVIDTTL,
	} {
		csr, _ := testutil.NewCSR(t, nil, nil)
		iss, err := ca.Sign(testutil.ID(path), csr)
		if err != nil {
			t.Fatal(err)
		}
		if got := iss.NotAfter.Sub(clock.Now()); got != want {
			t.Errorf("%s: SVID lives %s, want %s", path, got, want)
		}
	}

	store, err := identity.NewDiskStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		rules []identity.PrefixTTL
		want  string
	}{
		{rules: []identity.PrefixTTL{{Prefix: "ns/payments", TTL: 5 * time.Minute}}, want: "must start with /"},
		{rules: []identity.PrefixTTL{{Prefix: "/ns/pay ments", TTL: 5 * time.Minute}}, want: "not a SPIFFE ID path"},
		{rules: []identity.PrefixTTL{{Prefix: "/", TTL: 5 * time.Minute}}, want: "not a SPIFFE ID path"},
		{rules: []identity.PrefixTTL{{Prefix: "/ns/payments", TTL: 30 * time.Second}}, want: "shorter than a minute"},
		{rules: []identity.PrefixTTL{{Prefix: "/ns/payments", TTL: 2 * time.Hour}}, want: "not shorter than the SVID lifetime"},
		{rules: []identity.PrefixTTL{{Prefix: "/ns/payments", TTL: 5 * time.Minute}, {Prefix: "/ns/payments/", TTL: 6 * time.Minute}}, want: "given twice"},
	} {
		_, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store, TTLByPrefix: tt.rules})
		if !errors.Is(err, identity.ErrConfig) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: err %v, want ErrConfig with %q", tt.rules, err, tt.want)
		}
	}
}
