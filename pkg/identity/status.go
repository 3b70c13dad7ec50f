package identity

import (
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
		if len(g.Chain) > 0 {
			if inter, err := x509.ParseCertificate(g.Chain[0]); err == nil {
				gs.IntermediateNotAfter = inter.NotAfter
			}
		}
		s.Generations = append(s.Generations, gs)
	}
	s.NextStep, s.NextStepAt = c.due(st)
	return s
}
