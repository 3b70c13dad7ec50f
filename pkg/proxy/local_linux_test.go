package proxy

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sys/unix"

	"github.com/tether-mesh/tether/internal/testutil"
)

// noIdentity lets New build a proxy that makes no handshake.
type noIdentity struct{}

func (noIdentity) GetX509SVID() (*x509svid.SVID, error) { return nil, errors.New("no SVID") }
func (noIdentity) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return nil, errors.New("no bundle")
}

// appAt listens on addr (127.0.0.2 stands for the pod IP), closing what it
// accepts, and returns one connection accepted there: what the sidecar's
// inbound listener would hold for a stream to the pod IP.
func appAt(tb testing.TB, addr string) (l net.Listener, accepted net.Conn) {
	tb.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Skipf("cannot listen on %s here: %v", addr, err)
	}
	first := make(chan net.Conn, 1)
	testutil.Serve(tb, l, func(c net.Conn) {
		select {
		case first <- c:
		default:
			c.Close()
		}
	})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	accepted = <-first
	tb.Cleanup(func() { accepted.Close() })
	return l, accepted
}

func testProxy(tb testing.TB) *Proxy {
	tb.Helper()
	p, err := New(Config{Identity: noIdentity{}, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.local")})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// TestDeliveryPicksSourcePortAtConnect: connections to the pod IP are bound
// to the delivery source with IP_BIND_ADDRESS_NO_PORT, or the ports of that
// one address would run out after some 28,000 connections a minute.
func TestDeliveryPicksSourcePortAtConnect(t *testing.T) {
	l, c := appAt(t, "127.0.0.2:0")
	source := netip.MustParseAddr("127.0.0.6")
	app, err := LocalTarget(nil, source)(c, uint16(l.Addr().(*net.TCPAddr).Port))
	if err != nil {
		t.Fatal(err)
	}
	up, addr, err := testProxy(t).dialApp(app)
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	if addr != l.Addr().String() || up.LocalAddr().(*net.TCPAddr).AddrPort().Addr() != source {
		t.Fatalf("delivered to %s from %s, want %s from %s", addr, up.LocalAddr(), l.Addr(), source)
	}
	raw, err := up.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	raw.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT) })
	if serr != nil || v != 1 {
		t.Fatalf("IP_BIND_ADDRESS_NO_PORT = %d, %v; want 1", v, serr)
	}
}

// BenchmarkDialApp is the cost of connecting a stream to the app: explicit
// mode, and transparent mode to an app at the pod IP and to one on
// loopback only (on a port opted in to loopback delivery, known to answer
// there).
func BenchmarkDialApp(b *testing.B) {
	p := testProxy(b)
	source := netip.MustParseAddr("127.0.0.6")
	dial := func(b *testing.B, app App) {
		b.ReportAllocs()
		for b.Loop() {
			up, _, err := p.dialApp(app)
			if err != nil {
				b.Fatal(err)
			}
			up.Close()
		}
	}
	b.Run("fixed", func(b *testing.B) {
		l, c := appAt(b, "127.0.0.1:0")
		app, _ := mustFixed(b, l.Addr().String())(c, 0)
		dial(b, app)
	})
	b.Run("local/pod", func(b *testing.B) {
		l, c := appAt(b, "127.0.0.2:0")
		app, _ := LocalTarget(nil, source)(c, uint16(l.Addr().(*net.TCPAddr).Port))
		dial(b, app)
	})
	b.Run("local/loopback", func(b *testing.B) {
		l, _ := appAt(b, "127.0.0.1:0")
		_, c := appAt(b, "127.0.0.2:0")
		port := uint16(l.Addr().(*net.TCPAddr).Port)
		app, _ := LocalTarget(nil, source, LoopbackPorts(port))(c, port)
		if up, _, err := p.dialApp(app); err != nil { // learns the port is on loopback
			b.Fatal(err)
		} else {
			up.Close()
		}
		dial(b, app)
	})
}

func mustFixed(tb testing.TB, app string) InboundTarget {
	tb.Helper()
	t, err := FixedTarget(app)
	if err != nil {
		tb.Fatal(err)
	}
	return t
}
