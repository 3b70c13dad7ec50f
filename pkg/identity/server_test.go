package identity_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// serve starts the CA's gRPC server on loopback with real TLS (the CA uses
// the real clock, since TLS checks validity against it).
func serve(t *testing.T, ca *identity.CA, attestors map[string]identity.Attestor) string {
	t.Helper()
	if attestors == nil {
		attestors = map[string]identity.Attestor{identity.KindJoinToken: ca.JoinTokens()}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := identity.NewServer(ca, attestors, nil).GRPCServer()
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return l.Addr().String()
}

func realCA(t *testing.T) *identity.CA {
	return testutil.NewCA(t, identity.RealClock, nil)
}

func joinToken(t *testing.T, ca *identity.CA, id spiffeid.ID) *cav1.Credential {
	t.Helper()
	tok, _, err := ca.CreateJoinToken(context.Background(), id, time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	return &cav1.Credential{Kind: identity.KindJoinToken, Token: tok}
}

func dial(t *testing.T, addr string, ca *identity.CA, svid x509svid.Source) *identity.Client {
	t.Helper()
	c, err := identity.Dial(addr, ca.TrustDomain(), ca, svid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(errors.Unwrap(err)) != code && status.Code(err) != code {
		t.Fatalf("err = %v, want code %s", err, code)
	}
}

func TestServerBootstrapAndRenew(t *testing.T) {
	ctx := context.Background()
	ca := realCA(t)
	addr := serve(t, ca, nil)
	web := testutil.ID("/ns/default/sa/web")

	svid, bundle, err := dial(t, addr, ca, nil).FetchSVID(ctx, joinToken(t, ca, web))
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != web {
		t.Fatalf("bootstrap SVID %s, want %s", svid.ID, web)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle.X509Bundle()); err != nil {
		t.Fatalf("bootstrap SVID does not verify: %v", err)
	}
	if len(bundle.JWTAuthorities()) != 1 {
		t.Fatalf("Sign response bundle has %d JWT keys, want 1", len(bundle.JWTAuthorities()))
	}

	// Renewal: present the SVID, no credential.
	renewed, _, err := dial(t, addr, ca, svid).FetchSVID(ctx, nil)
	if err != nil {
		t.Fatalf("renew over mTLS: %v", err)
	}
	if renewed.ID != web || renewed.Certificates[0].SerialNumber.Cmp(svid.Certificates[0].SerialNumber) == 0 {
		t.Fatalf("renewal gave %s serial %s", renewed.ID, renewed.Certificates[0].SerialNumber)
	}
	if _, _, err := x509svid.Verify(renewed.Certificates, ca); err != nil {
		t.Fatalf("renewed SVID does not verify: %v", err)
	}

	// An SVID may only renew itself: a credential for another ID is refused.
	db := testutil.ID("/ns/default/sa/db")
	_, _, err = dial(t, addr, ca, svid).FetchSVID(ctx, joinToken(t, ca, db))
	wantCode(t, err, codes.PermissionDenied)
}

func TestServerRefusals(t *testing.T) {
	ctx := context.Background()
	ca := realCA(t)
	addr := serve(t, ca, nil)
	client := dial(t, addr, ca, nil)

	_, _, err := client.FetchSVID(ctx, nil)
	wantCode(t, err, codes.Unauthenticated)

	_, _, err = client.FetchSVID(ctx, &cav1.Credential{Kind: "magic", Token: "x"})
	wantCode(t, err, codes.Unauthenticated)
	if !strings.Contains(err.Error(), "join_token") {
		t.Errorf("unknown kind error does not list accepted kinds: %v", err)
	}

	_, _, err = client.FetchSVID(ctx, &cav1.Credential{Kind: identity.KindJoinToken, Token: "tjt_nope"})
	wantCode(t, err, codes.Unauthenticated)

	// The CA's own identity is never issued, whatever the credential says.
	// No join token can name the CA; an attestor that did (a Kubernetes
	// token of tether-system/tether-ca) is refused at Sign.
	caAttestor := identity.AttestorFunc(func(context.Context, string) (spiffeid.ID, error) { return identity.CAID(ca.TrustDomain()), nil })
	_, _, err = dial(t, serve(t, ca, map[string]identity.Attestor{identity.KindK8sSAT: caAttestor}), ca, nil).
		FetchSVID(ctx, &cav1.Credential{Kind: identity.KindK8sSAT, Token: "x"})
	wantCode(t, err, codes.PermissionDenied)
}

// rawSign calls Sign with a CSR the test made, to send bad input.
func rawSign(t *testing.T, addr string, ca *identity.CA, req *cav1.SignRequest) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsClientConfig(ca))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = cav1.NewCAClient(conn).Sign(context.Background(), req)
	return err
}

func TestServerBadCSRAndOversizedRequest(t *testing.T) {
	ca := realCA(t)
	addr := serve(t, ca, nil)
	err := rawSign(t, addr, ca, &cav1.SignRequest{Csr: []byte("garbage"), Credential: joinToken(t, ca, testutil.ID("/x"))})
	wantCode(t, err, codes.InvalidArgument)
	err = rawSign(t, addr, ca, &cav1.SignRequest{Csr: make([]byte, identity.MaxRequestSize+1), Credential: joinToken(t, ca, testutil.ID("/x"))})
	wantCode(t, err, codes.ResourceExhausted)
}

// TestServerRejectsForeignClientCert: a client certificate that does not
// chain to the bundle fails the handshake.
func TestServerRejectsForeignClientCert(t *testing.T) {
	ca := realCA(t)
	other := realCA(t)
	addr := serve(t, ca, nil)
	csr, key := testutil.NewCSR(t, nil, nil)
	iss, err := other.Sign(testutil.ID("/ns/default/sa/web"), csr)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for _, der := range iss.Chain {
		c, _ := x509.ParseCertificate(der)
		certs = append(certs, c)
	}
	foreign := &x509svid.SVID{ID: iss.ID, Certificates: certs, PrivateKey: key}
	_, _, err = dial(t, addr, ca, foreign).FetchSVID(context.Background(), nil)
	if err == nil {
		t.Fatal("renewal with an SVID from another CA succeeded")
	}
}

// TestClientRefusesImpostorCA: a client holding the real bundle refuses a
// server whose SVID chains elsewhere.
func TestClientRefusesImpostorCA(t *testing.T) {
	ca := realCA(t)
	impostor := realCA(t)
	addr := serve(t, impostor, nil)
	_, _, err := dial(t, addr, ca, nil).FetchSVID(context.Background(), joinToken(t, impostor, testutil.ID("/x")))
	if err == nil || status.Code(errors.Unwrap(err)) != codes.Unavailable {
		t.Fatalf("talking to an impostor CA: err = %v, want a failed handshake", err)
	}
}

func TestWatchBundle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca := realCA(t)
	addr := serve(t, ca, nil)
	type update struct {
		b   *spiffebundle.Bundle
		seq uint64
	}
	updates := make(chan update, 4)
	go dial(t, addr, ca, nil).WatchBundle(ctx, func(b *spiffebundle.Bundle) {
		seq, _ := b.SequenceNumber()
		updates <- update{b, seq}
	})
	first := <-updates
	if first.seq != ca.Bundle().Sequence || len(first.b.X509Authorities()) != 1 || len(first.b.JWTAuthorities()) != 1 {
		t.Fatalf("first update seq %d roots %d", first.seq, len(first.b.X509Authorities()))
	}
	if err := ca.Rotate(ctx, identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	select {
	case u := <-updates:
		if u.seq <= first.seq || len(u.b.X509Authorities()) != 2 || len(u.b.JWTAuthorities()) != 2 {
			t.Fatalf("after prepare: seq %d (was %d), %d roots", u.seq, first.seq, len(u.b.X509Authorities()))
		}
	case <-ctx.Done():
		t.Fatal("no bundle update after prepare")
	}
}

// A CA that stops answering without closing the connection ends a
// WatchBundle stream through the keepalive pings, so the caller watches
// again (the agent reconnects) instead of waiting forever. gRPC pings at
// most every 10s: this test takes about 11s.
func TestWatchBundleNoticesSilentCA(t *testing.T) {
	ca := realCA(t)
	f := testutil.StartFreezer(t, serve(t, ca, nil))
	c, err := identity.Dial(f.Addr(), ca.TrustDomain(), ca, nil,
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: time.Second, PermitWithoutStream: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	got := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- c.WatchBundle(context.Background(), func(*spiffebundle.Bundle) {
			select {
			case got <- struct{}{}:
			default:
			}
		})
	}()
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("no first bundle")
	}
	f.Freeze()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("WatchBundle returned nil for a dead connection, want an error")
		}
		t.Logf("WatchBundle ended: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("WatchBundle still waiting 20s after the CA went silent")
	}
}

