package workload_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
	"github.com/tether-mesh/tether/pkg/identity/agent"
	"github.com/tether-mesh/tether/pkg/identity/workload"
)

// The sidecar's agent is what the Workload API serves.
var _ workload.Source = (*agent.Agent)(nil)

// startCA serves a real-clock test CA on loopback.
func startCA(t *testing.T) (*identity.CA, string) {
	t.Helper()
	ca := testutil.NewCA(t, identity.RealClock, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := identity.NewServer(ca, map[string]identity.Attestor{identity.KindJoinToken: ca.JoinTokens()}, nil).GRPCServer()
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return ca, l.Addr().String()
}

// newAgent returns an agent for id (a path in the test trust domain),
// bootstrapped with a join token; run starts it.
func newAgent(t *testing.T, ca *identity.CA, addr, path string) (a *agent.Agent, run func()) {
	t.Helper()
	tok, _, err := ca.CreateJoinToken(context.Background(), testutil.ID(path), time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	a, err = agent.New(agent.Config{
		CAAddr: addr, Bundle: ca.Bundle().Bundle,
		Credential: func() (*cav1.Credential, error) {
			return &cav1.Credential{Kind: identity.KindJoinToken, Token: tok}, nil
		},
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, func() {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { a.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
}

func addr(path string) workloadapi.ClientOption { return workloadapi.WithAddr("unix://" + path) }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestStockClient drives the server with go-spiffe's own Workload API
// client, as an application would.
func TestStockClient(t *testing.T) {
	ca, caAddr := startCA(t)
	a, run := newAgent(t, ca, caAddr, "/ns/default/sa/web")
	run()
	path := testutil.ServeWorkloadAPI(t, a)
	ctx := testContext(t)
	web := testutil.ID("/ns/default/sa/web")

	t.Run("X509Source follows every rotation", func(t *testing.T) {
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(addr(path)))
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		svid, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		want, _ := a.GetX509SVID()
		if svid.ID != web || svid.Certificates[0].SerialNumber.Cmp(want.Certificates[0].SerialNumber) != 0 {
			t.Fatalf("source has %s serial %s, agent has %s serial %s", svid.ID, svid.Certificates[0].SerialNumber, want.ID, want.Certificates[0].SerialNumber)
		}
		if len(svid.Certificates) != 2 {
			t.Errorf("chain of %d certificates, want leaf and intermediate", len(svid.Certificates))
		}
		if _, err := src.GetX509BundleForTrustDomain(testutil.TrustDomain); err != nil {
			t.Fatal(err)
		}
		seen := svid.Certificates[0].SerialNumber
		for i := range 2 {
			a.RenewNow()
			waitFor(t, "the renewed SVID on the stream", func() bool {
				s, _ := src.GetX509SVID()
				return s.Certificates[0].SerialNumber.Cmp(seen) != 0
			})
			s, _ := src.GetX509SVID()
			cur, _ := a.GetX509SVID()
			if s.Certificates[0].SerialNumber.Cmp(cur.Certificates[0].SerialNumber) != 0 {
				t.Fatalf("rotation %d: source serial %s, agent serial %s", i, s.Certificates[0].SerialNumber, cur.Certificates[0].SerialNumber)
			}
			seen = s.Certificates[0].SerialNumber
		}
	})

	t.Run("bundles, also after a root rotation", func(t *testing.T) {
		set, err := workloadapi.FetchX509Bundles(ctx, addr(path))
		if err != nil {
			t.Fatal(err)
		}
		b, err := set.GetX509BundleForTrustDomain(testutil.TrustDomain)
		if err != nil {
			t.Fatal(err)
		}
		if !b.Equal(ca.Bundle().Bundle) {
			t.Fatal("FetchX509Bundles differs from the CA's bundle")
		}
		bs, err := workloadapi.NewBundleSource(ctx, workloadapi.WithClientOptions(addr(path)))
		if err != nil {
			t.Fatal(err)
		}
		defer bs.Close()
		if jb, err := bs.GetJWTBundleForTrustDomain(testutil.TrustDomain); err != nil || len(jb.JWTAuthorities()) == 0 {
			t.Fatalf("JWT bundle %v, %v; want the CA's keys", jb, err)
		}
		if err := ca.Rotate(ctx, identity.StepPrepare, false); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the prepared root on the bundle streams", func() bool {
			xb, err1 := bs.GetX509BundleForTrustDomain(testutil.TrustDomain)
			jb, err2 := bs.GetJWTBundleForTrustDomain(testutil.TrustDomain)
			return err1 == nil && err2 == nil && len(xb.X509Authorities()) == 2 && len(jb.JWTAuthorities()) == 2
		})
	})

	t.Run("JWT-SVIDs", func(t *testing.T) {
		js, err := workloadapi.NewJWTSource(ctx, workloadapi.WithClientOptions(addr(path)))
		if err != nil {
			t.Fatal(err)
		}
		defer js.Close()
		j, err := js.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", ExtraAudiences: []string{"cache"}})
		if err != nil {
			t.Fatal(err)
		}
		if j.ID != web {
			t.Fatalf("JWT-SVID for %s", j.ID)
		}
		// Validated locally with the JWT bundle from the stream...
		if _, err := jwtsvid.ParseAndValidate(j.Marshal(), js, []string{"db"}); err != nil {
			t.Fatalf("JWT-SVID does not validate against the streamed JWT bundle: %v", err)
		}
		// ...and by the Workload API.
		v, err := workloadapi.ValidateJWTSVID(ctx, j.Marshal(), "cache", addr(path))
		if err != nil {
			t.Fatal(err)
		}
		if v.ID != web {
			t.Fatalf("validated as %s", v.ID)
		}
		// Asking for our own ID explicitly is fine.
		if _, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "db", Subject: web}, addr(path)); err != nil {
			t.Fatal(err)
		}
		// The raw claims come back as a Struct.
		c := rawClient(t, path)
		resp, err := c.ValidateJWTSVID(withHeader(ctx), &workloadpb.ValidateJWTSVIDRequest{Audience: "db", Svid: j.Marshal()})
		if err != nil {
			t.Fatal(err)
		}
		if resp.SpiffeId != web.String() || resp.Claims.Fields["sub"].GetStringValue() != web.String() {
			t.Fatalf("ValidateJWTSVID = %v", resp)
		}
	})
}

// TestWaitsForTheFirstSVID: an app that starts before the sidecar has its
// identity gets it as soon as the sidecar does, with no client backoff.
func TestWaitsForTheFirstSVID(t *testing.T) {
	ca, caAddr := startCA(t)
	a, run := newAgent(t, ca, caAddr, "/late")
	path := testutil.ServeWorkloadAPI(t, a)
	ctx := testContext(t)

	// A one-shot fetch waits; it does not fail with PermissionDenied.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if _, err := workloadapi.FetchX509Context(short, addr(path)); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("fetch before the first SVID: %v, want DeadlineExceeded", err)
	}

	got := make(chan error, 1)
	var src *workloadapi.X509Source
	go func() {
		var err error
		src, err = workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(addr(path)))
		got <- err
	}()
	time.Sleep(300 * time.Millisecond) // the source's first request is open by now
	changed := a.Changed()
	run()
	<-changed // the agent has its first SVID
	ready := time.Now()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	// Had the server refused the first request, go-spiffe would retry only
	// after 1s, i.e. at least ~700ms after the agent became ready.
	if d := time.Since(ready); d > 400*time.Millisecond {
		t.Errorf("X509Source got its SVID %s after the agent had it; it should not wait for a client backoff", d)
	}
	if svid, err := src.GetX509SVID(); err != nil || svid.ID != testutil.ID("/late") {
		t.Fatalf("SVID %v, %v", svid, err)
	}
}

