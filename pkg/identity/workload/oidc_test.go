package workload_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestJWTSVIDForClouds: the whole path a cloud sees. An application gets
// a JWT-SVID from its sidecar's Workload API (go-spiffe's client), and a
// stock OIDC client (go-oidc), knowing only the issuer URL, verifies it
// through the CA's discovery document.
func TestJWTSVIDForClouds(t *testing.T) {
	var handler atomic.Pointer[http.Handler]
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := handler.Load(); h != nil {
			(*h).ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	issuer := srv.URL + "/cluster-a"
	ca := testutil.NewCA(t, identity.RealClock, func(c *identity.Config) { c.JWTIssuer = issuer })
	h, err := identity.NewOIDCHandler(ca, identity.OIDCConfig{Issuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	handler.Store(&h)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := identity.NewServer(ca, map[string]identity.Attestor{identity.KindJoinToken: ca.JoinTokens()}, nil).GRPCServer()
	go g.Serve(l)
	t.Cleanup(g.Stop)
	a, run := newAgent(t, ca, l.Addr().String(), "/ns/ci/sa/deployer")
	run()
	path := testutil.ServeWorkloadAPI(t, a)
	ctx := testContext(t)
	waitFor(t, "the sidecar's SVID", func() bool { _, err := a.GetX509SVID(); return err == nil })

	j, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "sts.amazonaws.com"}, addr(path))
	if err != nil {
		t.Fatal(err)
	}
	octx := oidc.ClientContext(ctx, srv.Client())
	p, err := oidc.NewProvider(octx, issuer)
	if err != nil {
		t.Fatalf("go-oidc cannot read the discovery document: %v", err)
	}
	tok, err := p.VerifierContext(octx, &oidc.Config{ClientID: "sts.amazonaws.com"}).Verify(octx, j.Marshal())
	if err != nil {
		t.Fatalf("go-oidc refuses the Workload API's JWT-SVID: %v", err)
	}
	if want := testutil.ID("/ns/ci/sa/deployer").String(); tok.Subject != want || tok.Issuer != issuer {
		t.Fatalf("verified sub %q iss %q, want %q %q", tok.Subject, tok.Issuer, want, issuer)
	}
	if _, err := p.VerifierContext(octx, &oidc.Config{ClientID: "storage.googleapis.com"}).Verify(octx, j.Marshal()); err == nil {
		t.Fatal("verified for an audience the application did not ask for")
	}
}
