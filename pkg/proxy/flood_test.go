package proxy_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/pkg/proxy"
)

// idleFlood opens n idle TCP connections to addr, from sources 127.0.0.base
// and up, per connections each, and closes them at the end of the test.
func idleFlood(t *testing.T, addr string, base byte, n, per int) []net.Conn {
	t.Helper()
	var conns []net.Conn
	for i := range n {
		src := netip.AddrFrom4([4]byte{127, 0, 0, base + byte(i/per)})
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			continue // refused: what a flood gets
		}
		conns = append(conns, c)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}

// TestIdleFloodDoesNotLockOutCallers: idle unauthenticated connections,
// more than the inbound connection limit, do not take the slots of
// authenticated callers: a mesh caller still gets through.
func TestIdleFloodDoesNotLockOutCallers(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{MaxConnections: 64, HandshakeTimeout: 30 * time.Second})
	idleFlood(t, in.addr, 10, 100, 25)
	time.Sleep(200 * time.Millisecond) // let the sidecar accept them all
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	for i := range 3 {
		if err := dialRoundTrip(out.addr, "legit"); err != nil {
			t.Fatalf("call %d of a mesh caller during an idle flood: %v", i, err)
		}
	}
}

// TestUnauthenticatedLimits: past MaxPendingPerSource, one address's new
// connections are reset at accept; past MaxPending, the oldest silent one
// is reset to make room, so a caller that speaks at once always gets in;
// under pressure the handshake deadline is cut.
func TestUnauthenticatedLimits(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{MaxPending: 32, MaxPendingPerSource: 16,
		HandshakeTimeout: time.Minute, PressureHandshakeTimeout: 500 * time.Millisecond})
	// 20 from one address: 4 over the per-source limit.
	idleFlood(t, in.addr, 10, 20, 20)
	eventually(t, "4 per-source rejections", func() bool {
		return counter(t, in.reg, "tether_sidecar_unauthenticated_rejections_total", "reason", "per_source") == 4
	})
	// 60 more from 4 other addresses: the table of 32 evicts the oldest.
	flood := idleFlood(t, in.addr, 20, 60, 15)
	eventually(t, "evictions", func() bool {
		return counter(t, in.reg, "tether_sidecar_unauthenticated_rejections_total", "reason", "evicted") >= 16+60-32
	})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	for i := range 5 {
		if err := dialRoundTrip(out.addr, "legit"); err != nil {
			t.Fatalf("call %d of a mesh caller with the unauthenticated table full: %v", i, err)
		}
	}
	// Under pressure, the newest silent connections time out fast too, not
	// after HandshakeTimeout.
	last := flood[len(flood)-1]
	last.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := last.Read(make([]byte, 1)); err == nil {
		t.Fatal("read data on a connection that never handshook")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a silent connection was held %s under pressure", d)
	}
}

// TestPressureDeadlineSparesCallersThatSpeak: while the unauthenticated
// table is more than half full, a silent connection must send its
// ClientHello within PressureHandshakeTimeout; one that has sent it keeps
// the full HandshakeTimeout, so a handshake slowed by a loaded machine is
// not cut.
func TestPressureDeadlineSparesCallersThatSpeak(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{MaxPending: 4,
		HandshakeTimeout: 3 * time.Second, PressureHandshakeTimeout: 300 * time.Millisecond})
	idleFlood(t, in.addr, 10, 3, 3) // 3 of 4: pressure
	eventually(t, "the flood to be accepted", func() bool {
		return gauge(t, in.reg, "tether_sidecar_unauthenticated_connections") == 3
	})
	closedAfter := func(c net.Conn) time.Duration {
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				return time.Since(start)
			}
		}
	}
	silent, err := net.Dial("tcp", in.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	slow, err := net.Dial("tcp", in.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := slow.Write(clientHello(t, []string{proxy.ALPN})); err != nil {
		t.Fatal(err)
	}
	silentDone := make(chan time.Duration, 1)
	go func() { silentDone <- closedAfter(silent) }()
	if d := closedAfter(slow); d < time.Second {
		t.Errorf("a caller that sent its ClientHello was cut after %s under pressure; want the full handshake timeout", d)
	}
	if d := <-silentDone; d > 2*time.Second {
		t.Errorf("a silent connection was held %s under pressure; want about 300ms", d)
	}
}

// gauge reads a gauge without labels.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}