// TestMTLSBetweenWorkloads: two apps with two sidecars talk mTLS with
// go-spiffe's spiffetls, each authorizing the other by SPIFFE ID.
func TestMTLSBetweenWorkloads(t *testing.T) {
	ca, caAddr := startCA(t)
	ctx := testContext(t)
	sources := map[string]*workloadapi.X509Source{}
	for _, p := range []string{"/ns/shop/sa/api", "/ns/shop/sa/web"} {
		a, run := newAgent(t, ca, caAddr, p)
		run()
		src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(addr(testutil.ServeWorkloadAPI(t, a))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		sources[p] = src
	}
	apiID, webID := testutil.ID("/ns/shop/sa/api"), testutil.ID("/ns/shop/sa/web")

	l, err := spiffetls.ListenWithMode(ctx, "tcp", "127.0.0.1:0", spiffetls.MTLSServerWithSource(tlsconfig.AuthorizeID(webID), sources["/ns/shop/sa/api"]))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				peer, err := spiffetls.PeerIDFromConn(c)
				if err != nil {
					return
				}
				io.WriteString(c, "hello "+peer.String()+"\n")
			}()
		}
	}()

	dial := func(authorize spiffeid.ID, as string) (string, error) {
		c, err := spiffetls.DialWithMode(ctx, "tcp", l.Addr().String(), spiffetls.MTLSClientWithSource(tlsconfig.AuthorizeID(authorize), sources[as]))
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return bufio.NewReader(c).ReadString('\n')
	}

	line, err := dial(apiID, "/ns/shop/sa/web")
	if err != nil {
		t.Fatalf("web → api: %v", err)
	}
	if line != "hello "+webID.String()+"\n" {
		t.Fatalf("server saw %q", line)
	}
	// The client refuses a server that is not who it expects.
	if _, err := dial(testutil.ID("/ns/shop/sa/db"), "/ns/shop/sa/web"); err == nil || !strings.Contains(err.Error(), "unexpected ID") {
		t.Fatalf("dial expecting db reached api: %v", err)
	}
	// The server refuses a client it does not authorize (api calling itself).
	if line, err := dial(apiID, "/ns/shop/sa/api"); err == nil {
		t.Fatalf("api → api accepted: %q", line)
	}
}

