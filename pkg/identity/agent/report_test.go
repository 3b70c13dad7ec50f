package agent

import (
	"context"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// report returns the one report the CA holds for the agent, or nil.
func report(c *testCA) *identity.SidecarReport {
	rs := c.ca.LocalReports().Reports
	if len(rs) != 1 {
		return nil
	}
	return &rs[0]
}

// TestAgentReports: the agent reports its roots and SVID root at once, a
// new bundle's roots as soon as it has them, a renewed SVID (over a new
// connection that presents it), and leaves when it stops.
func TestAgentReports(t *testing.T) {
	ca := testutil.NewCA(t, identity.RealClock, func(c *identity.Config) { c.PropagationDelay = time.Millisecond })
	c := startCA(t, ca, "127.0.0.1:0")
	a, err := New(Config{CAAddr: c.addr, Bundle: c.ca.Bundle().Bundle, Credential: tokenCred(t, c.ca, "/ns/default/sa/web", nil),
		Instance: "web-0", Version: "v9", MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := testutil.Go(t, a.Run)
	oldRoot := identity.Fingerprint(c.ca.Bundle().Bundle.X509Authorities()[0].Raw)
	waitFor(t, "a first report", func() bool {
		r := report(c)
		return r != nil && r.Instance == "web-0" && r.Version == "v9" && r.Holds == oldRoot && slices.Equal(r.Trusted, []string{oldRoot})
	})
	if r := report(c); r.ID != testutil.ID("/ns/default/sa/web").String() || r.ClaimMismatch {
		t.Errorf("report %+v", r)
	}

	ctx := context.Background()
	if err := c.ca.Rotate(ctx, identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a report trusting both roots", func() bool { r := report(c); return r != nil && len(r.Trusted) == 2 })
	time.Sleep(2 * time.Millisecond)
	if err := c.ca.Rotate(ctx, identity.StepActivate, false); err != nil {
		t.Fatalf("activate once the agent reported the new root: %v", err)
	}
	a.RenewNow()
	waitFor(t, "a report holding a new-root SVID", func() bool {
		r := report(c)
		return r != nil && r.Holds != "" && r.Holds != oldRoot && !r.ClaimMismatch
	})
	if rs := c.ca.RotationStatus(ctx); len(rs.RetireLaggards) != 0 {
		t.Errorf("retire laggards %+v after the renewal", rs.RetireLaggards)
	}

	stop()
	waitFor(t, "the report gone once the agent stopped", func() bool { return len(c.ca.LocalReports().Reports) == 0 })
}

// oldCA is a CA server from before Report: it answers Unimplemented, and
// counts the calls.
type oldCA struct {
	*identity.Server
	calls *atomic.Int32
}

func (o oldCA) Report(context.Context, *cav1.ReportRequest) (*cav1.ReportResponse, error) {
	o.calls.Add(1)
	return nil, status.Error(codes.Unimplemented, "unknown method Report")
}

// TestAgentWithOldCA: against a CA that does not know Report the agent
// stops reporting after the first try and still follows the bundle.
func TestAgentWithOldCA(t *testing.T) {
	ca := testutil.NewCA(t, identity.RealClock, nil)
	srv := identity.NewServer(ca, map[string]identity.Attestor{identity.KindJoinToken: ca.JoinTokens()}, nil)
	var calls atomic.Int32
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(srv.TLSConfig())))
	cav1.RegisterCAServer(g, oldCA{srv, &calls})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	t.Cleanup(g.Stop)
	a, err := New(Config{CAAddr: l.Addr().String(), Bundle: ca.Bundle().Bundle, Credential: tokenCred(t, ca, "/ns/default/sa/web", nil),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Go(t, a.Run)
	waitFor(t, "a first report attempt", func() bool { return calls.Load() > 0 })
	if err := ca.Rotate(context.Background(), identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new bundle", func() bool { return len(a.Bundle().X509Authorities()) == 2 })
	time.Sleep(200 * time.Millisecond)
	if n := calls.Load(); n != 1 {
		t.Errorf("%d report attempts against a CA without Report, want 1", n)
	}
}
