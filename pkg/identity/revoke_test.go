package identity_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// renew renews svid over mTLS with no credential.
func renew(t *testing.T, addr string, ca *identity.CA, svid *x509svid.SVID) (*x509svid.SVID, error) {
	t.Helper()
	s, _, err := dial(t, addr, ca, svid).FetchSVID(context.Background(), nil)
	return s, err
}

func wantRevoked(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: accepted, want refused as revoked", what)
	}
	wantCode(t, err, codes.PermissionDenied)
	if !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("%s: error does not say revoked: %v", what, err)
	}
}

// TestRevokeSPIFFEID: a stolen SVID (a copy of web's) renews itself on
// today's CA; after `tether ca revoke --spiffe-id` the CA refuses its
// renewal, JWT-SVIDs for it, and new attestation of web until unrevoked;
// after unrevoke the old SVIDs stay refused and a fresh token works.
func TestRevokeSPIFFEID(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	ca := testutil.NewCA(t, identity.RealClock, func(c *identity.Config) { c.Registerer = reg })
	addr := serve(t, ca, nil)
	web, db := testutil.ID("/ns/default/sa/web"), testutil.ID("/ns/default/sa/db")

	stolen, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, db))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := renew(t, addr, ca, stolen); err != nil {
		t.Fatalf("renewal before revocation: %v", err)
	}
	webToken := joinToken(t, ca, web) // created before the revocation, used after

	r, err := ca.RevokeID(ctx, web, identity.IDRevocation{Reason: "node disk copied"})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Blocking(time.Now()) || r.Kind != identity.RevokedID || r.Value != web.String() {
		t.Fatalf("revocation entry %+v", r)
	}
	_, err = renew(t, addr, ca, stolen)
	wantRevoked(t, "renewal of a revoked ID's SVID", err)
	_, err = dial(t, addr, ca, stolen).SignJWT(ctx, []string{"db"}, 0)
	wantRevoked(t, "JWT-SVID for a revoked ID", err)
	_, _, err = dial(t, addr, ca, nil).FetchSVID(ctx, webToken)
	wantRevoked(t, "attestation of a revoked ID", err)
	if _, _, err := ca.CreateJoinToken(ctx, web, time.Hour, false); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("a new join token for a revoked ID: %v, want refused as revoked", err)
	}
	if _, err := renew(t, addr, ca, other); err != nil {
		t.Fatalf("another ID's renewal: %v", err)
	}
	if got := metricValue(t, reg, "tether_ca_issuances_total", map[string]string{"kind": "mtls", "result": "revoked"}); got != 1 {
		t.Errorf("tether_ca_issuances_total{kind=mtls,result=revoked} = %v, want 1", got)
	}
	if got := metricValue(t, reg, "tether_ca_revocations", map[string]string{"kind": "spiffe_id"}); got != 1 {
		t.Errorf("tether_ca_revocations{kind=spiffe_id} = %v, want 1", got)
	}
	if rs := ca.Status().Revocations; len(rs) != 1 || rs[0].Value != web.String() || rs[0].Reason != "node disk copied" {
		t.Errorf("status revocations %+v", rs)
	}

	// Unrevoke: web may attest again, its old SVIDs stay refused.
	time.Sleep(1100 * time.Millisecond) // NotBefore has a one-second resolution
	if _, err := ca.Unrevoke(ctx, web); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Unrevoke(ctx, web); !errors.Is(err, identity.ErrConfig) {
		t.Errorf("second unrevoke: %v, want ErrConfig", err)
	}
	_, err = renew(t, addr, ca, stolen)
	wantRevoked(t, "renewal of an SVID issued before the unrevoke", err)
	time.Sleep(1100 * time.Millisecond)
	fresh, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatalf("attestation after unrevoke: %v", err)
	}
	if _, err := renew(t, addr, ca, fresh); err != nil {
		t.Fatalf("renewal of an SVID issued after the unrevoke: %v", err)
	}
}