func rawClient(t *testing.T, path string) workloadpb.SpiffeWorkloadAPIClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return workloadpb.NewSpiffeWorkloadAPIClient(conn)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, workload.HeaderKey, "true")
}

// TestBadRequests checks the status codes a client gets for requests the
// server refuses.
func TestBadRequests(t *testing.T) {
	ca, caAddr := startCA(t)
	a, run := newAgent(t, ca, caAddr, "/ns/default/sa/web")
	run()
	waitFor(t, "first SVID", func() bool { return a.Ready() == nil })
	c := rawClient(t, testutil.ServeWorkloadAPI(t, a))
	ctx := testContext(t)
	j, err := a.FetchJWTSVID(ctx, []string{"db"})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		call func(ctx context.Context) error
		code codes.Code
	}{
		{"FetchX509SVID without header", func(ctx context.Context) error {
			s, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.InvalidArgument},
		{"FetchX509Bundles without header", func(ctx context.Context) error {
			s, err := c.FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.InvalidArgument},
		{"FetchJWTBundles without header", func(ctx context.Context) error {
			s, err := c.FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.InvalidArgument},
		{"FetchJWTSVID without header", func(ctx context.Context) error {
			_, err := c.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"db"}})
			return err
		}, codes.InvalidArgument},
		{"ValidateJWTSVID without header", func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "db", Svid: j.Marshal()})
			return err
		}, codes.InvalidArgument},
		{"header not true", func(ctx context.Context) error {
			ctx = metadata.AppendToOutgoingContext(ctx, workload.HeaderKey, "yes")
			_, err := c.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"db"}})
			return err
		}, codes.InvalidArgument},
		{"FetchJWTSVID without audience", func(ctx context.Context) error {
			_, err := c.FetchJWTSVID(withHeader(ctx), &workloadpb.JWTSVIDRequest{})
			return err
		}, codes.InvalidArgument},
		{"FetchJWTSVID for a foreign ID", func(ctx context.Context) error {
			_, err := c.FetchJWTSVID(withHeader(ctx), &workloadpb.JWTSVIDRequest{Audience: []string{"db"}, SpiffeId: "spiffe://cluster.local/ns/default/sa/admin"})
			return err
		}, codes.PermissionDenied},
		{"ValidateJWTSVID garbage", func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(withHeader(ctx), &workloadpb.ValidateJWTSVIDRequest{Audience: "db", Svid: "not.a.jwt"})
			return err
		}, codes.InvalidArgument},
		{"ValidateJWTSVID wrong audience", func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(withHeader(ctx), &workloadpb.ValidateJWTSVIDRequest{Audience: "cache", Svid: j.Marshal()})
			return err
		}, codes.InvalidArgument},
		{"ValidateJWTSVID without audience", func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(withHeader(ctx), &workloadpb.ValidateJWTSVIDRequest{Svid: j.Marshal()})
			return err
		}, codes.InvalidArgument},
		{"ValidateJWTSVID without token", func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(withHeader(ctx), &workloadpb.ValidateJWTSVIDRequest{Audience: "db"})
			return err
		}, codes.InvalidArgument},
		{"FetchWITSVID is not served", func(ctx context.Context) error {
			s, err := c.FetchWITSVID(withHeader(ctx), &workloadpb.WITSVIDRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.Unimplemented},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(ctx); status.Code(err) != tt.code {
				t.Fatalf("got %v, want %s", err, tt.code)
			}
		})
	}
}

