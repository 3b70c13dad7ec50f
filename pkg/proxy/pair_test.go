package proxy_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/tether-mesh/tether/pkg/proxy"
)

func TestAllowedCallThroughSidecarPair(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	// FixedTarget's port is the app's port; allow exactly that.
	_, port, _ := net.SplitHostPort(app)
	in2 := inbound(t, m.identity(serverID, false), app, proxy.Config{Authorize: allowPort(clientID, port)})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in2.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	c, err := net.Dial("tcp", out.addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, "hello through the mesh"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	eventually(t, "access log entries", func() bool {
		return strings.Contains(in2.accessLog(), `"decision":"allow"`) && strings.Contains(out.accessLog(), `"decision":"allow"`)
	})
	for _, want := range []string{`"source_id":"` + clientID.String(), `"destination_id":"` + serverID.String(), `"bytes_received":22`} {
		if !strings.Contains(in2.accessLog(), want) {
			t.Errorf("inbound access log lacks %s:\n%s", want, in2.accessLog())
		}
	}
	if got := counter(t, in2.reg, "tether_sidecar_connections_total", "direction", "inbound", "result", "ok"); got != 1 {
		t.Errorf("inbound ok connections = %v, want 1", got)
	}
}

func allowPort(id spiffeid.ID, port string) proxy.Authorizer {
	l := proxy.AllowList{}
	if err := l.ParseAllow(id.String() + "=" + port); err != nil {
		panic(err)
	}
	return l.Authorizer()
}

func TestServerFirstProtocol(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "220 smtp.example ESMTP ready\r\n")
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "smtp", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	c, err := net.Dial("tcp", out.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	banner := make([]byte, 30)
	if _, err := io.ReadFull(c, banner); err != nil { // we never write first
		t.Fatalf("no banner from a server-first app: %v", err)
	}
	if !strings.HasPrefix(string(banner), "220 ") {
		t.Fatalf("banner %q", banner)
	}
}

// TestInboundRefusals: each kind of bad client is refused by the server
// sidecar and counted.
func TestInboundRefusals(t *testing.T) {
	m := newMesh(t)
	other := newMesh(t)
	app := echo(t, "")
	_, port, _ := net.SplitHostPort(app)
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{Authorize: allowPort(clientID, port), HandshakeTimeout: 300 * time.Millisecond})

	dialTLS := func(cfg *tls.Config) error {
		cfg.NextProtos = []string{proxy.ALPN}
		c, err := tls.Dial("tcp", in.addr, cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		return roundTrip(c, "x")
	}
	mtls := func(id static) *tls.Config {
		return tlsconfig.MTLSClientConfig(id, id, tlsconfig.AuthorizeID(serverID))
	}
	noCert := tlsconfig.TLSClientConfig(m.identity(clientID, false), tlsconfig.AuthorizeID(serverID))
	foreign := m.identity(clientID, false)
	foreign.svid = other.identity(clientID, false).svid // chains to another CA
	cases := []struct {
		name   string
		cfg    *tls.Config
		result string
	}{
		{"no client certificate", noCert, "handshake_error"},
		{"certificate from another CA", mtls(foreign), "handshake_error"},
		{"expired SVID", mtls(m.identity(clientID, true)), "handshake_error"},
		{"not speaking tether/1", mtls(m.identity(clientID, false)), "protocol_error"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := counter(t, in.reg, "tether_sidecar_connections_total", "direction", "inbound", "result", tc.result)
			if err := dialTLS(tc.cfg); err == nil {
				t.Fatal("the call went through")
			}
			eventually(t, "the refusal to be counted", func() bool {
				return counter(t, in.reg, "tether_sidecar_connections_total", "direction", "inbound", "result", tc.result) == before+1
			})
		})
	}
	// A mesh client with a valid SVID whose ID the policy does not allow.
	evil := outbound(t, m.identity(evilID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	if c, err := net.Dial("tcp", evil.addr); err == nil {
		if roundTrip(c, "let me in") == nil {
			t.Fatal("a disallowed SPIFFE ID got through")
		}
		c.Close()
	}
	eventually(t, "the authorization denial to be counted", func() bool {
		return counter(t, in.reg, "tether_sidecar_authz_denials_total", "source_id", evilID.String()) == 1
	})
	eventually(t, "the caller to log the refusal", func() bool {
		return strings.Contains(evil.accessLog(), "not on the allow-list")
	})
	if n := strings.Count(in.accessLog(), `"decision":"deny"`); n != len(cases)+1 {
		t.Errorf("access log has %d denials, want %d:\n%s", n, len(cases)+1, in.accessLog())
	}
	// Plaintext into a strict inbound is refused too.
	c, err := net.Dial("tcp", in.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if roundTrip(c, "GET / HTTP/1.1\r\n\r\n") == nil {
		t.Fatal("plaintext passed a strict inbound")
	}
}

func TestClientRefusesImpersonatingServer(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	// The server has a valid SVID, but for the wrong identity.
	in := inbound(t, m.identity(evilID, false), app, proxy.Config{})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	// The refusal may already reset the connection while it is being set up.
	if c, err := net.Dial("tcp", out.addr); err == nil {
		defer c.Close()
		if roundTrip(c, "secret") == nil {
			t.Fatal("client sidecar talked to an impostor")
		}
	}
	eventually(t, "the refusal to be counted", func() bool {
		return counter(t, out.reg, "tether_sidecar_connections_total", "direction", "outbound", "result", "handshake_error") == 1
	})
	if !strings.Contains(out.accessLog(), serverID.String()) || !strings.Contains(out.accessLog(), `"decision":"deny"`) {
		t.Errorf("access log does not record the refused impostor:\n%s", out.accessLog())
	}
}

func TestPermissiveMode(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{InboundMode: proxy.Permissive})
	// Plaintext from outside the mesh reaches the app.
	c, err := net.Dial("tcp", in.addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, "plain hello"); err != nil {
		t.Fatalf("plaintext in permissive mode: %v", err)
	}
	c.Close()
	// A server-first client that sends nothing still gets through after the peek timeout.
	bannerApp := echo(t, "HELLO\n")
	in2 := inbound(t, m.identity(serverID, false), bannerApp, proxy.Config{InboundMode: proxy.Permissive, PeekTimeout: 50 * time.Millisecond})
	c2, err := net.Dial("tcp", in2.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 6)
	if _, err := io.ReadFull(c2, b); err != nil || string(b) != "HELLO\n" {
		t.Fatalf("server-first plaintext in permissive mode: %q %v", b, err)
	}
	// And mesh mTLS still works on the same port.
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	c3, err := net.Dial("tcp", out.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if err := roundTrip(c3, "mesh hello"); err != nil {
		t.Fatalf("mTLS in permissive mode: %v", err)
	}
	c3.Close() // the access log records a connection when it ends
	eventually(t, "an mTLS access log entry", func() bool {
		return strings.Contains(in.accessLog(), clientID.String())
	})
}

func TestLimits(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	t.Run("handshake timeout", func(t *testing.T) {
		in := inbound(t, m.identity(serverID, false), app, proxy.Config{HandshakeTimeout: 100 * time.Millisecond})
		c, err := net.Dial("tcp", in.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("read data from a connection that never handshook")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("silent client held for %s", d)
		}
	})
	t.Run("max connections", func(t *testing.T) {
		in := inbound(t, m.identity(serverID, false), app, proxy.Config{MaxConnections: 1, InboundMode: proxy.Permissive})
		first, err := net.Dial("tcp", in.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		if err := roundTrip(first, "one"); err != nil {
			t.Fatal(err)
		}
		second, err := net.Dial("tcp", in.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer second.Close()
		if roundTrip(second, "two") == nil {
			t.Fatal("second connection served over the limit of 1")
		}
		if got := counter(t, in.reg, "tether_sidecar_connection_limit_rejections_total", "direction", "inbound"); got != 1 {
			t.Fatalf("limit rejections = %v, want 1", got)
		}
	})
	t.Run("idle timeout", func(t *testing.T) {
		in := inbound(t, m.identity(serverID, false), app, proxy.Config{IdleTimeout: 100 * time.Millisecond, InboundMode: proxy.Permissive})
		c, err := net.Dial("tcp", in.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := roundTrip(c, "x"); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("idle connection not closed")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("idle connection closed after %s", d)
		}
	})
}

func TestDrain(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{InboundMode: proxy.Permissive})
	c, err := net.Dial("tcp", in.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, "before"); err != nil {
		t.Fatal(err)
	}
	in.cancel() // stop accepting
	if err := <-in.stopped; err != nil {
		t.Fatalf("serve returned %v", err)
	}
	if _, err := net.DialTimeout("tcp", in.addr, time.Second); err == nil {
		t.Fatal("still accepting after shutdown began")
	}
	// The open connection keeps working while draining.
	if err := roundTrip(c, "during drain"); err != nil {
		t.Fatalf("open connection cut at shutdown: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := in.p.Shutdown(ctx); err == nil || !strings.Contains(err.Error(), "closed 1") {
		t.Fatalf("Shutdown past the deadline = %v, want it to report closing 1 connection", err)
	}
	if roundTrip(c, "after") == nil {
		t.Fatal("connection still open after the drain deadline")
	}
}

func TestConfigRefusals(t *testing.T) {
	m := newMesh(t)
	id := m.identity(serverID, false)
	for name, cfg := range map[string]proxy.Config{
		"no identity": {TrustDomain: id.svid.ID.TrustDomain()},
		"no td":       {Identity: id},
		"bad mode":    {Identity: id, TrustDomain: id.svid.ID.TrustDomain(), InboundMode: "lenient"},
	} {
		if _, err := proxy.New(cfg); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	if _, err := proxy.FixedTarget("no-port"); err == nil {
		t.Error("FixedTarget without port accepted")
	}
	for _, bad := range []string{"not-an-id", "spiffe://cluster.local/x=0", "spiffe://cluster.local/x=http", "spiffe://cluster.local/x="} {
		if err := (proxy.AllowList{}).ParseAllow(bad); err == nil {
			t.Errorf("ParseAllow(%q) accepted", bad)
		}
	}
}
