package proxy_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/proxy"
	"github.com/tether-mesh/tether/pkg/proxy/capture"
)

// countingListener counts the connections the sidecar accepts.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// selfOriginalDst is SO_ORIGINAL_DST of a connection no rule redirected:
// the address it was accepted on. The kernel's answer (capture.OriginalDst)
// is used when it has one (conntrack loaded); without conntrack the test
// stands in for it with that address.
func selfOriginalDst(t *testing.T) proxy.OriginalDstFunc {
	var logged atomic.Bool
	return func(c *net.TCPConn) (netip.AddrPort, error) {
		if a, err := capture.OriginalDst(c); err == nil {
			return a, nil
		} else if logged.CompareAndSwap(false, true) {
			t.Logf("SO_ORIGINAL_DST unavailable here (%v): using the accepted address, as the kernel would answer", err)
		}
		return c.LocalAddr().(*net.TCPAddr).AddrPort(), nil
	}
}

// TestConnectionToTheSidecarItselfDoesNotLoop: plaintext sent straight to
// the inbound capture port in permissive mode has that port as its
// original destination. The sidecar refuses it at once instead of
// delivering it to itself again and again; a mesh stream whose OPEN names
// the capture port is refused too.
func TestConnectionToTheSidecarItselfDoesNotLoop(t *testing.T) {
	m := newMesh(t)
	var accepted atomic.Int64
	cfg := proxy.Config{Identity: m.identity(serverID, false), InboundMode: proxy.Permissive, MaxConnections: 64, PeekTimeout: 50 * time.Millisecond}
	target := proxy.LocalTarget(selfOriginalDst(t), testSource)
	// The sidecar listens on the pod IP, as the capture port does.
	l, err := net.Listen("tcp", netip.AddrPortFrom(testPodIP, 0).String())
	if err != nil {
		t.Skipf("cannot listen on %s here: %v", testPodIP, err)
	}
	addr := l.Addr().String()
	l.Close()
	in := startOn(t, addr, cfg, func(p *proxy.Proxy, ctx context.Context, l net.Listener) error {
		return p.ServeInbound(ctx, countingListener{l, &accepted}, target)
	})
	c, err := net.Dial("tcp", in.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes from a connection to the sidecar itself", n)
	}
	time.Sleep(500 * time.Millisecond) // a loop would go on accepting meanwhile
	if n := accepted.Load(); n != 1 {
		t.Fatalf("the sidecar accepted %d connections for one plaintext connection to its own port; want 1 (no loop)", n)
	}
	if got := counter(t, in.reg, "tether_sidecar_connections_total", "direction", "inbound", "result", "loop"); got != 1 {
		t.Errorf("loop refusals counted: %v, want 1", got)
	}

	// A mesh stream to the capture port itself.
	_, ps, _ := net.SplitHostPort(in.addr)
	port, _ := strconv.Atoi(ps)
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "self", Addr: in.addr, Port: uint16(port), IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	if got, err := read(out.addr); err == nil && got != "" {
		t.Fatalf("stream to the sidecar's own port: %q", got)
	}
	eventually(t, "the stream to be refused as a loop", func() bool {
		return strings.Contains(in.accessLog(), "addressed to the sidecar itself")
	})
	if n := accepted.Load(); n != 2 {
		t.Fatalf("the sidecar accepted %d connections; want 2 (the plaintext one and the tunnel)", n)
	}
}

// TestPermissivePlaintextObeysPolicy: in permissive mode, plaintext has no
// identity, so it reaches only ports no policy restricts.
func TestPermissivePlaintextObeysPolicy(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	_, port, _ := net.SplitHostPort(app)
	// The allow-list restricts the app's port to clientID.
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{InboundMode: proxy.Permissive, Authorize: allowPort(clientID, port)})
	c, err := net.Dial("tcp", in.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, "plain hello"); err == nil {
		t.Fatal("plaintext reached a port the policy restricts")
	}
	eventually(t, "the denial to be counted", func() bool {
		return counter(t, in.reg, "tether_sidecar_authz_denials_total", "direction", "inbound", "source_id", "unauthenticated") == 1
	})
	// The allowed mesh caller still gets through on the same port.
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	if err := dialRoundTrip(out.addr, "mesh hello"); err != nil {
		t.Fatalf("allowed mesh caller: %v", err)
	}
	// With a rule that leaves the port open to callers without identity,
	// plaintext passes.
	open := inbound(t, m.identity(serverID, false), app, proxy.Config{InboundMode: proxy.Permissive, Authorize: allowPort(clientID, port),
		AuthorizeUnauthenticated: proxy.AllowUnauthenticated})
	if err := dialRoundTrip(open.addr, "plain hello"); err != nil {
		t.Fatalf("plaintext to a port no policy restricts: %v", err)
	}
}
