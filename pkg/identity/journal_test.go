package identity_test

import (
	"context"
	"crypto"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

func states(ca *identity.CA) []identity.GenerationState {
	var out []identity.GenerationState
	for _, g := range ca.Status().Generations {
		out = append(out, g.State)
	}
	return out
}

func equalStates(a, b []identity.GenerationState) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestManualRotationKeepsEverySVIDValid walks the journal by hand and
// checks, at every step, that SVIDs issued before and after verify against
// the bundle that peers hold at that moment.
func TestManualRotationKeepsEverySVIDValid(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	ca := testutil.NewCA(t, clock, nil)
	id := testutil.ID("/ns/default/sa/web")
	sign := func() ([][]byte, any) {
		csr, key := testutil.NewCSR(t, nil, nil)
		iss, err := ca.Sign(id, csr)
		if err != nil {
			t.Fatal(err)
		}
		return iss.Chain, key
	}
	oldChain, oldKey := sign()
	seq := ca.Bundle().Sequence
	changed := ca.Bundle().Changed

	if err := ca.Rotate(ctx, identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Fatal("prepare did not signal a bundle change")
	}
	if got := ca.Bundle().Sequence; got != seq+1 {
		t.Fatalf("bundle sequence after prepare = %d, want %d", got, seq+1)
	}
	if n := len(ca.Bundle().Bundle.X509Authorities()); n != 2 {
		t.Fatalf("bundle after prepare has %d roots, want 2", n)
	}
	if err := ca.Rotate(ctx, identity.StepPrepare, false); !errors.Is(err, identity.ErrRotation) {
		t.Fatalf("second prepare: err = %v, want ErrRotation", err)
	}
	// Still signed by the old generation.
	preChain, _ := sign()
	if preChain[1][0] != oldChain[1][0] || string(preChain[1]) != string(oldChain[1]) {
		t.Fatal("prepare changed the signing intermediate")
	}

	if err := ca.Rotate(ctx, identity.StepActivate, false); !errors.Is(err, identity.ErrRotation) {
		t.Fatalf("activate before the propagation delay: err = %v, want ErrRotation", err)
	}
	clock.Add(identity.DefaultPropagationDelay)
	if err := ca.Rotate(ctx, identity.StepActivate, false); err != nil {
		t.Fatal(err)
	}
	if want := []identity.GenerationState{identity.Superseded, identity.Active}; !equalStates(states(ca), want) {
		t.Fatalf("states after activate = %v, want %v", states(ca), want)
	}
	newChain, newKey := sign()
	if string(newChain[1]) == string(oldChain[1]) {
		t.Fatal("activate did not switch the signing intermediate")
	}
	bundle := ca.Bundle().Bundle
	checkSVID(t, oldChain, oldKey.(signer), bundle, id, clock.Now())
	checkSVID(t, newChain, newKey.(signer), bundle, id, clock.Now())
	if svid, _ := ca.GetX509SVID(); string(svid.Certificates[1].Raw) != string(newChain[1]) {
		t.Error("the CA's own SVID was not reissued by the new generation")
	}

	if err := ca.Rotate(ctx, identity.StepRetire, false); !errors.Is(err, identity.ErrRotation) {
		t.Fatalf("retire while old SVIDs are valid: err = %v, want ErrRotation", err)
	}
	clock.Add(identity.DefaultSVIDTTL + identity.DefaultBackdate)
	if err := ca.Rotate(ctx, identity.StepRetire, false); err != nil {
		t.Fatal(err)
	}
	if n := len(ca.Bundle().Bundle.X509Authorities()); n != 1 {
		t.Fatalf("bundle after retire has %d roots, want 1", n)
	}
	freshChain, freshKey := sign()
	checkSVID(t, freshChain, freshKey.(signer), ca.Bundle().Bundle, id, clock.Now())
	if want := []identity.GenerationState{identity.Retired, identity.Active}; !equalStates(states(ca), want) {
		t.Fatalf("states after retire = %v, want %v", states(ca), want)
	}
	if err := ca.Rotate(ctx, identity.StepRetire, false); !errors.Is(err, identity.ErrRotation) {
		t.Fatalf("retire with nothing superseded: err = %v, want ErrRotation", err)
	}
	if err := ca.Rotate(ctx, "sideways", false); !errors.Is(err, identity.ErrRotation) {
		t.Fatalf("unknown step: err = %v, want ErrRotation", err)
	}
}

func TestForcedRotation(t *testing.T) {
	ctx := context.Background()
	ca := testutil.NewCA(t, nil, nil)
	for _, step := range []identity.Step{identity.StepPrepare, identity.StepActivate, identity.StepRetire} {
		if err := ca.Rotate(ctx, step, true); err != nil {
			t.Fatalf("forced %s: %v", step, err)
		}
	}
	if want := []identity.GenerationState{identity.Retired, identity.Active}; !equalStates(states(ca), want) {
		t.Fatalf("states = %v, want %v", states(ca), want)
	}
}

// TestScheduledRotation drives a short-lived root through a whole
// rotation with the fake clock.
func TestScheduledRotation(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	const rootTTL = 60 * time.Hour
	ca := testutil.NewCA(t, clock, func(c *identity.Config) {
		c.RootTTL = rootTTL
		c.IntermediateTTL = 30 * time.Hour
		c.AutoRotate = true
	})
	tick := func() {
		t.Helper()
		if err := ca.Tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	tick()
	if want := []identity.GenerationState{identity.Active}; !equalStates(states(ca), want) {
		t.Fatalf("fresh CA: states = %v", states(ca))
	}
	// The intermediate (30h, root 60h) is renewed at 1/3 life left: at 20h.
	firstInter := ca.Status().Generations[0].IntermediateNotAfter
	clock.Add(20*time.Hour + time.Second)
	tick()
	if got := ca.Status().Generations[0].IntermediateNotAfter; !got.After(firstInter) {
		t.Fatalf("intermediate not renewed at 1/3 life left: NotAfter %s", got)
	}
	// Prepare at 1/2 of the root's life left (root backdated 30s).
	clock.Add(10 * time.Hour)
	tick()
	if want := []identity.GenerationState{identity.Active, identity.Prepared}; !equalStates(states(ca), want) {
		t.Fatalf("at 1/2 root life: states = %v, want %v", states(ca), want)
	}
	// Activate at 1/6 left (50h after start).
	clock.Add(19 * time.Hour)
	tick()
	if want := []identity.GenerationState{identity.Active, identity.Prepared}; !equalStates(states(ca), want) {
		t.Fatalf("before 1/6 root life: states = %v, want %v", states(ca), want)
	}
	clock.Add(1 * time.Hour)
	tick()
	if want := []identity.GenerationState{identity.Superseded, identity.Active}; !equalStates(states(ca), want) {
		t.Fatalf("at 1/6 root life: states = %v, want %v", states(ca), want)
	}
	// Retire once every SVID the old generation signed has expired.
	clock.Add(identity.DefaultSVIDTTL)
	tick()
	if want := []identity.GenerationState{identity.Superseded, identity.Active}; !equalStates(states(ca), want) {
		t.Fatalf("retired too early: states = %v", states(ca))
	}
	clock.Add(identity.DefaultBackdate)
	tick()
	if want := []identity.GenerationState{identity.Retired, identity.Active}; !equalStates(states(ca), want) {
		t.Fatalf("after the old SVIDs expired: states = %v, want %v", states(ca), want)
	}
	if err := ca.Ready(); err != nil {
		t.Fatalf("not ready after a scheduled rotation: %v", err)
	}
}

// TestFollowerSeesLeaderRotation: two CAs on one store; the follower takes
// no scheduled steps but picks up the leader's.
func TestFollowerSeesLeaderRotation(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewFakeClock()
	store, _ := identity.NewDiskStore(t.TempDir())
	cfg := identity.Config{TrustDomain: testutil.TrustDomain, Store: store, Clock: clock, AutoRotate: true, RootTTL: 60 * time.Hour, IntermediateTTL: 40 * time.Hour}
	leader, err := identity.NewCA(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.IsLeader = func() bool { return false }
	follower, err := identity.NewCA(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	clock.Add(31 * time.Hour)
	if err := follower.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(follower.Status().Generations); n != 1 {
		t.Fatalf("follower took a scheduled step: %d generations", n)
	}
	if err := leader.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if err := follower.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := follower.Bundle().Sequence, leader.Bundle().Sequence; got != want || len(follower.Status().Generations) != 2 {
		t.Fatalf("follower bundle sequence %d, leader %d; follower generations %v", got, want, states(follower))
	}
}

type signer = interface {
	Public() crypto.PublicKey
	Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error)
}