// TestNoIdentityYet: the unary JWT call says so instead of hanging.
func TestNoIdentityYet(t *testing.T) {
	ca, caAddr := startCA(t)
	a, _ := newAgent(t, ca, caAddr, "/never")
	c := rawClient(t, testutil.ServeWorkloadAPI(t, a))
	_, err := c.FetchJWTSVID(withHeader(testContext(t)), &workloadpb.JWTSVIDRequest{Audience: []string{"db"}})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "no identity yet") {
		t.Fatalf("FetchJWTSVID before the first SVID: %v", err)
	}
}

// TestShutdownEndsStreams: Serve returns promptly when its context ends,
// even with clients watching, and removes the socket.
func TestShutdownEndsStreams(t *testing.T) {
	ca, caAddr := startCA(t)
	a, run := newAgent(t, ca, caAddr, "/x")
	run()
	path := filepath.Join(t.TempDir(), "workload.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- workload.New(a, nil).ListenAndServe(ctx, path, workload.Access{}) }()
	waitFor(t, "the socket", func() bool { _, err := os.Stat(path); return err == nil })

	s, err := rawClient(t, path).FetchX509SVID(withHeader(testContext(t)), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Serve did not return with a stream open")
	}
	if _, err := s.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("open stream ended with %v, want Unavailable", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket file left behind after shutdown: %v", err)
	}
	if l, err := workload.Listen(path, workload.Access{}); err != nil {
		t.Errorf("cannot listen again after shutdown: %v", err)
	} else {
		l.Close()
	}
}

// TestStreamsSendOnlyChanges: an SVID renewal wakes every stream, but the
// bundle streams do not resend an unchanged bundle.
func TestStreamsSendOnlyChanges(t *testing.T) {
	ca, caAddr := startCA(t)
	a, run := newAgent(t, ca, caAddr, "/x")
	run()
	waitFor(t, "first SVID", func() bool { return a.Ready() == nil })
	c := rawClient(t, testutil.ServeWorkloadAPI(t, a))
	ctx, cancel := context.WithCancel(withHeader(testContext(t)))
	defer cancel()
	x509s, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	bundles, err := c.FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	jwts, err := c.FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := x509s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundles.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := jwts.Recv(); err != nil {
		t.Fatal(err)
	}
	a.RenewNow()
	second, err := x509s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if string(second.Svids[0].X509Svid) == string(first.Svids[0].X509Svid) {
		t.Fatal("the SVID stream resent the old SVID")
	}
	extra := make(chan string, 2)
	go func() {
		if _, err := bundles.Recv(); err == nil {
			extra <- "X.509 bundles"
		}
	}()
	go func() {
		if _, err := jwts.Recv(); err == nil {
			extra <- "JWT bundles"
		}
	}()
	select {
	case what := <-extra:
		t.Fatalf("the %s stream resent an unchanged bundle after an SVID renewal", what)
	case <-time.After(150 * time.Millisecond):
	}
}
