package identity

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"time"
)

// BundleEndpointGateSlack is the fixed part of the bundle endpoint gate's
// margin: the time a follower's fetch may take and the delay of its timer.
// The margin is this plus the CA's TickInterval, how long another replica
// may serve the journal's previous bundle before it reloads.
const BundleEndpointGateSlack = 10 * time.Second

// BundleEndpointGate is the bundle endpoint's gate on activating the
// prepared generation: federated trust domains fetch this domain's bundle
// at its refresh hint, so the prepared root must have been served for a
// refresh hint (plus a margin) before it signs, or their sidecars refuse
// peers with the new SVIDs.
type BundleEndpointGate struct {
	// Generation is the prepared generation.
	Generation uint64
	// Served is the endpoint's first answer holding its anchors (zero At:
	// nothing fetched them yet).
	Served EndpointServed
	// RefreshHint is the larger of the hint configured and the one served;
	// Margin is added to it.
	RefreshHint, Margin time.Duration
	// PassesAt is Served.At + RefreshHint + Margin (zero while not served).
	PassesAt time.Time
	// Blocked says why activate waits (nil: it may be taken).
	Blocked error
}

// endpointGate evaluates the bundle endpoint gate of st's prepared
// generation at now. Its zero value (nothing blocked) is returned when
// this CA serves no bundle endpoint or nothing is prepared.
func (c *CA) endpointGate(st *State, now time.Time) BundleEndpointGate {
	p := st.find(Prepared)
	if c.cfg.BundleEndpointRefreshHint <= 0 || p == nil {
		return BundleEndpointGate{}
	}
	g := BundleEndpointGate{Generation: p.ID, Served: p.EndpointServed, RefreshHint: max(c.cfg.BundleEndpointRefreshHint, p.EndpointServed.RefreshHint),
		Margin: c.cfg.TickInterval + BundleEndpointGateSlack}
	wait := fmt.Sprintf("%s (its refresh hint %s plus a margin of %s)", g.RefreshHint+g.Margin, g.RefreshHint, g.Margin)
	if p.EndpointServed.At.IsZero() {
		g.Blocked = fmt.Errorf("%w: the bundle endpoint has not served the root of generation %d to anyone since it was prepared at %s: no federated trust domain has fetched it, and one that follows this domain would refuse peers with SVIDs of the new root; activate waits until %s after the first fetch of a bundle holding it (`tether ca rotate status`; use --force to proceed anyway)",
			ErrRotation, p.ID, p.CreatedAt.UTC().Format(time.RFC3339), wait)
		return g
	}
	g.PassesAt = p.EndpointServed.At.Add(g.RefreshHint + g.Margin)
	if now.Before(g.PassesAt) {
		g.Blocked = fmt.Errorf("%w: the bundle endpoint first served the root of generation %d at %s (bundle sequence %d); federated trust domains that refresh at its hint hold it %s later, at %s (`tether ca rotate status`; use --force to proceed anyway)",
			ErrRotation, p.ID, p.EndpointServed.At.UTC().Format(time.RFC3339), p.EndpointServed.Sequence, wait, g.PassesAt.UTC().Format(time.RFC3339))
	}
	return g
}

// endpointServed records, once per prepared generation, that the bundle
// endpoint answered a fetch with bv, served with hint, when bv holds the
// prepared generation's anchors. The record is written to the journal, so
// every replica and a restarted CA see it.
func (c *CA) endpointServed(ctx context.Context, bv *BundleVersion, hint time.Duration) {
	c.metrics.endpointServed.Inc()
	c.mu.Lock()
	p := c.state.find(Prepared)
	need := p != nil && p.EndpointServed.At.IsZero() && holdsAnchors(bv, p)
	c.mu.Unlock()
	if !need {
		return
	}
	rec := EndpointServed{At: c.cfg.Clock.Now(), Sequence: bv.Sequence, RefreshHint: hint}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var gen uint64
	err := c.mutate(ctx, func(st *State, _ time.Time) (bool, error) {
		gen = 0
		p := st.find(Prepared)
		if p == nil || !p.EndpointServed.At.IsZero() || !holdsAnchors(bv, p) {
			return false, nil // activated, or recorded by another request or replica
		}
		p.EndpointServed, gen = rec, p.ID
		return true, nil
	})
	switch {
	case err != nil:
		c.log.Error("recording that the bundle endpoint served a prepared root failed; the next fetch tries again",
			slog.Uint64("bundle_sequence", bv.Sequence), slog.Any("error", err))
	case gen != 0:
		c.log.Info("bundle endpoint served the prepared root for the first time", slog.Uint64("generation", gen),
			slog.Uint64("bundle_sequence", bv.Sequence), slog.Duration("refresh_hint", hint))
	}
}

// holdsAnchors reports whether bv trusts every anchor of g.
func holdsAnchors(bv *BundleVersion, g *Generation) bool {
	anchors := g.anchors()
	if len(anchors) == 0 {
		return false
	}
	held := bv.Bundle.X509Authorities()
	for _, der := range anchors {
		found := false
		for _, h := range held {
			if bytes.Equal(h.Raw, der) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
