package proxy_test

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	tu "github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// swappable is an identity whose SVID and bundle the test replaces, as a
// sidecar's agent does on renewal and bundle changes.
type swappable struct{ cur atomic.Pointer[static] }

func newSwappable(s static) *swappable { w := &swappable{}; w.set(s); return w }

func (w *swappable) set(s static)                         { w.cur.Store(&s) }
func (w *swappable) GetX509SVID() (*x509svid.SVID, error) { return w.cur.Load().svid, nil }
func (w *swappable) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return w.cur.Load().bundle, nil
}

func union(bs ...*x509bundle.Bundle) *x509bundle.Bundle {
	out := x509bundle.New(tu.TrustDomain)
	for _, b := range bs {
		for _, a := range b.X509Authorities() {
			out.AddX509Authority(a)
		}
	}
	return out
}

// serveWith starts an inbound side in front of an echo app (to == "") or
// an outbound side to the inbound side at to, with a swappable identity.
func serveWith(t *testing.T, id *swappable, to string) *side {
	t.Helper()
	if to == "" {
		target, err := proxy.FixedTarget(echo(t, ""))
		if err != nil {
			t.Fatal(err)
		}
		return start(t, proxy.Config{Identity: id}, func(p *proxy.Proxy, ctx context.Context, l net.Listener) error {
			return p.ServeInbound(ctx, l, target)
		})
	}
	dest := proxy.Destination{Name: "server", Addr: to, IDs: []spiffeid.ID{serverID}}
	return start(t, proxy.Config{Identity: id}, func(p *proxy.Proxy, ctx context.Context, l net.Listener) error {
		return p.ServeOutbound(ctx, l, proxy.FixedRoute(dest))
	})
}

// After a root leaves the bundle (retire), a pooled tunnel authenticated
// through it takes no new stream: the next call makes a new handshake with
// the new SVIDs, and a peer that still offers the old tunnel is refused.
func TestRetiredRootEndsTunnelReuse(t *testing.T) {
	oldCA, newCA := newMesh(t), newMesh(t)
	srvOld, cliOld := oldCA.identity(serverID, false), oldCA.identity(clientID, false)
	srvNew, cliNew := newCA.identity(serverID, false), newCA.identity(clientID, false)
	both := union(srvOld.bundle, srvNew.bundle)

	srv, cli := newSwappable(srvOld), newSwappable(cliOld)
	in := serveWith(t, srv, "")
	out := serveWith(t, cli, in.addr)
	var calls float64
	call := func(want string) {
		t.Helper()
		c, err := net.Dial("tcp", out.addr)
		if err == nil {
			defer c.Close()
			err = roundTrip(c, "hello")
		} else if want == "" {
			t.Fatal(err)
		}
		// else: the refusal (a reset) came before the dial returned; the
		// proxy accepted and recorded the connection all the same.
		if want == "" && err != nil {
			t.Fatalf("call failed: %v", err)
		}
		if want != "" && err == nil {
			t.Fatalf("call succeeded, want it refused (%s)", want)
		}
		if c != nil {
			c.Close()
		}
		calls++
		eventually(t, "the stream to end", func() bool {
			return counter(t, out.reg, "tether_sidecar_connections_total", "direction", "outbound") == calls
		})
	}
	fresh := func() float64 {
		return counter(t, out.reg, "tether_sidecar_outbound_streams_total", "reused", "false")
	}

	call("")
	// prepare: both roots trusted, old SVIDs: the tunnel is reused.
	srv.set(static{svid: srvOld.svid, bundle: both})
	cli.set(static{svid: cliOld.svid, bundle: both})
	call("")
	if n := fresh(); n != 1 {
		t.Fatalf("%v handshakes while the old root is still trusted, want 1", n)
	}
	// activate + renewal on both sides, then retire: only the new root.
	srv.set(static{svid: srvNew.svid, bundle: srvNew.bundle})
	cli.set(static{svid: cliNew.svid, bundle: cliNew.bundle})
	call("")
	if n := fresh(); n != 2 {
		t.Fatalf("%v handshakes after the old root was retired, want 2 (the pooled tunnel must not be reused)", n)
	}

	// A client that never learned of the retire keeps offering its old
	// tunnel: the server refuses new streams on it.
	srv2, cli2 := newSwappable(srvOld), newSwappable(cliOld)
	in2 := serveWith(t, srv2, "")
	out, calls = serveWith(t, cli2, in2.addr), 0
	call("")
	srv2.set(static{svid: srvNew.svid, bundle: srvNew.bundle})
	call("the caller's root was retired")
	eventually(t, "the inbound refusal in the access log", func() bool {
		return strings.Contains(in2.accessLog(), "no longer in the trust bundle")
	})
}

// When the server learns of a retire before the client, every tunnel in the
// client's pool is stale to the server but still trusted by the client: the
// server closes each one it gets a stream on. A call must not fail however
// many of them are pooled: after the first, it retries on a new handshake.
func TestRetireSeenFirstByServerWithManyPooledTunnels(t *testing.T) {
	oldCA, newCA := newMesh(t), newMesh(t)
	srvOld, cliOld := oldCA.identity(serverID, false), oldCA.identity(clientID, false)
	srvNew, cliNew := newCA.identity(serverID, false), newCA.identity(clientID, false)
	both := union(srvOld.bundle, srvNew.bundle)

	// prepare: both roots trusted, old SVIDs.
	srv, cli := newSwappable(static{svid: srvOld.svid, bundle: both}), newSwappable(static{svid: cliOld.svid, bundle: both})
	in := serveWith(t, srv, "")
	out := serveWith(t, cli, in.addr)

	// Fill the client's pool with tunnels of the old generation: streams
	// open at the same time take one tunnel each.
	const pooled = 4
	var conns []net.Conn
	for range pooled {
		c, err := net.Dial("tcp", out.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := roundTrip(c, "hello"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Close()
	}
	eventually(t, "the streams to end and their tunnels to be pooled", func() bool {
		return counter(t, out.reg, "tether_sidecar_connections_total", "direction", "outbound") == pooled
	})
	if n := counter(t, out.reg, "tether_sidecar_outbound_streams_total", "reused", "false"); n != pooled {
		t.Fatalf("%v handshakes for %d concurrent streams, want %d", n, pooled, pooled)
	}

	// activate + renewal on both sides; then the server, not yet the
	// client, learns of the retire.
	cli.set(static{svid: cliNew.svid, bundle: both})
	srv.set(static{svid: srvNew.svid, bundle: srvNew.bundle})

	c, err := net.Dial("tcp", out.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, "hello"); err != nil {
		t.Fatalf("call with %d stale tunnels pooled failed: %v", pooled, err)
	}
	if n := counter(t, out.reg, "tether_sidecar_outbound_streams_total", "reused", "false"); n != pooled+1 {
		t.Fatalf("%v handshakes, want %d (one new one for the call)", n, pooled+1)
	}
}
