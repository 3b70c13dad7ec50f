package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/freeport"
	tu "github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// In these tests 127.0.0.2 stands for the pod IP: an address other than
// 127.0.0.1 that an app can listen on alone (Linux routes all of
// 127.0.0.0/8 to lo). The sidecar delivers to it from 127.0.0.6, as
// capture.DeliverySource.
var (
	testPodIP  = netip.MustParseAddr("127.0.0.2")
	testSource = netip.MustParseAddr("127.0.0.6")
)

// namedApp serves an app on addr that answers every connection with its
// name and the caller's address, then closes it. stop closes the listener.
func namedApp(t *testing.T, addr, name string) (stop func()) {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s from %s", name, c.RemoteAddr())
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return func() { l.Close() }
}

// podPort returns a port nothing listens on at 127.0.0.1 or at the pod IP,
// or skips the test if the pod IP cannot be listened on here.
func podPort(t *testing.T) uint16 {
	t.Helper()
	if l, err := net.Listen("tcp", netip.AddrPortFrom(testPodIP, 0).String()); err != nil {
		t.Skipf("cannot listen on %s here: %v", testPodIP, err)
	} else {
		l.Close()
	}
	port, err := freeport.Range(1, testPodIP.String(), loopback.String())
	if err != nil {
		t.Fatal(err)
	}
	return uint16(port)
}

// localInbound is a transparent-mode inbound sidecar (LocalTarget)
// listening on listen.
func localInbound(t *testing.T, m *mesh, listen string, originalDst proxy.OriginalDstFunc, cfg proxy.Config, opts ...proxy.LocalOption) *side {
	cfg.Identity = m.identity(serverID, false)
	target := proxy.LocalTarget(originalDst, testSource, opts...)
	return startOn(t, listen, cfg, func(p *proxy.Proxy, ctx context.Context, l net.Listener) error { return p.ServeInbound(ctx, l, target) })
}

func noOriginalDst(*net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("the test gives no original destination")
}

