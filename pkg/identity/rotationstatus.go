package identity

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// RotationStatus is what the rotation gates see: per generation, how many
// sidecars trust its anchor and how many hold an SVID from it, mesh-wide.
type RotationStatus struct {
	Generations []GenerationCounts
	// Reporting counts the sidecars whose reports count (silent ones
	// included: see SidecarReport.Silent).
	Reporting int
	// Silent counts those that stopped reporting but whose SVID is valid.
	Silent int
	// NotReporting are bundle-watching connections without reports.
	NotReporting []NotReportingConn
	// ActivateLaggards do not trust the prepared generation's anchor;
	// RetireLaggards hold an SVID from a superseded generation.
	ActivateLaggards, RetireLaggards []SidecarReport
	Replicas, StaleReplicas          []string
	// Incomplete: a replica refused reports over its bound.
	Incomplete bool
	// PeersError is why the other replicas' reports could not be read.
	PeersError error
	// ActivateBlocked and RetireBlocked say why the gates refuse now (nil:
	// they pass, or there is no such step to take).
	ActivateBlocked, RetireBlocked error
	// BundleEndpoint is the bundle endpoint gate of activate; nil when this
	// CA serves no bundle endpoint or nothing is prepared.
	BundleEndpoint *BundleEndpointGate
	Interval, TTL  time.Duration
	At             time.Time
}

// GenerationCounts are the counts of one generation.
type GenerationCounts struct {
	ID                uint64
	State             GenerationState
	AnchorFingerprint string
	Trusting, Holding int
}

// maxNamed is how many laggards a refusal names.
const maxNamed = 10

// reportView merges this replica's reports with the other replicas'.
func (c *CA) reportView(ctx context.Context) (ReportSnapshot, []string, []string, error) {
	snaps := []ReportSnapshot{c.reports.Snapshot()}
	var err error
	if c.cfg.PeerReports != nil {
		var peers []ReportSnapshot
		peers, err = c.cfg.PeerReports(ctx)
		for _, p := range peers {
			if p.Replica != c.reports.replica {
				snaps = append(snaps, p)
			}
		}
		if err != nil {
			err = fmt.Errorf("reading the reports of the other CA replicas: %w", err)
		}
	}
	merged, replicas, stale := MergeSnapshots(c.cfg.Clock.Now(), snaps)
	return merged, replicas, stale, err
}

// RotationStatus counts the sidecars' reports against the current journal
// and evaluates the activate and retire gates.
func (c *CA) RotationStatus(ctx context.Context) RotationStatus {
	view, replicas, stale, err := c.reportView(ctx)
	c.mu.Lock()
	st := c.state
	c.mu.Unlock()
	return c.rotationStatus(st, view, replicas, stale, err)
}

func (c *CA) rotationStatus(st *State, view ReportSnapshot, replicas, stale []string, peersErr error) RotationStatus {
	now := c.cfg.Clock.Now()
	rs := RotationStatus{Reporting: len(view.Reports), NotReporting: view.NotReporting, Replicas: replicas, StaleReplicas: stale,
		Incomplete: view.Incomplete, PeersError: peersErr, Interval: c.reports.Interval(), TTL: c.reports.TTL(), At: now}
	for _, r := range view.Reports {
		if r.Silent(now, c.reports.TTL()) {
			rs.Silent++
		}
	}
	for _, g := range st.Generations {
		if g.State == Retired {
			continue
		}
		gc := GenerationCounts{ID: g.ID, State: g.State}
		anchors := fingerprints(g.anchors())
		if len(anchors) > 0 {
			gc.AnchorFingerprint = anchors[0]
		}
		for _, r := range view.Reports {
			trusts := trustsAll(r, anchors)
			if trusts {
				gc.Trusting++
			}
			if slices.Contains(anchors, r.Holds) {
				gc.Holding++
			}
			if g.State == Prepared && !trusts {
				rs.ActivateLaggards = append(rs.ActivateLaggards, r)
			}
			if g.State == Superseded && slices.Contains(anchors, r.Holds) {
				rs.RetireLaggards = append(rs.RetireLaggards, r)
			}
		}
		rs.Generations = append(rs.Generations, gc)
	}
	if p := st.find(Prepared); p != nil {
		rs.ActivateBlocked = rs.gate(fmt.Sprintf("%d of %d reporting sidecars do not trust the root of generation %d yet", len(rs.ActivateLaggards), rs.Reporting, p.ID),
			rs.ActivateLaggards, "they receive it over their trust bundle stream from tether-ca; activating now would break their connections to peers with new SVIDs")
	}
	if g := c.endpointGate(st, now); g.Generation != 0 {
		rs.BundleEndpoint = &g
	}
	if s := st.find(Superseded); s != nil {
		rs.RetireBlocked = rs.gate(fmt.Sprintf("%d of %d reporting sidecars still hold an SVID chaining to the root of generation %d", len(rs.RetireLaggards), rs.Reporting, s.ID),
			rs.RetireLaggards, "they renew onto the active generation at half their SVID's life; retiring now would make every peer refuse their SVID")
	}
	return rs
}

