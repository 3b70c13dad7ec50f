package proxy_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/proxy"
)

func TestTunnelReuse(t *testing.T) {
	m := newMesh(t)
	in := inbound(t, m.identity(serverID, false), echo(t, ""), proxy.Config{})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	const n = 20
	for i := range n {
		c, err := net.Dial("tcp", out.addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(c, "request"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		c.Close()
		eventually(t, "the stream to end", func() bool {
			return counter(t, out.reg, "tether_sidecar_connections_total", "direction", "outbound") == float64(i+1)
		})
	}
	reused := counter(t, out.reg, "tether_sidecar_outbound_streams_total", "reused", "true")
	fresh := counter(t, out.reg, "tether_sidecar_outbound_streams_total", "reused", "false")
	if fresh != 1 || reused != n-1 {
		t.Fatalf("%v fresh and %v reused tunnels for %d sequential calls, want 1 and %d", fresh, reused, n, n-1)
	}
}

func TestTunnelConcurrentStreams(t *testing.T) {
	m := newMesh(t)
	in := inbound(t, m.identity(serverID, false), echo(t, ""), proxy.Config{})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 10 {
				c, err := net.Dial("tcp", out.addr)
				if err != nil {
					errs <- err
					return
				}
				msg := string(rune('a'+i)) + string(rune('a'+j)) + "-payload"
				if err := roundTrip(c, msg); err != nil {
					errs <- err
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestTunnelHalfCloseAndBulk: a client sends a large body, half-closes,
// and reads the whole echo; the tunnel carries the END both ways.
func TestTunnelHalfCloseAndBulk(t *testing.T) {
	m := newMesh(t)
	in := inbound(t, m.identity(serverID, false), echo(t, ""), proxy.Config{})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	body := make([]byte, 3<<20)
	rand.Read(body)
	c, err := net.Dial("tcp", out.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	go func() {
		c.Write(body)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, body) {
		t.Fatalf("echoed %d bytes, want the %d sent", len(got), len(body))
	}
}

// TestIdleTimeoutCountsBothDirections: a stream that only flows one way
// is not idle.
func TestIdleTimeoutCountsBothDirections(t *testing.T) {
	m := newMesh(t)
	// The app only writes: a slow download.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		for range 8 {
			c.Write([]byte("tick"))
			time.Sleep(50 * time.Millisecond)
		}
	}()
	cfg := proxy.Config{IdleTimeout: 150 * time.Millisecond}
	in := inbound(t, m.identity(serverID, false), l.Addr().String(), cfg)
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, cfg)
	c, err := net.Dial("tcp", out.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	if len(got) != 32 {
		t.Fatalf("got %d bytes of a 400ms one-way stream with a 150ms idle timeout, want 32", len(got))
	}
}

// TestStaleTunnelIsReplaced: when the server drops pooled tunnels, the
// next call still succeeds on a fresh one.
func TestStaleTunnelIsReplaced(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	call := func() error {
		c, err := net.Dial("tcp", out.addr)
		if err != nil {
			return err
		}
		defer c.Close()
		return roundTrip(c, "hi")
	}
	if err := call(); err != nil {
		t.Fatal(err)
	}
	// Restart the server side on the same address: its tunnels are gone.
	in.cancel()
	<-in.stopped
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	in.p.Shutdown(ctx)
	cancel()
	l, err := net.Listen("tcp", in.addr)
	if err != nil {
		t.Skipf("cannot rebind %s: %v", in.addr, err)
	}
	target, _ := proxy.FixedTarget(app)
	p2, err := proxy.New(proxy.Config{Identity: m.identity(serverID, false), TrustDomain: serverID.TrustDomain()})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	defer stop()
	go p2.ServeInbound(sctx, l, target)
	for i := range 3 {
		if err := call(); err != nil {
			t.Fatalf("call %d after the server dropped its tunnels: %v", i, err)
		}
	}
}

// TestResetKeepsTheTunnel: clients that close with RST (SO_LINGER 0) abort
// their stream, but the tunnel survives and carries the next one.
func TestResetKeepsTheTunnel(t *testing.T) {
	m := newMesh(t)
	in := inbound(t, m.identity(serverID, false), echo(t, ""), proxy.Config{})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	const n = 10
	for i := range n {
		c, err := net.Dial("tcp", out.addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(c, "before the reset"); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		eventually(t, "the aborted stream to end", func() bool {
			return counter(t, out.reg, "tether_sidecar_connections_total", "direction", "outbound") == float64(i+1)
		})
	}
	if got := counter(t, out.reg, "tether_sidecar_connections_total", "direction", "outbound", "result", "reset"); got != n {
		t.Errorf("%v streams recorded as reset, want %d", got, n)
	}
	if fresh := counter(t, out.reg, "tether_sidecar_outbound_streams_total", "reused", "false"); fresh != 1 {
		t.Fatalf("%v tunnels dialed for %d reset streams, want 1", fresh, n)
	}
	// And the tunnel still works for a normal call.
	c, err := net.Dial("tcp", out.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, "after"); err != nil {
		t.Fatal(err)
	}
}

// TestAppResetReachesTheClient: when the app resets mid-stream, the
// client's connection is reset too, and the tunnel survives.
func TestAppResetReachesTheClient(t *testing.T) {
	m := newMesh(t)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				b := make([]byte, 4)
				io.ReadFull(c, b)
				if string(b) == "boom" {
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
					return
				}
				c.Write(b)
				c.Close()
			}()
		}
	}()
	in := inbound(t, m.identity(serverID, false), l.Addr().String(), proxy.Config{})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	c, err := net.Dial("tcp", out.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("boom"))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read data after the app reset")
	}
	c.Close()
	eventually(t, "the reset stream to end", func() bool {
		return counter(t, out.reg, "tether_sidecar_connections_total", "direction", "outbound", "result", "reset") == 1
	})
	c2, err := net.Dial("tcp", out.addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c2, "fine"); err != nil {
		t.Fatal(err)
	}
	c2.Close()
	eventually(t, "both streams to end", func() bool {
		return counter(t, out.reg, "tether_sidecar_connections_total", "direction", "outbound") == 2
	})
	if fresh := counter(t, out.reg, "tether_sidecar_outbound_streams_total", "reused", "false"); fresh != 1 {
		t.Fatalf("%v tunnels dialed, want 1: the app's reset closed the tunnel", fresh)
	}
}
