package proxy_test

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/proxy"
)

// revalidate asks p to re-check its open streams, as the sidecar does
// when discovery's policy changes.
func revalidate(t *testing.T, p *proxy.Proxy) {
	t.Helper()
	r, ok := any(p).(interface{ Revalidate() int })
	if !ok {
		t.Error("the proxy cannot re-check open streams after a policy change")
		return
	}
	r.Revalidate()
}

// switchable is an Authorizer a test flips from allow to deny.
func switchable(id spiffeid.ID, allowed *atomic.Bool) proxy.Authorizer {
	return func(src spiffeid.ID, port uint16) error {
		if src == id && allowed.Load() {
			return nil
		}
		return &proxy.DeniedError{Rule: "test policy: " + src.String() + " revoked"}
	}
}

// openStream dials addr and echoes msg over the stream, which stays open
// until the test ends.
func openStream(t *testing.T, addr, msg string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := roundTrip(c, msg); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPolicyChangeClosesOpenInboundStreams: a stream open when the
// destination's policy stops allowing its caller is closed at once, on
// the policy change, not when the caller hangs up; the closure is counted
// and logged with the rule.
func TestPolicyChangeClosesOpenInboundStreams(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	var allowed atomic.Bool
	allowed.Store(true)
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{Authorize: switchable(clientID, &allowed)})
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{})
	c := openStream(t, out.addr, "before")
	allowed.Store(false)
	revalidate(t, in.p)
	if !testutil.ClosedWithin(c, 3*time.Second) {
		t.Fatal("the stream is still open 3s after the policy stopped allowing its caller")
	}
	if got := counter(t, in.reg, "tether_sidecar_connections_revoked_total", "direction", "inbound", "reason", "policy"); got != 1 {
		t.Errorf("revoked inbound streams counted: %v, want 1", got)
	}
	eventually(t, "the access log to name the rule", func() bool {
		return strings.Contains(in.accessLog(), `"rule":"test policy: `+clientID.String()+` revoked"`) && strings.Contains(in.accessLog(), "revoked: ")
	})
	// A new stream of the pair is refused as before.
	if err := dialRoundTrip(out.addr, "after"); err == nil {
		t.Fatal("a new stream went through after the revocation")
	}
}

// TestPolicyChangeClosesOpenOutboundStreams: at the caller, a stream whose
// destination the new policy denies is closed too, with its tunnel.
func TestPolicyChangeClosesOpenOutboundStreams(t *testing.T) {
	m := newMesh(t)
	app := echo(t, "")
	in := inbound(t, m.identity(serverID, false), app, proxy.Config{})
	var allowed atomic.Bool
	allowed.Store(true)
	recheck := func() error {
		if allowed.Load() {
			return nil
		}
		return &proxy.DeniedError{Rule: "test policy: server revoked"}
	}
	out := outbound(t, m.identity(clientID, false), proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}, Recheck: recheck}, proxy.Config{})
	c := openStream(t, out.addr, "before")
	if n := out.p.Revalidate(); n != 0 {
		t.Fatalf("Revalidate closed %d streams while the policy allows them", n)
	}
	allowed.Store(false)
	if n := out.p.Revalidate(); n != 1 {
		t.Errorf("Revalidate closed %d streams, want 1", n)
	}
	if !testutil.ClosedWithin(c, 3*time.Second) {
		t.Fatal("the outbound stream is still open after the policy denied its destination")
	}
	if got := counter(t, out.reg, "tether_sidecar_connections_revoked_total", "direction", "outbound", "reason", "policy"); got != 1 {
		t.Errorf("revoked outbound streams counted: %v, want 1", got)
	}
	eventually(t, "the access log to name the rule", func() bool {
		return strings.Contains(out.accessLog(), `"rule":"test policy: server revoked"`)
	})
}

// TestStreamEndsWhenCallerSVIDExpires: with EndStreamsAtSVIDExpiry, a
// stream is cut when the SVID its tunnel was authenticated with expires,
// by either side alone (each is tested with only that side enforcing, as
// whichever side's timer fires first ends the stream for both); without
// it, the stream outlives the SVID.
func TestStreamEndsWhenCallerSVIDExpires(t *testing.T) {
	for _, tc := range []struct {
		name          string
		inbound, outb bool
		direction     string // the side that must count the expiry; "" none
	}{
		{"destination", true, false, "inbound"},
		{"caller", false, true, "outbound"},
		{"off", false, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			app := echo(t, "")
			in := inbound(t, m.identity(serverID, false), app, proxy.Config{EndStreamsAtSVIDExpiry: tc.inbound})
			// An SVID that expires in 3 seconds (the CA issues for an hour).
			m.clock.Set(time.Now().Add(-time.Hour + 3*time.Second))
			short := m.identityAtClock(clientID)
			out := outbound(t, short, proxy.Destination{Name: "server", Addr: in.addr, IDs: []spiffeid.ID{serverID}}, proxy.Config{EndStreamsAtSVIDExpiry: tc.outb})
			c := openStream(t, out.addr, "before expiry")
			if tc.direction == "" {
				if testutil.ClosedWithin(c, 6*time.Second) {
					t.Fatal("the stream was cut at the SVID's expiry without EndStreamsAtSVIDExpiry")
				}
				c.SetReadDeadline(time.Time{})
				if err := roundTrip(c, "after expiry"); err != nil {
					t.Fatalf("the stream stopped working after the SVID's expiry: %v", err)
				}
				return
			}
			if !testutil.ClosedWithin(c, 10*time.Second) {
				t.Fatal("the stream outlived the caller's SVID")
			}
			reg := in.reg
			if tc.direction == "outbound" {
				reg = out.reg
			}
			eventually(t, tc.direction+" to count the expiry", func() bool {
				return counter(t, reg, "tether_sidecar_connections_revoked_total", "direction", tc.direction, "reason", "svid_expired") == 1
			})
		})
	}
}
