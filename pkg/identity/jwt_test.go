package identity_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

func TestJWTSVIDOverMTLS(t *testing.T) {
	ctx := context.Background()
	ca := realCA(t)
	addr := serve(t, ca, nil)
	web := testutil.ID("/ns/default/sa/web")
	svid, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatal(err)
	}
	token, err := dial(t, addr, ca, svid).SignJWT(ctx, []string{"db", "cache"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got, err := jwtsvid.ParseAndValidate(token, ca.Bundle().SPIFFE, []string{"db"})
	if err != nil {
		t.Fatalf("go-spiffe rejects the JWT-SVID: %v", err)
	}
	if got.ID != web || got.Expiry.Sub(time.Now()) > time.Minute+time.Second {
		t.Fatalf("JWT-SVID for %s expiring %s", got.ID, got.Expiry)
	}
	if _, err := jwtsvid.ParseAndValidate(token, ca.Bundle().SPIFFE, []string{"other"}); err == nil {
		t.Fatal("JWT-SVID validated for an audience it does not name")
	}

	// Without an SVID there is no JWT-SVID.
	_, err = dial(t, addr, ca, nil).SignJWT(ctx, []string{"db"}, 0)
	wantCode(t, err, codes.Unauthenticated)
	// An audience is required.
	_, err = dial(t, addr, ca, svid).SignJWT(ctx, nil, 0)
	wantCode(t, err, codes.InvalidArgument)
	_, err = dial(t, addr, ca, svid).SignJWT(ctx, []string{strings.Repeat("a", 513)}, 0)
	wantCode(t, err, codes.InvalidArgument)
}

// TestJWTKeysFollowTheJournal: a token signed before a rotation validates
// until its generation is retired.
func TestJWTKeysFollowTheJournal(t *testing.T) {
	ctx := context.Background()
	ca := realCA(t)
	id := testutil.ID("/x")
	old, err := ca.SignJWT(id, []string{"a"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []identity.Step{identity.StepPrepare, identity.StepActivate} {
		if err := ca.Rotate(ctx, step, true); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := jwtsvid.ParseAndValidate(old.Token, ca.Bundle().SPIFFE, []string{"a"}); err != nil {
		t.Fatalf("token from the superseded generation: %v", err)
	}
	fresh, err := ca.SignJWT(id, []string{"a"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Rotate(ctx, identity.StepRetire, true); err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(old.Token, ca.Bundle().SPIFFE, []string{"a"}); err == nil {
		t.Fatal("token from a retired generation still validates")
	}
	if _, err := jwtsvid.ParseAndValidate(fresh.Token, ca.Bundle().SPIFFE, []string{"a"}); err != nil {
		t.Fatalf("token from the active generation: %v", err)
	}
}

func TestSignJWTClampsLifetime(t *testing.T) {
	clock := testutil.NewFakeClock()
	ca := testutil.NewCA(t, clock, nil)
	j, err := ca.SignJWT(testutil.ID("/x"), []string{"a"}, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := j.ExpiresAt.Sub(clock.Now()); got != identity.DefaultSVIDTTL {
		t.Fatalf("JWT lifetime %s, want clamped to %s", got, identity.DefaultSVIDTTL)
	}
	if _, err := ca.SignJWT(testutil.ID("/x"), []string{""}, 0); !errors.Is(err, identity.ErrConfig) {
		t.Fatalf("empty audience: err = %v", err)
	}
}