// TestRevokeSPIFFEIDAllowReattest: with AllowReattest the SVIDs issued
// before are refused but a fresh credential works once every replica has
// loaded the revocation (two ticks).
func TestRevokeSPIFFEIDAllowReattest(t *testing.T) {
	ctx := context.Background()
	ca := testutil.NewCA(t, identity.RealClock, func(c *identity.Config) { c.TickInterval = 500 * time.Millisecond })
	addr := serve(t, ca, nil)
	web := testutil.ID("/ns/default/sa/web")
	old, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.RevokeID(ctx, web, identity.IDRevocation{AllowReattest: true, For: time.Hour}); !errors.Is(err, identity.ErrConfig) {
		t.Fatalf("allow-reattest with a period: %v, want ErrConfig", err)
	}
	if _, err := ca.RevokeID(ctx, web, identity.IDRevocation{AllowReattest: true}); err != nil {
		t.Fatal(err)
	}
	_, err = renew(t, addr, ca, old)
	wantRevoked(t, "renewal of an SVID issued before the revocation", err)
	_, _, err = dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, web))
	wantRevoked(t, "re-attestation before every replica can have loaded the revocation", err)
	time.Sleep(2100 * time.Millisecond) // two ticks, and NotBefore has a one-second resolution
	fresh, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatalf("re-attestation: %v", err)
	}
	if _, err := renew(t, addr, ca, fresh); err != nil {
		t.Fatalf("renewal of the re-attested SVID: %v", err)
	}
}

