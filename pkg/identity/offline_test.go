package identity_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

func offlineRoot(t *testing.T, td spiffeid.TrustDomain, now time.Time) (cert, key []byte) {
	t.Helper()
	cert, key, err := identity.NewOfflineRoot(td, 365*24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func offlineCA(t *testing.T, dir string, clock *testutil.FakeClock, o *identity.OfflineIntermediate) (*identity.CA, error) {
	t.Helper()
	store, err := identity.NewDiskStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	return identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store, Clock: clock,
		OfflineIntermediate: o, AutoRotate: true})
}

// TestOfflineRootCA: the CA runs on an intermediate signed by a root whose
// key it never sees; its SVIDs verify (go-spiffe) against that root; the
// stored state holds no root key; steps that need the root key are
// refused with what to do.
func TestOfflineRootCA(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	rootDER, rootKey := offlineRoot(t, testutil.TrustDomain, clock.Now())
	inter, err := identity.SignOfflineIntermediate(rootDER, rootKey, 30*24*time.Hour, clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var logs bytes.Buffer
	store, err := identity.NewDiskStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA(ctx, identity.Config{TrustDomain: testutil.TrustDomain, Store: store, Clock: clock, OfflineIntermediate: inter,
		AutoRotate: true, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	roots := ca.Bundle().Bundle.X509Authorities()
	if len(roots) != 1 || !bytes.Equal(roots[0].Raw, rootDER) {
		t.Fatalf("bundle roots %d, want only the offline root", len(roots))
	}
	csr, key := testutil.NewCSR(t, nil, nil)
	web := testutil.ID("/ns/default/sa/web")
	iss, err := ca.Sign(web, csr)
	if err != nil {
		t.Fatal(err)
	}
	checkSVID(t, iss.Chain, key, ca.Bundle().Bundle, web, clock.Now())
	if !bytes.Equal(iss.Chain[1], inter.Chain[0]) {
		t.Error("the SVID is not signed by the operator's intermediate")
	}

	data, err := os.ReadFile(filepath.Join(dir, identity.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	st, err := identity.DecodeState(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range st.Generations {
		if len(g.RootKey) != 0 || !g.OfflineRoot {
			t.Errorf("generation %d: root key %d bytes, offline %v; want no root key", g.ID, len(g.RootKey), g.OfflineRoot)
		}
	}
	if bytes.Contains(data, rootKey) {
		t.Error("the root key is in the stored state")
	}
	if s := ca.Status(); len(s.Generations) != 1 || !s.Generations[0].RootOffline {
		t.Errorf("status %+v, want one generation with RootOffline", s.Generations)
	}

	if err := ca.Rotate(ctx, identity.StepPrepare, false); !errors.Is(err, identity.ErrOfflineRoot) || !errors.Is(err, identity.ErrRotation) {
		t.Fatalf("prepare: err = %v, want ErrOfflineRoot", err)
	}
	// When the intermediate is due for renewal (1/3 of its life left), the
	// CA says it needs a new one, and keeps working (its own serving SVID
	// included) until the intermediate ends.
	if err := ca.Tick(ctx); err != nil || logs.Len() != 0 {
		t.Fatalf("tick with a fresh intermediate: %v, logged %s", err, logs.String())
	}
	clock.Add(21 * 24 * time.Hour)
	if err := ca.Tick(ctx); err != nil {
		t.Fatalf("tick with the intermediate due: %v", err)
	}
	if !strings.Contains(logs.String(), "offline-root sign-intermediate") {
		t.Fatalf("no warning that the intermediate needs replacing; logged %q", logs.String())
	}
	if self, _ := ca.GetX509SVID(); !self.Certificates[0].NotAfter.After(clock.Now()) {
		t.Error("the CA's own serving SVID was not renewed")
	}
	if _, err := ca.Sign(web, csr); err != nil {
		t.Fatalf("the CA stopped signing while its intermediate is still valid: %v", err)
	}

	// The operator signs a new intermediate offline and restarts the CA.
	next, err := identity.SignOfflineIntermediate(rootDER, rootKey, 30*24*time.Hour, clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	restarted, err := offlineCA(t, dir, clock, next)
	if err != nil {
		t.Fatalf("restart with a new intermediate: %v", err)
	}
	iss, err = restarted.Sign(web, csr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(iss.Chain[1], next.Chain[0]) {
		t.Error("after the restart the CA does not sign with the new intermediate")
	}
	checkSVID(t, iss.Chain, key, restarted.Bundle().Bundle, web, clock.Now())
	if err := restarted.Tick(ctx); err != nil {
		t.Errorf("tick with a fresh intermediate: %v", err)
	}

	// Going back to the older intermediate is refused.
	if _, err := offlineCA(t, dir, clock, inter); !errors.Is(err, identity.ErrConfig) || !strings.Contains(err.Error(), "not after the one in use") {
		t.Errorf("restart with the older intermediate: err = %v, want ErrConfig", err)
	}
	// An intermediate under another root is refused.
	otherDER, otherKey := offlineRoot(t, testutil.TrustDomain, clock.Now())
	foreign, err := identity.SignOfflineIntermediate(otherDER, otherKey, 30*24*time.Hour, clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := offlineCA(t, dir, clock, foreign); !errors.Is(err, identity.ErrConfig) || !strings.Contains(err.Error(), "not the root of the active generation") {
		t.Errorf("restart with another root's intermediate: err = %v, want ErrConfig", err)
	}
}

func TestOfflineRootRefusesBadMaterial(t *testing.T) {
	clock := testutil.NewFakeClock()
	now := clock.Now()
	rootDER, rootKey := offlineRoot(t, testutil.TrustDomain, now)
	good, err := identity.SignOfflineIntermediate(rootDER, rootKey, 30*24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	otherDER, otherKey := offlineRoot(t, spiffeid.RequireTrustDomainFromString("other.example"), now)
	otherTD, err := identity.SignOfflineIntermediate(otherDER, otherKey, 30*24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	wrongKey, _ := identity.SignOfflineIntermediate(rootDER, rootKey, 30*24*time.Hour, now)
	expired, _ := identity.SignOfflineIntermediate(rootDER, rootKey, time.Hour, now.Add(-2*time.Hour))
	for name, tc := range map[string]struct {
		o    *identity.OfflineIntermediate
		want string
	}{
		"key of another intermediate": {&identity.OfflineIntermediate{Roots: good.Roots, Chain: good.Chain, Key: wrongKey.Key}, "does not match"},
		"another trust domain":        {otherTD, "trust domain"},
		"root that did not sign it":   {&identity.OfflineIntermediate{Roots: otherTD.Roots, Chain: good.Chain, Key: good.Key}, "does not chain"},
		"expired":                     {expired, "not now"},
		"no root":                     {&identity.OfflineIntermediate{Chain: good.Chain, Key: good.Key}, "no root"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := offlineCA(t, t.TempDir(), clock, tc.o); !errors.Is(err, identity.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrConfig mentioning %q", err, tc.want)
			}
		})
	}
	if _, _, err := identity.NewOfflineRoot(testutil.TrustDomain, 0, now); !errors.Is(err, identity.ErrConfig) {
		t.Errorf("root with no lifetime: %v", err)
	}
	if _, err := identity.SignOfflineIntermediate(rootDER, otherKey, time.Hour, now); !errors.Is(err, identity.ErrConfig) {
		t.Errorf("signing with a key that is not the root's: %v", err)
	}
	// A store made by a CA with its own online root does not switch.
	dir := t.TempDir()
	if _, err := offlineCA(t, dir, clock, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := offlineCA(t, dir, clock, good); !errors.Is(err, identity.ErrConfig) || !strings.Contains(err.Error(), "empty store") {
		t.Errorf("offline intermediate on an online-root store: %v", err)
	}
}