// read returns what the server at addr sends until it closes.
func read(addr string) (string, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// TestLocalTargetDelivery: in transparent mode, a stream reaches an app
// that listens on the pod IP only, connected from the delivery source, as
// another pod would reach it. On a port the pod opted in to loopback
// delivery (tether.dev/localhost-inbound-ports), it also reaches an app
// listening on 127.0.0.1 only; which of the two a port answered on is kept,
// and learnt again when it stops answering there.
func TestLocalTargetDelivery(t *testing.T) {
	m := newMesh(t)
	pod, lo, none := podPort(t), podPort(t), podPort(t)
	// The sidecar accepts at the pod IP, as REDIRECT in PREROUTING makes it.
	in := localInbound(t, m, netip.AddrPortFrom(testPodIP, 0).String(), noOriginalDst, proxy.Config{},
		proxy.LoopbackPorts(lo, none))
	client := m.identity(clientID, false)
	// call makes one stream to port through a client sidecar and returns
	// what the app answered, up to " from ", and the caller it saw.
	call := func(port uint16) (app, caller string) {
		t.Helper()
		out := outbound(t, client, proxy.Destination{Name: "app", Addr: in.addr, Port: port, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
		got, err := read(out.addr)
		if err != nil {
			t.Fatalf("stream to port %d: %v", port, err)
		}
		app, caller, _ = strings.Cut(got, " from ")
		return app, caller
	}
	at := func(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

	namedApp(t, at(testPodIP, pod), "pod-only")
	if app, caller := call(pod); app != "pod-only" || !strings.HasPrefix(caller, testSource.String()+":") {
		t.Fatalf("app on the pod IP only: answered by %q, which saw the caller %s; want pod-only, from %s", app, caller, testSource)
	}

	stopLo := namedApp(t, at(loopback, lo), "loopback-only")
	if app, _ := call(lo); app != "loopback-only" {
		t.Fatalf("app on 127.0.0.1 only, on an opted-in port: answered by %q", app)
	}
	// Kept: with an app at the pod IP too, the port still goes to loopback.
	namedApp(t, at(testPodIP, lo), "pod-later")
	if app, _ := call(lo); app != "loopback-only" {
		t.Fatalf("after a stream answered on loopback: answered by %q, want loopback-only again", app)
	}
	// Learnt again: loopback refuses, the pod IP answers, and is kept.
	stopLo()
	if app, _ := call(lo); app != "pod-later" {
		t.Fatalf("once loopback refuses: answered by %q, want pod-later", app)
	}
	namedApp(t, at(loopback, lo), "loopback-again")
	if app, _ := call(lo); app != "pod-later" {
		t.Fatalf("after a stream answered at the pod IP: answered by %q, want pod-later again", app)
	}
	for _, want := range []string{`"destination":"` + at(testPodIP, pod) + `"`, `"destination":"` + at(loopback, lo) + `"`} {
		if !strings.Contains(in.accessLog(), want) {
			t.Errorf("access log lacks %s:\n%s", want, in.accessLog())
		}
	}

	// Nothing on either: the stream is refused, saying where it was tried.
	out := outbound(t, client, proxy.Destination{Name: "none", Addr: in.addr, Port: none, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	if got, err := read(out.addr); err == nil && got != "" {
		t.Fatalf("stream to a port nothing listens on: %q", got)
	}
	pa, la := at(testPodIP, none), at(loopback, none)
	want := fmt.Sprintf(`"reason":"connect %s: dial tcp %s:0->%s: connect: connection refused; and at %s: dial tcp %s: connect: connection refused"`, pa, testSource, pa, la, la)
	eventually(t, "the upstream error in the access log", func() bool { return strings.Contains(in.accessLog(), want) })
}

// TestLocalTargetLoopbackOnlyNotReached is the attack on a loopback-only
// listener (a debug or admin port the app binds to 127.0.0.1 so that only
// the pod itself reaches it): a mesh caller naming that port, and plaintext
// in permissive mode, are refused, because the sidecar delivers at the pod
// IP only unless the pod opted the port in. The app sees nothing.
func TestLocalTargetLoopbackOnlyNotReached(t *testing.T) {
	m := newMesh(t)
	admin, other := podPort(t), podPort(t)
	reached := make(chan string, 4)
	l, err := net.Listen("tcp", netip.AddrPortFrom(loopback, admin).String())
	if err != nil {
		t.Fatal(err)
	}
	tu.Serve(t, l, func(c net.Conn) {
		reached <- c.RemoteAddr().String()
		io.WriteString(c, "admin secrets")
		c.Close()
	})
	origDst := func(*net.TCPConn) (netip.AddrPort, error) { return netip.AddrPortFrom(testPodIP, admin), nil }
	// Another port is opted in: that does not open this one.
	in := localInbound(t, m, netip.AddrPortFrom(testPodIP, 0).String(), origDst, proxy.Config{InboundMode: proxy.Permissive},
		proxy.LoopbackPorts(other))

	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "app", Addr: in.addr, Port: admin, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	if got, err := read(out.addr); got != "" {
		t.Fatalf("mesh stream to the loopback-only port %d: got %q (%v)", admin, got, err)
	}
	pa := netip.AddrPortFrom(testPodIP, admin).String()
	want := fmt.Sprintf(`"reason":"connect %s: dial tcp %s:0->%s: connect: connection refused`, pa, testSource, pa)
	eventually(t, "the refusal in the access log", func() bool { return strings.Contains(in.accessLog(), want) })
	if strings.Contains(in.accessLog(), `"destination":"127.0.0.1:`) {
		t.Fatalf("the sidecar tried loopback for a port the pod did not opt in:\n%s", in.accessLog())
	}
	// Plaintext in permissive mode, to the same port.
	if got, _ := read(in.addr); got != "" {
		t.Fatalf("plaintext to the loopback-only port %d in permissive mode: got %q", admin, got)
	}
	select {
	case from := <-reached:
		t.Fatalf("the loopback-only listener was reached from %s", from)
	case <-time.After(100 * time.Millisecond):
	}
}

var loopback = netip.MustParseAddr("127.0.0.1")

// TestLocalTargetOriginalDst: where the sidecar accepted on 127.0.0.1 (the
// capture redirects its own calls to a service its pod backs there), and
// for plaintext in permissive mode, the pod IP comes from the original
// destination.
func TestLocalTargetOriginalDst(t *testing.T) {
	m := newMesh(t)
	pod := podPort(t)
	namedApp(t, netip.AddrPortFrom(testPodIP, pod).String(), "pod-only")
	origDst := func(*net.TCPConn) (netip.AddrPort, error) { return netip.AddrPortFrom(testPodIP, pod), nil }
	in := localInbound(t, m, "127.0.0.1:0", origDst, proxy.Config{InboundMode: proxy.Permissive})

	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "app", Addr: in.addr, Port: pod, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	if got, err := read(out.addr); err != nil || !strings.HasPrefix(got, "pod-only from "+testSource.String()+":") {
		t.Fatalf("mesh stream accepted on 127.0.0.1: %q, %v", got, err)
	}
	// A server-first app: plaintext is passed on once the peek times out.
	if got, err := read(in.addr); err != nil || !strings.HasPrefix(got, "pod-only from "+testSource.String()+":") {
		t.Fatalf("plaintext in permissive mode: %q, %v", got, err)
	}
}