// gate returns the refusal for a step whose laggards are given (nil when it
// may be taken). It refuses too when the counts cannot be complete.
func (rs *RotationStatus) gate(what string, laggards []SidecarReport, why string) error {
	switch {
	case rs.PeersError != nil:
		return fmt.Errorf("%w: %v; without them the CA cannot tell whether every sidecar is ready (use --force to proceed anyway)", ErrRotation, rs.PeersError)
	case rs.Incomplete:
		return fmt.Errorf("%w: a CA replica refused sidecar reports over its bound (%d) in the last %s, so the counts miss sidecars (use --force to proceed anyway)", ErrRotation, DefaultMaxReports, rs.TTL)
	case len(laggards) == 0:
		return nil
	}
	return fmt.Errorf("%w: %s: %s; %s (`tether ca rotate status` lists them; use --force to proceed anyway)", ErrRotation, what, NameLaggards(laggards, rs.At, rs.TTL), why)
}

// NameLaggards names up to maxNamed reports: SPIFFE ID, instance, version
// and last report.
func NameLaggards(rs []SidecarReport, now time.Time, ttl time.Duration) string {
	var names []string
	for i, r := range rs {
		if i == maxNamed {
			names = append(names, fmt.Sprintf("and %d more", len(rs)-maxNamed))
			break
		}
		silent := ""
		if r.Silent(now, ttl) {
			silent = ", silent"
		}
		names = append(names, fmt.Sprintf("%s (instance %s, version %s, last report %s%s)", r.ID, orDash(r.Instance), orDash(r.Version),
			r.LastReport.UTC().Format(time.RFC3339), silent))
	}
	return strings.Join(names, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func trustsAll(r SidecarReport, anchors []string) bool {
	if len(anchors) == 0 {
		return false
	}
	for _, a := range anchors {
		if !slices.Contains(r.Trusted, a) {
			return false
		}
	}
	return true
}

func fingerprints(ders [][]byte) []string {
	out := make([]string, 0, len(ders))
	for _, d := range ders {
		out = append(out, Fingerprint(d))
	}
	return out
}

// anchorOf returns the SHA-256 of the trust anchor of a generation still
// trusted that the presented chain (leaf first) verifies against, or "".
func (c *CA) anchorOf(chain []*x509.Certificate) string {
	c.mu.Lock()
	st := c.state
	c.mu.Unlock()
	now := c.cfg.Clock.Now()
	for _, g := range st.Generations {
		if g.State == Retired {
			continue
		}
		for _, der := range g.anchors() {
			a, err := x509.ParseCertificate(der)
			if err != nil {
				continue
			}
			if _, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(c.cfg.TrustDomain, []*x509.Certificate{a}), x509svid.WithTime(now)); err == nil {
				return Fingerprint(der)
			}
		}
	}
	return ""
}

// gateView is what a rotation step checks besides time: the merged
// reports, read before the state lock is taken.
type gateView struct {
	view             ReportSnapshot
	replicas, stale  []string
	peersErr         error
	warnings         []string
	loggedWaitReason string
}

func (c *CA) readGateView(ctx context.Context) *gateView {
	v, replicas, stale, err := c.reportView(ctx)
	return &gateView{view: v, replicas: replicas, stale: stale, peersErr: err}
}

// checkGate returns the refusal of the report gate for step on st, or nil;
// with force a refusal becomes a warning, logged and kept in gv.warnings.
func (c *CA) checkGate(gv *gateView, st *State, step Step, force bool) error {
	if gv == nil {
		return nil
	}
	rs := c.rotationStatus(st, gv.view, gv.replicas, gv.stale, gv.peersErr)
	var err error
	switch step {
	case StepActivate:
		err = rs.ActivateBlocked
	case StepRetire:
		err = rs.RetireBlocked
	}
	if err == nil || !force {
		return err
	}
	c.forced(gv, step, err)
	return nil
}

// forced records that --force overrode a gate.
func (c *CA) forced(gv *gateView, step Step, err error) {
	msg := fmt.Sprintf("--force: %s taken although %s", step, strings.TrimPrefix(err.Error(), ErrRotation.Error()+": "))
	if gv != nil {
		gv.warnings = append(gv.warnings, msg)
	}
	c.log.Warn("rotation gate overridden with --force", slog.String("step", string(step)), slog.String("refusal", err.Error()))
}

// LocalReports returns the reports this replica received that count now.
func (c *CA) LocalReports() ReportSnapshot { return c.reports.Snapshot() }

// LocalReportsChanged returns a channel closed at the next change of
// LocalReports (other than report times).
func (c *CA) LocalReportsChanged() <-chan struct{} { return c.reports.Changed() }

// ReportTTL is how long after its last report a sidecar counts as
// reporting.
func (c *CA) ReportTTL() time.Duration { return c.reports.TTL() }