// TestServerRefusedCSRDoesNotSpendToken: a request refused for its CSR
// leaves its single-use token unspent; the same token then works.
func TestServerRefusedCSRDoesNotSpendToken(t *testing.T) {
	ctx := context.Background()
	ca := realCA(t)
	addr := serve(t, ca, nil)
	web := testutil.ID("/ns/default/sa/web")
	cred := joinToken(t, ca, web)
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	weak, _ := testutil.NewCSR(t, p224, nil)
	good, _ := testutil.NewCSR(t, nil, nil)
	badSig := bytes.Clone(good)
	badSig[len(badSig)-1] ^= 0xff
	for name, csr := range map[string][]byte{"empty": nil, "garbage": []byte("garbage"), "P-224 key": weak, "bad signature": badSig} {
		err := rawSign(t, addr, ca, &cav1.SignRequest{Csr: csr, Credential: cred})
		wantCode(t, err, codes.InvalidArgument)
		if !strings.Contains(err.Error(), "certificate signing request") {
			t.Errorf("%s CSR: %v, want an error about the CSR", name, err)
		}
	}
	svid, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, cred)
	if err != nil {
		t.Fatalf("the token was spent by refused requests: %v", err)
	}
	if svid.ID != web {
		t.Fatalf("SVID %s, want %s", svid.ID, web)
	}
	// Spent now: a second good request is refused.
	_, _, err = dial(t, addr, ca, nil).FetchSVID(ctx, cred)
	wantCode(t, err, codes.Unauthenticated)

	// A token for db presented with web's SVID is refused, and not spent.
	db := testutil.ID("/ns/default/sa/db")
	dbCred := joinToken(t, ca, db)
	_, _, err = dial(t, addr, ca, svid).FetchSVID(ctx, dbCred)
	wantCode(t, err, codes.PermissionDenied)
	if got, _, err := dial(t, addr, ca, nil).FetchSVID(ctx, dbCred); err != nil || got.ID != db {
		t.Fatalf("the token refused with another SVID was spent: %v", err)
	}
}
