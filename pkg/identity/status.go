package identity

import (
	"bytes"
	"crypto/x509"
	"time"
)

// Status describes the rotation journal.
type Status struct {
	TrustDomain    string
	BundleSequence uint64
	Generations    []GenerationStatus
	// NextStep is the next scheduled step and when it is due.
	NextStep   Step
	NextStepAt time.Time
	// NextStepOverdue: NextStepAt is past and the step has not been taken
	// (the upstream failed, or the step is the operator's to take).
	NextStepOverdue bool
	// NextStepManual: the CA does not take this step itself (a root
	// rotation step with AutoRotate off); run `tether ca rotate <step>`.
	NextStepManual bool
	// IntermediateRenewalAt is when the earliest intermediate renewal is
	// due (zero if none can help: the intermediate ends with its root);
	// IntermediateRenewalOverdue says that time is past.
	IntermediateRenewalAt      time.Time
	IntermediateRenewalOverdue bool
	// Revocations are the revocation entries in force.
	Revocations []RevocationStatus
}

// GenerationStatus describes one generation.
type GenerationStatus struct {
	ID                   uint64
	State                GenerationState
	RootFingerprint      string
	RootNotAfter         time.Time
	IntermediateNotAfter time.Time
	RetireAfter          time.Time
	Upstream             string
	// RootOffline: the root key is not in the state (offline-root mode).
	RootOffline bool
	// AnchorFingerprint is the SHA-256 of the certificate the trust bundle
	// holds for this generation: its root, or in upstream mode the
	// intermediate the upstream signed for tether-ca (AnchorIsIntermediate).
	AnchorFingerprint    string
	AnchorIsIntermediate bool
}

// Status reports the journal's generations and the next scheduled step.
func (c *CA) Status() Status {
	c.mu.Lock()
	st := c.state
	c.mu.Unlock()
	s := Status{TrustDomain: st.TrustDomain, BundleSequence: st.BundleSequence}
	for _, g := range st.Generations {
		gs := GenerationStatus{ID: g.ID, State: g.State, RetireAfter: g.RetireAfter, Upstream: g.Upstream, RootOffline: g.OfflineRoot}
		if len(g.Roots) > 0 {
			gs.RootFingerprint = Fingerprint(g.Roots[0])
			if root, err := x509.ParseCertificate(g.Roots[0]); err == nil {
				gs.RootNotAfter = root.NotAfter
			}
		}
		if a := g.anchors(); len(a) > 0 {
			gs.AnchorFingerprint = Fingerprint(a[0])
			gs.AnchorIsIntermediate = len(g.Chain) > 0 && bytes.Equal(a[0], g.Chain[0])
		}
		if len(g.Chain) > 0 {
			if inter, err := x509.ParseCertificate(g.Chain[0]); err == nil {
				gs.IntermediateNotAfter = inter.NotAfter
			}
		}
		s.Generations = append(s.Generations, gs)
	}
	now := c.cfg.Clock.Now()
	s.NextStep, s.NextStepAt = c.due(st, nil)
	if s.NextStep != "" {
		s.NextStepOverdue = !now.Before(s.NextStepAt)
		s.NextStepManual = !c.automatic(s.NextStep)
	}
	if step, at := c.due(st, isRenewal); step != "" {
		s.IntermediateRenewalAt, s.IntermediateRenewalOverdue = at, !now.Before(at)
	}
	s.Revocations = c.Revocations()
	return s
}

func isRenewal(s Step) bool { return s == StepRenewIntermediate }

// intermediateRenewalOverdue reports whether an intermediate renewal is due
// and not done: the upstream fails, or this CA cannot write its state.
func (c *CA) intermediateRenewalOverdue() bool {
	c.mu.Lock()
	st := c.state
	c.mu.Unlock()
	if st == nil {
		return false
	}
	step, at := c.due(st, isRenewal)
	return step != "" && !c.cfg.Clock.Now().Before(at)
}
