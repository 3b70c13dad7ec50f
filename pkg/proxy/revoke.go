package proxy

import (
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// An open stream was authorized when it started. Two things can withdraw
// that authorization while it is open, and both close it (the tunnel it
// runs on, and the local connection):
//
//   - a policy change: Revalidate re-checks every open stream against the
//     current policy (inbound: Authorize for the caller and app port, or
//     AuthorizeUnauthenticated for a caller without identity; outbound:
//     the Destination's Recheck);
//   - the expiry of the SVID the tunnel was authenticated with (inbound:
//     the caller's; outbound: the peer's or our own, whichever is first);
//   - for a peer of another trust domain, that domain no longer trusted
//     (Revalidate after a change of the foreign bundles: the federation
//     was removed, or the peer's root left its bundle).
//
// Each closure is counted in tether_sidecar_connections_revoked_total,
// logged with the rule, and the stream's access log entry has result
// "revoked".

// liveStream is an open stream, as Revalidate sees it.
type liveStream struct {
	direction string
	// peer is the caller (inbound) or the server (outbound); zero for a
	// caller without identity (permissive mode).
	peer spiffeid.ID
	// source, dest and destAddr are for the log (dest "at" destAddr when
	// destAddr is set, joined only if the stream is revoked).
	source, dest, destAddr string
	// check decides the stream again: nil to keep it, or a denial.
	check func() error
	// kill closes the stream's connections.
	kill func()
	// foreign, for a peer of another trust domain, are the tunnel's
	// anchors: Revalidate closes the stream once one is no longer trusted
	// (the federation was removed, or the peer's root left its bundle).
	foreign []anchor

	revoked atomic.Pointer[revocation]
	expiry  *time.Timer
}

// revocation is why a stream was closed.
type revocation struct {
	reason string // label: policy, svid_expired
	rule   string
	detail string
}

// streamExpiry is when a stream on a tunnel authenticated until
// tunnelExpiry must end: then with Config.EndStreamsAtSVIDExpiry, never
// (zero) without.
func (p *Proxy) streamExpiry(tunnelExpiry time.Time) time.Time {
	if !p.cfg.EndStreamsAtSVIDExpiry {
		return time.Time{}
	}
	return tunnelExpiry
}

// trackStream registers s while it is open, with a timer that closes it
// when expires passes (if not zero; see streamExpiry). The returned func
// unregisters it.
func (p *Proxy) trackStream(s *liveStream, expires time.Time) (untrack func()) {
	p.mu.Lock()
	p.streams[s] = struct{}{}
	p.mu.Unlock()
	if !expires.IsZero() {
		s.expiry = time.AfterFunc(time.Until(expires), func() {
			p.revoke(s, &revocation{reason: "svid_expired", rule: "SVID expiry",
				detail: "the SVID the tunnel was authenticated with expired at " + expires.UTC().Format(time.RFC3339)})
		})
	}
	return func() {
		if s.expiry != nil {
			s.expiry.Stop()
		}
		p.mu.Lock()
		delete(p.streams, s)
		p.mu.Unlock()
	}
}

// Revalidate decides every open stream again with the current policy and
// closes those it now denies, and those with a peer of another trust
// domain that is no longer trusted. Call it after a policy change and
// after a change of the foreign bundles. It returns how many it closed.
func (p *Proxy) Revalidate() int {
	p.mu.Lock()
	open := make([]*liveStream, 0, len(p.streams))
	for s := range p.streams {
		open = append(open, s)
	}
	p.mu.Unlock()
	n := 0
	for _, s := range open {
		if s.foreign != nil && !p.stillTrusted(s.foreign...) {
			if p.revoke(s, &revocation{reason: "untrusted", rule: "trust bundle",
				detail: "the peer's trust domain " + s.peer.TrustDomain().Name() + " is no longer trusted (the federation was removed, or the root its SVID chains to left that domain's bundle)"}) {
				n++
			}
			continue
		}
		if s.check == nil {
			continue
		}
		if err := s.check(); err != nil && p.revoke(s, &revocation{reason: "policy", rule: ruleOf(err), detail: err.Error()}) {
			n++
		}
	}
	return n
}

// revoke closes s once, counting and logging why.
func (p *Proxy) revoke(s *liveStream, r *revocation) bool {
	if !s.revoked.CompareAndSwap(nil, r) {
		return false
	}
	p.cfg.Metrics.revoked.WithLabelValues(s.direction, r.reason).Inc()
	p.cfg.Logger.Info("open connection closed: no longer authorized",
		slog.String("direction", s.direction), slog.String("peer_id", s.peer.String()),
		slog.String("source", s.source), slog.String("destination", s.destination()),
		slog.String("reason", r.reason), slog.String("rule", r.rule), slog.String("detail", r.detail))
	s.kill()
	return true
}

func (s *liveStream) destination() string {
	if s.destAddr == "" {
		return s.dest
	}
	return s.dest + " at " + s.destAddr
}

// finish fills the access log entry of a stream that was revoked.
func (s *liveStream) finish(e *Entry) (result, decision string, revoked bool) {
	r := s.revoked.Load()
	if r == nil {
		return "", "", false
	}
	e.Reason, e.Rule = "revoked: "+r.detail, r.rule
	return "revoked", "deny", true
}
