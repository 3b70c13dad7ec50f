package identity_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// metricValue reads the gauge or counter name from reg, the first series
// whose labels include labels; -1 if there is none.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue next
				}
			}
			if g := m.GetGauge(); g != nil {
				return g.GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

// TestIntermediateRenewedWithoutAutoRotate: intermediate renewal is
// routine: with --auto-rotate=false the CA still renews its intermediate
// on schedule (before, it let it run out and every SVID was clamped to its
// end), but takes no root-rotation step, and status says that the overdue
// root step is for the operator to take.
func TestIntermediateRenewedWithoutAutoRotate(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	ca := testutil.NewCA(t, clock, func(c *identity.Config) {
		c.RootTTL, c.IntermediateTTL, c.AutoRotate = 60*time.Hour, 30*time.Hour, false
	})
	first := ca.Status().Generations[0].IntermediateNotAfter
	if st := ca.Status(); st.NextStep != identity.StepRenewIntermediate || st.NextStepOverdue || st.NextStepManual {
		t.Fatalf("fresh CA: next step %s at %s (overdue %v, manual %v), want renew-intermediate, scheduled, automatic",
			st.NextStep, st.NextStepAt, st.NextStepOverdue, st.NextStepManual)
	}
	clock.Add(20*time.Hour + time.Second) // 1/3 of the intermediate's life left
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ca.Status().Generations[0].IntermediateNotAfter; !got.After(first) {
		t.Fatalf("intermediate not renewed at 1/3 of its life with --auto-rotate=false: NotAfter %s", got)
	}
	// Half the root's life: prepare is due, but root rotation is manual.
	clock.Add(11 * time.Hour)
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	st := ca.Status()
	if len(st.Generations) != 1 {
		t.Fatalf("the CA took a root-rotation step with --auto-rotate=false: %d generations", len(st.Generations))
	}
	if st.NextStep != identity.StepPrepare || !st.NextStepOverdue || !st.NextStepManual || !st.NextStepAt.Before(clock.Now()) {
		t.Fatalf("status: next step %s at %s (overdue %v, manual %v), want prepare, overdue, manual", st.NextStep, st.NextStepAt, st.NextStepOverdue, st.NextStepManual)
	}
}

// TestRenewIntermediateStep: `tether ca rotate renew-intermediate` renews
// the signing intermediate now, and is refused (saying what to do) when
// renewing cannot extend it because it already ends with its root.
func TestRenewIntermediateStep(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	reg := prometheus.NewRegistry()
	ca := testutil.NewCA(t, clock, func(c *identity.Config) {
		c.RootTTL, c.IntermediateTTL, c.Registerer = 60*time.Hour, 30*time.Hour, reg
	})
	before := ca.Status()
	clock.Add(time.Hour) // long before it is due
	if err := ca.Rotate(ctx, identity.StepRenewIntermediate, false); err != nil {
		t.Fatal(err)
	}
	after := ca.Status()
	if got, want := after.Generations[0].IntermediateNotAfter, before.Generations[0].IntermediateNotAfter.Add(time.Hour); !got.Equal(want) {
		t.Fatalf("intermediate NotAfter %s after renew-intermediate, want %s", got, want)
	}
	if after.BundleSequence != before.BundleSequence || len(after.Generations) != 1 {
		t.Errorf("renewing the intermediate changed the bundle (sequence %d -> %d) or the generations", before.BundleSequence, after.BundleSequence)
	}
	csr, key := testutil.NewCSR(t, nil, nil)
	iss, err := ca.Sign(testutil.ID("/x"), csr)
	if err != nil {
		t.Fatal(err)
	}
	if inter := checkSVID(t, iss.Chain, key, ca.Bundle().Bundle, testutil.ID("/x"), clock.Now()).Certificates[1]; !inter.NotAfter.Equal(after.Generations[0].IntermediateNotAfter) {
		t.Errorf("SVIDs are not signed by the renewed intermediate")
	}
	if n := metricValue(t, reg, "tether_ca_rotation_steps_total", map[string]string{"step": "renew-intermediate", "result": "ok"}); n != 1 {
		t.Errorf("tether_ca_rotation_steps_total{step=renew-intermediate,result=ok} = %v, want 1", n)
	}

	// An intermediate that already ends with its root cannot be extended.
	short := testutil.NewCA(t, clock, func(c *identity.Config) { c.RootTTL, c.IntermediateTTL = 30*time.Hour, 30*time.Hour })
	err = short.Rotate(ctx, identity.StepRenewIntermediate, false)
	if !errors.Is(err, identity.ErrRotation) || !strings.Contains(err.Error(), "rotate prepare") {
		t.Fatalf("renew-intermediate of an intermediate that ends with its root: %v, want a refusal that says to rotate the root", err)
	}
}

// failingUpstream is a fakeUpstream that fails while broken is set, as a
// cert-manager issuer that denies or never answers.
type failingUpstream struct {
	*fakeUpstream
	mu     sync.Mutex
	broken bool
}

func (u *failingUpstream) setBroken(b bool) { u.mu.Lock(); u.broken = b; u.mu.Unlock() }

func (u *failingUpstream) SignIntermediate(ctx context.Context, csrDER []byte, ttl time.Duration) (*identity.UpstreamResult, error) {
	u.mu.Lock()
	broken := u.broken
	u.mu.Unlock()
	if broken {
		return nil, errors.New("CertificateRequest tether-system/tether-ca-x was denied: policy says no")
	}
	return u.fakeUpstream.SignIntermediate(ctx, csrDER, ttl)
}

// TestIntermediateRenewalOverdue: when the upstream fails, the renewal
// stays due; status says it is overdue (not "next"), and the metric the
// alert TetherCAIntermediateRenewalOverdue watches goes to 1, then back to
// 0 once the upstream signs again.
func TestIntermediateRenewalOverdue(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	u := &failingUpstream{fakeUpstream: newFakeUpstream(t, clock)}
	reg := prometheus.NewRegistry()
	ca := testutil.NewCA(t, clock, func(c *identity.Config) {
		c.Upstream, c.IntermediateTTL, c.Registerer = u, 30*time.Hour, reg
	})
	const overdue = "tether_ca_intermediate_renewal_overdue"
	if v := metricValue(t, reg, overdue, nil); v != 0 {
		t.Fatalf("%s = %v on a fresh CA, want 0", overdue, v)
	}
	first := ca.Status().Generations[0].IntermediateNotAfter
	u.setBroken(true)
	clock.Add(20*time.Hour + time.Second)
	if err := ca.Tick(ctx); err == nil || !strings.Contains(err.Error(), "denied") {
		t.Fatalf("Tick with a failing upstream: %v, want the upstream's error", err)
	}
	st := ca.Status()
	if st.NextStep != identity.StepRenewIntermediate || !st.NextStepOverdue || st.NextStepManual {
		t.Fatalf("status: next step %s at %s (overdue %v, manual %v), want renew-intermediate overdue", st.NextStep, st.NextStepAt, st.NextStepOverdue, st.NextStepManual)
	}
	if v := metricValue(t, reg, overdue, nil); v != 1 {
		t.Errorf("%s = %v with the renewal overdue, want 1", overdue, v)
	}
	if n := metricValue(t, reg, "tether_ca_rotation_steps_total", map[string]string{"step": "renew-intermediate", "result": "error"}); n < 1 {
		t.Errorf("failed renewal not counted in tether_ca_rotation_steps_total{result=error}: %v", n)
	}
	if err := ca.Rotate(ctx, identity.StepRenewIntermediate, false); err == nil || !strings.Contains(err.Error(), "denied") {
		t.Errorf("manual renew-intermediate with a failing upstream: %v, want the upstream's error", err)
	}
	u.setBroken(false)
	if err := ca.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	// In upstream mode the renewed intermediate is a new generation,
	// prepared (trusted before it signs), next to the one it replaces.
	if !slices.ContainsFunc(ca.Status().Generations, func(g identity.GenerationStatus) bool { return g.IntermediateNotAfter.After(first) }) {
		t.Fatalf("intermediate not renewed once the upstream works again")
	}
	if st := ca.Status(); st.NextStepOverdue {
		t.Errorf("status still overdue after the renewal: %s at %s", st.NextStep, st.NextStepAt)
	}
	if v := metricValue(t, reg, overdue, nil); v != 0 {
		t.Errorf("%s = %v after the renewal, want 0", overdue, v)
	}
}

// TestCAStartsWithExpiredIntermediate: a CA that was down (or ran with
// renewal failing) until its intermediate expired renews it when it
// starts. Before, it could not even issue its own serving SVID and
// stopped at start, so no command could reach it to renew the intermediate.
func TestCAStartsWithExpiredIntermediate(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	store, err := identity.NewDiskStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := identity.Config{TrustDomain: testutil.TrustDomain, Store: store, Clock: clock, RootTTL: 60 * time.Hour, IntermediateTTL: 30 * time.Hour}
	first, err := identity.NewCA(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	before := first.Status()
	clock.Add(31 * time.Hour) // the intermediate ended an hour ago
	ca, err := identity.NewCA(ctx, cfg)
	if err != nil {
		t.Fatalf("CA with an expired intermediate does not start: %v", err)
	}
	if err := ca.Ready(); err != nil {
		t.Fatalf("not ready after start: %v", err)
	}
	after := ca.Status()
	if !after.Generations[0].IntermediateNotAfter.After(clock.Now()) || after.BundleSequence != before.BundleSequence {
		t.Fatalf("intermediate valid until %s at %s (bundle sequence %d -> %d)", after.Generations[0].IntermediateNotAfter, clock.Now(), before.BundleSequence, after.BundleSequence)
	}
	csr, key := testutil.NewCSR(t, nil, nil)
	iss, err := ca.Sign(testutil.ID("/x"), csr)
	if err != nil {
		t.Fatal(err)
	}
	checkSVID(t, iss.Chain, key, ca.Bundle().Bundle, testutil.ID("/x"), clock.Now())

	// The root ended too: renewing the intermediate cannot help; the CA
	// refuses to start and says why.
	clock.Add(60 * time.Hour)
	if _, err := identity.NewCA(ctx, cfg); err == nil || !strings.Contains(err.Error(), "the root of generation 1 ended") {
		t.Fatalf("CA with an expired root: %v, want a refusal that names the root", err)
	}
}
