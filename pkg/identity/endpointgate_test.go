package identity_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	tu "github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// gateHint is the refresh hint of the bundle endpoint under test; with the
// default tick (10s) and BundleEndpointGateSlack the gate waits 40s.
const gateHint = 20 * time.Second

// endpointCA is a CA in a.example on an offset wall clock (TLS verifies in
// real time) whose store a second CA can open (a restart, or another
// replica); hint zero: no bundle endpoint.
func endpointCA(t *testing.T, store identity.Store, clock identity.Clock, hint time.Duration) *identity.CA {
	t.Helper()
	ca, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("a.example"),
		Store: store, Clock: clock, BundleEndpointRefreshHint: hint})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// serveEndpoint serves ca's bundle endpoint (https_spiffe) on loopback and
// returns a fetch with go-spiffe's stock client, as a federated domain's
// Federator or a SPIRE server does.
func serveEndpoint(t *testing.T, ca *identity.CA) (url string, fetch func() (*spiffebundle.Bundle, error)) {
	t.Helper()
	h, err := ca.BundleEndpointHandler(0)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := ca.BundleEndpointSPIFFETLS()
	if err != nil {
		t.Fatal(err)
	}
	url = serveTLS(t, h, tlsCfg)
	td := ca.TrustDomain()
	return url, func() (*spiffebundle.Bundle, error) {
		return federation.FetchBundle(context.Background(), td, url, federation.WithSPIFFEAuth(ca, identity.BundleEndpointID(td)))
	}
}

func endpointGate(t *testing.T, ca *identity.CA) *identity.BundleEndpointGate {
	t.Helper()
	g := ca.RotationStatus(context.Background()).BundleEndpoint
	if g == nil {
		t.Fatal("RotationStatus has no bundle endpoint gate while a generation is prepared and the endpoint is on")
	}
	return g
}

func wantRotationRefused(t *testing.T, err error, contains ...string) {
	t.Helper()
	if !errors.Is(err, identity.ErrRotation) {
		t.Fatalf("err = %v, want a refusal (ErrRotation)", err)
	}
	for _, c := range contains {
		if !strings.Contains(err.Error(), c) {
			t.Errorf("refusal does not say %q:\n%v", c, err)
		}
	}
}

// TestActivateWaitsForBundleEndpoint: with the bundle endpoint on, activate
// is refused until a follower (go-spiffe's FetchBundle) has fetched a
// bundle holding the prepared root and one refresh hint plus the margin has
// passed since; a fetch before prepare and a refused request do not count;
// the record survives a restart (the journal) and is seen by another
// replica on the same store.
func TestActivateWaitsForBundleEndpoint(t *testing.T) {
	ctx := context.Background()
	store, err := identity.NewDiskStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	clock := tu.NewOffsetClock(0)
	ca := endpointCA(t, store, clock, gateHint)
	url, fetch := serveEndpoint(t, ca)
	if _, err := fetch(); err != nil { // before prepare: the old root only
		t.Fatalf("fetch: %v", err)
	}
	if g := ca.RotationStatus(ctx).BundleEndpoint; g != nil {
		t.Fatalf("a gate %+v while nothing is prepared", g)
	}
	if err := ca.Rotate(ctx, identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	g := endpointGate(t, ca)
	if g.Generation != 2 || !g.Served.At.IsZero() || g.Blocked == nil || g.RefreshHint != gateHint || g.Margin != 10*time.Second+identity.BundleEndpointGateSlack {
		t.Fatalf("gate after prepare = %+v, want generation 2 not served, blocked, hint 20s, margin 20s", g)
	}

	// A request the handler refuses (405) is no fetch.
	td := ca.TrustDomain()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.TLSClientConfig(ca, tlsconfig.AuthorizeID(identity.BundleEndpointID(td)))}}
	resp, err := client.Post(url, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST answered %d", resp.StatusCode)
	}

	clock.Set(2 * time.Minute) // past the propagation delay (1m)
	err = ca.Rotate(ctx, identity.StepActivate, false)
	wantRotationRefused(t, err, "the bundle endpoint has not served the root of generation 2", "no federated trust domain has fetched it", "40s (its refresh hint 20s plus a margin of 20s)")
	if g := endpointGate(t, ca); !g.Served.At.IsZero() {
		t.Fatalf("served recorded at %s without a fetch of the prepared root", g.Served.At)
	}

	b, err := fetch()
	if err != nil {
		t.Fatalf("fetch after prepare: %v", err)
	}
	if len(b.X509Authorities()) != 2 {
		t.Fatalf("the follower got %d roots, want the active and the prepared one", len(b.X509Authorities()))
	}
	seq, _ := b.SequenceNumber()
	tu.Eventually(t, "the fetch to be recorded", 5*time.Second, func() bool { return !endpointGate(t, ca).Served.At.IsZero() })
	g = endpointGate(t, ca)
	if g.Served.Sequence != seq || g.Served.RefreshHint != gateHint || !g.PassesAt.Equal(g.Served.At.Add(40*time.Second)) {
		t.Fatalf("gate after the fetch = %+v, want sequence %d, hint 20s, passing 40s after it", g, seq)
	}
	err = ca.Rotate(ctx, identity.StepActivate, false)
	wantRotationRefused(t, err, "the bundle endpoint first served the root of generation 2 at", g.PassesAt.UTC().Format(time.RFC3339))

	// A restarted CA (or another replica) on the same store sees the record.
	again := endpointCA(t, store, clock, gateHint)
	if g2 := endpointGate(t, again); !g2.Served.At.Equal(g.Served.At) || g2.Served.Sequence != seq {
		t.Fatalf("after a restart the gate is %+v, want served at %s", g2, g.Served.At)
	}
	clock.Set(time.Until(g.PassesAt) - time.Second)
	wantRotationRefused(t, again.Rotate(ctx, identity.StepActivate, false), "first served the root of generation 2")
	clock.Set(time.Until(g.PassesAt) + time.Second)
	if err := again.Rotate(ctx, identity.StepActivate, false); err != nil {
		t.Fatalf("activate one refresh hint plus the margin after the first fetch: %v", err)
	}
	if g := again.RotationStatus(ctx).BundleEndpoint; g != nil {
		t.Fatalf("a gate %+v once nothing is prepared", g)
	}
}

// TestBundleEndpointGateOffAndForced: without a bundle endpoint there is no
// such gate; with one, --force overrides it and names it in the warning.
func TestBundleEndpointGateOffAndForced(t *testing.T) {
	ctx := context.Background()
	for _, hint := range []time.Duration{0, gateHint} {
		store, err := identity.NewDiskStore(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		clock := tu.NewOffsetClock(0)
		ca := endpointCA(t, store, clock, hint)
		if err := ca.Rotate(ctx, identity.StepPrepare, false); err != nil {
			t.Fatal(err)
		}
		clock.Set(2 * time.Minute)
		g := ca.RotationStatus(ctx).BundleEndpoint
		if hint == 0 {
			if g != nil {
				t.Fatalf("endpoint off: gate %+v", g)
			}
			if err := ca.Rotate(ctx, identity.StepActivate, false); err != nil {
				t.Fatalf("endpoint off: activate after the propagation delay: %v", err)
			}
			continue
		}
		warnings, err := ca.RotateStep(ctx, identity.StepActivate, true)
		if err != nil {
			t.Fatalf("forced activate: %v", err)
		}
		if len(warnings) != 1 || !strings.Contains(warnings[0], "--force: activate taken although the bundle endpoint has not served the root of generation 2") {
			t.Fatalf("forced activate warns %q", warnings)
		}
	}
}