// TestRevokeSerial refuses one SVID and not another of the same ID.
func TestRevokeSerial(t *testing.T) {
	ctx := context.Background()
	ca := realCA(t)
	addr := serve(t, ca, nil)
	web := testutil.ID("/ns/default/sa/web")
	a, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatal(err)
	}
	serial, err := identity.ParseSerial(strings.ToUpper(a.Certificates[0].SerialNumber.Text(16)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.RevokeSerial(ctx, serial, ""); err != nil {
		t.Fatal(err)
	}
	_, err = renew(t, addr, ca, a)
	wantRevoked(t, "renewal of a revoked serial", err)
	if _, err := renew(t, addr, ca, b); err != nil {
		t.Fatalf("renewal of another SVID of the same ID: %v", err)
	}
	for _, bad := range []string{"", "0", "-5", "xyz", "0x"} {
		if _, err := identity.ParseSerial(bad); !errors.Is(err, identity.ErrConfig) {
			t.Errorf("ParseSerial(%q) = %v, want ErrConfig", bad, err)
		}
	}
	if n, err := identity.ParseSerial("0A:1b"); err != nil || n.Int64() != 0x0a1b {
		t.Errorf("ParseSerial with colons = %v, %v", n, err)
	}
}

// TestRevokeJoinToken: a reusable token, revoked by its listed hash, is
// refused, and the SVIDs it gave are refused renewal.
func TestRevokeJoinToken(t *testing.T) {
	ctx := context.Background()
	ca := realCA(t)
	addr := serve(t, ca, nil)
	web, db := testutil.ID("/ns/default/sa/web"), testutil.ID("/ns/default/sa/db")
	tok, exp, err := ca.CreateJoinToken(ctx, web, time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	cred := &cav1.Credential{Kind: identity.KindJoinToken, Token: tok}
	svid, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, cred)
	if err != nil {
		t.Fatal(err)
	}
	dbTok, _, err := ca.CreateJoinToken(ctx, db, time.Hour, true)
	if err != nil {
		t.Fatal(err)
	}
	live := ca.LiveJoinTokens()
	h, _ := identity.HashJoinToken(tok)
	if len(live) != 2 || live[0].Hash != h || live[0].SPIFFEID != web.String() || !live[0].ExpiresAt.Equal(exp) || !live[0].Reusable {
		t.Fatalf("live tokens %+v", live)
	}
	for _, bad := range []string{"", "abc", "zzzzzzzzzz", "0000000000000000"} {
		if _, err := ca.RevokeJoinToken(ctx, bad, true, ""); !errors.Is(err, identity.ErrConfig) {
			t.Errorf("revoke by hash %q: %v, want ErrConfig", bad, err)
		}
	}
	rs, err := ca.RevokeJoinToken(ctx, strings.ToUpper(h[:16]), true, "leaked in CI log")
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[0].Kind != identity.RevokedJoinToken || rs[1].Kind != identity.RevokedID || rs[1].Blocking(time.Now().Add(21*time.Second)) {
		t.Fatalf("revocations %+v", rs)
	}
	_, _, err = dial(t, addr, ca, nil).FetchSVID(ctx, cred)
	wantCode(t, err, codes.Unauthenticated)
	_, err = renew(t, addr, ca, svid)
	wantRevoked(t, "renewal of an SVID the revoked token gave", err)
	if live := ca.LiveJoinTokens(); len(live) != 1 || live[0].SPIFFEID != db.String() {
		t.Fatalf("live tokens after revocation %+v", live)
	}
	// Keeping the SVIDs: only the token goes.
	dbSVID, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, &cav1.Credential{Kind: identity.KindJoinToken, Token: dbTok})
	if err != nil {
		t.Fatal(err)
	}
	dh, _ := identity.HashJoinToken(dbTok)
	if _, err := ca.RevokeJoinToken(ctx, dh, false, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := renew(t, addr, ca, dbSVID); err != nil {
		t.Fatalf("renewal after revoking only the token: %v", err)
	}
	if _, err := ca.RevokeJoinToken(ctx, dh, false, ""); !errors.Is(err, identity.ErrConfig) || !strings.Contains(err.Error(), "no live join token") {
		t.Fatalf("revoking a revoked token again: %v", err)
	}
}

// TestRevocationsArePruned: entries leave the stored state once no SVID
// they can match is valid; a block without end stays until unrevoked; the
// list survives a restart (it is in the store).
func TestRevocationsArePruned(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	dir := t.TempDir()
	store, err := identity.NewDiskStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := identity.Config{TrustDomain: testutil.TrustDomain, Store: store, Clock: clock}
	ca, err := identity.NewCA(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := identity.ParseSerial("abcdef")
	mustRevoke := func(_ identity.Revocation, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mustRevoke(ca.RevokeSerial(ctx, serial, ""))
	mustRevoke(ca.RevokeID(ctx, testutil.ID("/reattest"), identity.IDRevocation{AllowReattest: true}))
	mustRevoke(ca.RevokeID(ctx, testutil.ID("/for"), identity.IDRevocation{For: 2 * time.Hour}))
	mustRevoke(ca.RevokeID(ctx, testutil.ID("/forever"), identity.IDRevocation{}))
	tok, _, err := ca.CreateJoinToken(ctx, testutil.ID("/tok"), 30*time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := identity.HashJoinToken(tok)
	if _, err := ca.RevokeJoinToken(ctx, h, false, ""); err != nil {
		t.Fatal(err)
	}
	stored := func() []identity.Revocation {
		b, err := os.ReadFile(filepath.Join(dir, identity.StateFile))
		if err != nil {
			t.Fatal(err)
		}
		st, err := identity.DecodeState(b)
		if err != nil {
			t.Fatal(err)
		}
		return st.Revocations
	}
	values := func(rs []identity.Revocation) string {
		var v []string
		for _, r := range rs {
			v = append(v, strings.TrimPrefix(r.Value, "spiffe://cluster.local"))
		}
		return strings.Join(v, " ")
	}
	inForce := func() []identity.Revocation {
		var rs []identity.Revocation
		for _, r := range ca.Revocations() {
			rs = append(rs, r.Revocation)
		}
		return rs
	}
	check := func(when string, want string) {
		t.Helper()
		if err := ca.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		if got := values(inForce()); got != want {
			t.Errorf("%s: in force %q, want %q", when, got, want)
		}
		if got := values(stored()); got != want {
			t.Errorf("%s: stored %q, want %q", when, got, want)
		}
	}
	check("at once", "abcdef /reattest /for /forever "+h)
	clock.Add(31 * time.Minute)
	check("after the token's expiry", "abcdef /reattest /for /forever")
	clock.Add(30 * time.Minute) // 61m: past SVID TTL (1h) + backdate (30s)
	check("after an SVID lifetime", "/for /forever")
	clock.Add(2 * time.Hour) // 3h01m: the 2h block ended 1h01m ago
	check("after the block and an SVID lifetime", "/forever")

	// A restart (or another replica) reads the list from the store.
	again, err := identity.NewCA(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := again.CheckAttestation(testutil.ID("/forever")); !errors.Is(err, identity.ErrRevoked) {
		t.Fatalf("after a restart, attestation of a revoked ID: %v, want ErrRevoked", err)
	}
	if _, err := again.Unrevoke(ctx, testutil.ID("/forever")); err != nil {
		t.Fatal(err)
	}
	clock.Add(61 * time.Minute)
	if err := again.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got := stored(); len(got) != 0 {
		t.Fatalf("an hour after the unrevoke, stored %+v, want none", got)
	}
}

// TestRevokeRefusals: bad revocation requests are refused with a reason.
func TestRevokeRefusals(t *testing.T) {
	ctx := context.Background()
	ca := testutil.NewCA(t, nil, nil)
	for name, id := range map[string]spiffeid.ID{
		"zero":         {},
		"other domain": spiffeid.RequireFromString("spiffe://other.org/x"),
		"the CA":       identity.CAID(ca.TrustDomain()),
	} {
		if _, err := ca.RevokeID(ctx, id, identity.IDRevocation{}); !errors.Is(err, identity.ErrConfig) {
			t.Errorf("revoke %s: %v, want ErrConfig", name, err)
		}
	}
	if _, err := ca.RevokeID(ctx, testutil.ID("/x"), identity.IDRevocation{For: -time.Second}); !errors.Is(err, identity.ErrConfig) {
		t.Errorf("negative period: %v", err)
	}
	if _, err := ca.Unrevoke(ctx, testutil.ID("/never")); !errors.Is(err, identity.ErrConfig) {
		t.Errorf("unrevoke of an ID never revoked: %v", err)
	}
	if _, err := ca.RevokeSerial(ctx, nil, ""); !errors.Is(err, identity.ErrConfig) {
		t.Errorf("nil serial: %v", err)
	}
	// A revocation only gets stricter.
	id := testutil.ID("/y")
	if _, err := ca.RevokeID(ctx, id, identity.IDRevocation{}); err != nil {
		t.Fatal(err)
	}
	r, err := ca.RevokeID(ctx, id, identity.IDRevocation{AllowReattest: true})
	if err != nil || !r.Until.IsZero() {
		t.Fatalf("a lighter revocation of a blocked ID: %+v, %v; want it still blocked", r, err)
	}
	if n := len(ca.Revocations()); n != 1 {
		t.Fatalf("%d entries, want 1", n)
	}
}

// TestRevokeCoversLaggingReplicas: until every replica has reloaded the
// store, a lagging one still renews the revoked SVID. With --allow-reattest
// that fresh SVID (issued after the revocation) must be refused too, or the
// thief keeps the identity for ever.
func TestRevokeCoversLaggingReplicas(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	ca := testutil.NewCA(t, clock, func(c *identity.Config) { c.TickInterval = 10 * time.Second })
	web := testutil.ID("/ns/default/sa/web")
	for _, revoke := range []func() error{
		func() error {
			_, err := ca.RevokeID(ctx, web, identity.IDRevocation{AllowReattest: true})
			return err
		},
		func() error {
			tok, _, err := ca.CreateJoinToken(ctx, web, time.Hour, true)
			if err != nil {
				return err
			}
			h, _ := identity.HashJoinToken(tok)
			_, err = ca.RevokeJoinToken(ctx, h, true, "")
			return err
		},
	} {
		clock.Add(2 * time.Hour) // past the previous entry
		if err := ca.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		if err := revoke(); err != nil {
			t.Fatal(err)
		}
		// A replica that has not reloaded yet renews the stolen SVID a tick later.
		clock.Add(10 * time.Second)
		csr, _ := testutil.NewCSR(t, nil, nil)
		iss, err := ca.Sign(web, csr)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := iss.Leaf()
		if err != nil {
			t.Fatal(err)
		}
		if err := ca.CheckRenewal(web, leaf); !errors.Is(err, identity.ErrRevoked) {
			t.Fatalf("an SVID a lagging replica renewed one tick after the revocation: %v, want ErrRevoked", err)
		}
		// After two ticks every replica has the entry: a fresh credential works.
		clock.Add(11 * time.Second)
		if err := ca.CheckAttestation(web); err != nil {
			t.Fatalf("attestation two ticks after an allow-reattest revocation: %v", err)
		}
		iss, err = ca.Sign(web, csr)
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ = iss.Leaf()
		if err := ca.CheckRenewal(web, leaf); err != nil {
			t.Fatalf("renewal of the re-attested SVID: %v", err)
		}
	}
}
