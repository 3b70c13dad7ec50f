package agent

import (
	"context"
	"slices"
	"testing"
	"time"

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
