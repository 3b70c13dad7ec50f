package main

import (
	"context"
	"crypto/x509"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/tether-mesh/tether/internal/cli"
	tu "github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// static is a fixed SVID and bundle: a proxy.Identity.
type static struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func (s static) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }
func (s static) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundle, nil
}

// testIdentities issues SVIDs for A and B from a test CA, as tether-ca
// would (ECDSA P-256, leaf and intermediate).
func testIdentities(tb testing.TB) (a, b static) {
	tb.Helper()
	clock := tu.NewFakeClock()
	clock.Set(time.Now().Add(-time.Hour))
	ca := tu.NewCA(tb, clock, nil)
	clock.Set(time.Now())
	issue := func(id string) static {
		csr, key := tu.NewCSR(tb, nil, nil)
		iss, err := ca.Sign(spiffeid.RequireFromString(id), csr)
		if err != nil {
			tb.Fatal(err)
		}
		var certs []*x509.Certificate
		for _, der := range iss.Chain {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				tb.Fatal(err)
			}
			certs = append(certs, c)
		}
		return static{svid: &x509svid.SVID{ID: iss.ID, Certificates: certs, PrivateKey: key}, bundle: ca.Bundle().Bundle}
	}
	return issue(idA), issue(idB)
}

// writeCerts writes A's and B's SVIDs as `tether svid fetch` does, for
// stunnel and haproxy.
func writeCerts(tb testing.TB, dir string, a, b static) certFiles {
	tb.Helper()
	for name, s := range map[string]static{"svid-a": a, "svid-b": b} {
		if err := cli.WriteSVID(filepath.Join(dir, name), s.svid, s.bundle); err != nil {
			tb.Fatal(err)
		}
	}
	return certFiles{
		aCert: filepath.Join(dir, "svid-a", "svid.pem"), aKey: filepath.Join(dir, "svid-a", "svid.key"),
		bCert: filepath.Join(dir, "svid-b", "svid.pem"), bKey: filepath.Join(dir, "svid-b", "svid.key"),
		bundle: filepath.Join(dir, "svid-a", "bundle.pem"),
	}
}

// tetherPair runs pkg/proxy in process as the two sidecars do in explicit
// mode (access log off, B allowing only A), and returns A's outbound
// address.
func tetherPair(tb testing.TB, a, b static, echo string) string {
	tb.Helper()
	serve := func(id static, authz proxy.Authorizer, run func(p *proxy.Proxy, ctx context.Context, l net.Listener) error) string {
		p, err := proxy.New(proxy.Config{Identity: id, TrustDomain: tu.TrustDomain, Authorize: authz})
		if err != nil {
			tb.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			run(p, ctx, l)
		}()
		tb.Cleanup(func() {
			cancel()
			<-done
			sctx, c := context.WithTimeout(context.Background(), time.Second)
			defer c()
			stopped := make(chan struct{})
			go func() {
				p.Shutdown(sctx)
				close(stopped)
			}()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				// Fail rather than hang: a stream that never ends keeps
				// Shutdown waiting even past its deadline.
				tb.Errorf("proxy.Shutdown did not return 5s after its 1s drain deadline: a stream through the pair never ended")
			}
		})
		return l.Addr().String()
	}
	allow := proxy.AllowList{}
	if err := allow.ParseAllow(idA); err != nil {
		tb.Fatal(err)
	}
	target, err := proxy.FixedTarget(echo)
	if err != nil {
		tb.Fatal(err)
	}
	inB := serve(b, allow.Authorizer(), func(p *proxy.Proxy, ctx context.Context, l net.Listener) error {
		return p.ServeInbound(ctx, l, target)
	})
	dest := proxy.Destination{Name: "b", Addr: inB, IDs: []spiffeid.ID{spiffeid.RequireFromString(idB)}}
	return serve(a, nil, func(p *proxy.Proxy, ctx context.Context, l net.Listener) error {
		return p.ServeOutbound(ctx, l, proxy.FixedRoute(dest))
	})
}

// relayPair runs two relays in process and returns A's address.
func relayPair(tb testing.TB, echo string) string {
	tb.Helper()
	up := echo
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		go serveRelay(l, up)
		tb.Cleanup(func() { l.Close() })
		up = l.Addr().String()
	}
	return up
}

// echoServer runs the echo server in process.
func echoServer(tb testing.TB, handle func(net.Conn)) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go accept(l, handle)
	tb.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

var _ proxy.Identity = static{}
