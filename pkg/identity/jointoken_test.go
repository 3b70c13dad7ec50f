package identity_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

func TestJoinTokens(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	ca := testutil.NewCA(t, clock, nil)
	id := testutil.ID("/demo/web")
	att := ca.JoinTokens()

	single, _, err := ca.CreateJoinToken(ctx, id, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := att.Attest(ctx, single); err != nil || got != id {
		t.Fatalf("first use: %v, %v; want %s", got, err, id)
	}
	if _, err := att.Attest(ctx, single); !errors.Is(err, identity.ErrUnauthenticated) {
		t.Fatalf("replayed single-use token: err = %v, want ErrUnauthenticated", err)
	}

	reusable, _, err := ca.CreateJoinToken(ctx, id, time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := att.Attest(ctx, reusable); err != nil {
			t.Fatalf("reusable token, use %d: %v", i+1, err)
		}
	}

	short, _, err := ca.CreateJoinToken(ctx, id, time.Minute, true)
	if err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Minute)
	if _, err := att.Attest(ctx, short); !errors.Is(err, identity.ErrUnauthenticated) || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired token: err = %v, want ErrUnauthenticated saying expired", err)
	}

	for name, tok := range map[string]string{
		"empty":      "",
		"no prefix":  strings.Repeat("a", 47),
		"short":      "tjt_abc",
		"bad base64": "tjt_" + strings.Repeat("!", 43),
		"unknown":    "tjt_" + strings.Repeat("A", 43),
		"huge":       "tjt_" + strings.Repeat("A", 1<<20),
	} {
		if _, err := att.Attest(ctx, tok); !errors.Is(err, identity.ErrUnauthenticated) {
			t.Errorf("%s token: err = %v, want ErrUnauthenticated", name, err)
		}
	}
}

func TestJoinTokenStoredHashed(t *testing.T) {
	ctx := context.Background()
	store, _ := identity.NewDiskStore(t.TempDir())
	ca, err := identity.NewCA(ctx, identity.Config{TrustDomain: testutil.TrustDomain, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := ca.CreateJoinToken(ctx, testutil.ID("/x"), time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	st, _, _ := store.Load(ctx)
	raw, _ := st.Encode()
	if strings.Contains(string(raw), tok) || strings.Contains(string(raw), tok[4:]) {
		t.Fatal("the store holds the join token in clear")
	}
	if len(st.JoinTokens) != 1 {
		t.Fatalf("store holds %d tokens, want 1", len(st.JoinTokens))
	}
}

// TestJoinTokenSingleUseAcrossReplicas: two CAs on one store; a single-use
// token consumed through one cannot be replayed through the other.
func TestJoinTokenSingleUseAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	store, _ := identity.NewDiskStore(t.TempDir())
	cfg := identity.Config{TrustDomain: testutil.TrustDomain, Store: store}
	a, err := identity.NewCA(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := a.CreateJoinToken(ctx, testutil.ID("/x"), time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := identity.NewCA(ctx, cfg) // sees the token
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.JoinTokens().Attest(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if _, err := b.JoinTokens().Attest(ctx, tok); !errors.Is(err, identity.ErrUnauthenticated) {
		t.Fatalf("replay through a second replica: err = %v, want ErrUnauthenticated", err)
	}
}

func TestCreateJoinTokenRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	ca := testutil.NewCA(t, nil, nil)
	for name, tc := range map[string]struct {
		id  string
		ttl time.Duration
	}{
		"zero ttl":           {"spiffe://cluster.local/x", 0},
		"negative ttl":       {"spiffe://cluster.local/x", -time.Hour},
		"ttl too long":       {"spiffe://cluster.local/x", 365 * 24 * time.Hour},
		"other trust domain": {"spiffe://evil.example/x", time.Hour},
		"bare trust domain":  {"spiffe://cluster.local", time.Hour},
		"the CA's own ID":    {"spiffe://cluster.local/ns/tether-system/sa/tether-ca", time.Hour},
		"reserved component": {"spiffe://cluster.local/ns/tether-system/sa/tether-discovery", time.Hour},
		"reserved namespace": {"spiffe://cluster.local/ns/tether-system/sa/anything", time.Hour},
		"the namespace path": {"spiffe://cluster.local/ns/tether-system", time.Hour},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := ca.CreateJoinToken(ctx, spiffeidMust(t, tc.id), tc.ttl, false)
			if !errors.Is(err, identity.ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
		})
	}
}

// TestReservedJoinTokens: the mesh's own identities (ns/tether-system) get a
// join token only when asked for explicitly, and the CA's own never.
func TestReservedJoinTokens(t *testing.T) {
	ctx := context.Background()
	ca := testutil.NewCA(t, nil, nil)
	disc := testutil.ID("/ns/tether-system/sa/tether-discovery")
	tok, _, err := ca.CreateReservedJoinToken(ctx, disc, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ca.JoinTokens().Attest(ctx, tok); err != nil || got != disc {
		t.Fatalf("reserved token: %v, %v; want %s", got, err, disc)
	}
	for _, id := range []string{"spiffe://cluster.local/ns/tether-system/sa/tether-ca", "spiffe://cluster.local"} {
		if _, _, err := ca.CreateReservedJoinToken(ctx, spiffeidMust(t, id), time.Hour, false); !errors.Is(err, identity.ErrConfig) {
			t.Errorf("reserved token for %s: err = %v, want ErrConfig", id, err)
		}
	}
	// Other namespaces merely starting with the same letters are not reserved.
	if _, _, err := ca.CreateJoinToken(ctx, testutil.ID("/ns/tether-system-apps/sa/web"), time.Hour, false); err != nil {
		t.Errorf("ns/tether-system-apps: %v", err)
	}
}
