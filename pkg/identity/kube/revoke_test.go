package kube

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/kubetest"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestRevocationAcrossReplicas: two CA replicas share the real Secret
// store. A revocation made on replica A reaches replica B at its next
// store reload (its tick), after which B refuses the renewal it accepted
// before: by SPIFFE ID, by serial, and a revoked reusable join token.
func TestRevocationAcrossReplicas(t *testing.T) {
	env := kubetest.Start(t)
	env.EnsureNamespace(t, DefaultNamespace)
	ctx := testContext(t, 2*time.Minute)
	const tick = 200 * time.Millisecond
	replica := func(name string) (*identity.CA, string) {
		t.Helper()
		s, err := NewSecretStore(SecretStoreConfig{Client: env.Client.CoreV1(), Name: "revoke", Logger: testLogger(t).With("replica", name)})
		if err != nil {
			t.Fatal(err)
		}
		ca, err := identity.NewCA(ctx, identity.Config{TrustDomain: testutil.TrustDomain, Store: s, TickInterval: tick, Logger: testLogger(t).With("replica", name)})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- ca.Run(runCtx) }()
		t.Cleanup(func() { cancel(); <-done })
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g := identity.NewServer(ca, map[string]identity.Attestor{identity.KindJoinToken: ca.JoinTokens()}, testLogger(t).With("replica", name)).GRPCServer()
		go g.Serve(l)
		t.Cleanup(g.Stop)
		return ca, l.Addr().String()
	}
	caA, addrA := replica("A")
	caB, addrB := replica("B")

	fetch := func(addr string, ca *identity.CA, svid *x509svid.SVID, cred *cav1.Credential) (*x509svid.SVID, error) {
		t.Helper()
		var src x509svid.Source // nil, not a nil *SVID, to bootstrap
		if svid != nil {
			src = svid
		}
		c, err := identity.Dial(addr, ca.TrustDomain(), ca, src)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, _, err := c.FetchSVID(ctx, cred)
		return s, err
	}
	revoked := func(err error) error {
		if err == nil {
			return errors.New("accepted")
		}
		if status.Code(errors.Unwrap(err)) != codes.PermissionDenied && status.Code(err) != codes.PermissionDenied {
			return err
		}
		if !strings.Contains(err.Error(), "revoked") {
			return err
		}
		return nil
	}
	token := func(id string, reusable bool) *cav1.Credential {
		t.Helper()
		tok, _, err := caA.CreateJoinToken(ctx, testutil.ID(id), time.Hour, reusable)
		if err != nil {
			t.Fatal(err)
		}
		return &cav1.Credential{Kind: identity.KindJoinToken, Token: tok}
	}

	// Three SVIDs from A, each renewed on B before anything is revoked.
	web, err := fetch(addrA, caA, nil, token("/ns/default/sa/web", false))
	if err != nil {
		t.Fatal(err)
	}
	api, err := fetch(addrA, caA, nil, token("/ns/default/sa/api", false))
	if err != nil {
		t.Fatal(err)
	}
	dbCred := token("/ns/default/sa/db", true)
	db, err := fetch(addrA, caA, nil, dbCred)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*x509svid.SVID{web, api, db} {
		if _, err := fetch(addrB, caB, s, nil); err != nil {
			t.Fatalf("renewal of %s on B before revocation: %v", s.ID, err)
		}
	}

	// Revoke on A; B refuses within a few ticks. The token is made
	// before, so that B has loaded it when it has loaded the revocation.
	webCred := token("/ns/default/sa/web", false)
	start := time.Now()
	if _, err := caA.RevokeID(ctx, web.ID, identity.IDRevocation{Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := caA.RevokeSerial(ctx, api.Certificates[0].SerialNumber, ""); err != nil {
		t.Fatal(err)
	}
	h, err := identity.HashJoinToken(dbCred.GetToken())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := caA.RevokeJoinToken(ctx, h[:16], true, ""); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "replica B refuses the SVID of a revoked ID", func() error {
		_, err := fetch(addrB, caB, web, nil)
		return revoked(err)
	})
	t.Logf("replica B refused the revoked ID %s after the revocation on A (tick %s)", time.Since(start).Round(time.Millisecond), tick)
	// The three revocations are three writes: B may have reloaded between
	// them. Once it shows all of them, each must be enforced.
	eventually(t, 10*time.Second, "replica B shows all the revocations", func() error {
		if n := len(caB.Status().Revocations); n != 4 {
			return fmt.Errorf("%d revocations, want 4", n)
		}
		return nil
	})
	if err := revoked(func() error { _, err := fetch(addrB, caB, api, nil); return err }()); err != nil {
		t.Fatalf("replica B, renewal of a revoked serial: %v", err)
	}
	if err := revoked(func() error { _, err := fetch(addrB, caB, db, nil); return err }()); err != nil {
		t.Fatalf("replica B, renewal of an SVID of a revoked join token: %v", err)
	}
	if _, err := fetch(addrB, caB, nil, dbCred); status.Code(errors.Unwrap(err)) != codes.Unauthenticated && status.Code(err) != codes.Unauthenticated {
		t.Fatalf("replica B, the revoked reusable join token: %v, want Unauthenticated", err)
	}
	if _, err := fetch(addrB, caB, nil, webCred); revoked(err) != nil {
		t.Fatalf("replica B, new attestation of a revoked ID: %v", err)
	}
	if st := caB.Status(); len(st.Revocations) != 4 {
		t.Fatalf("replica B status shows %d revocations, want 4: %+v", len(st.Revocations), st.Revocations)
	}
}
