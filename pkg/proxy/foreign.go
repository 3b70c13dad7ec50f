package proxy

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Peers of another trust domain (federation). The proxy verifies every
// peer, both ways, with one bundle source (trustSource): the own trust
// domain's bundle comes from Config.Identity, another domain's from
// Config.ForeignBundles, which is never asked for the own domain. Inbound,
// a verified foreign caller is admitted to the tunnel only when
// Config.AcceptForeign says some inbound rule of this workload names it;
// each stream is then decided by Authorize, like any caller's. Refusals are
// counted in tether_sidecar_foreign_peer_refusals_total{direction,reason}.

// Reasons of a foreign peer's refusal (label reason of
// tether_sidecar_foreign_peer_refusals_total).
const (
	// ForeignUntrusted: the peer's trust domain has no bundle here (not
	// federated, or no foreign bundles configured).
	ForeignUntrusted = "untrusted_domain"
	// ForeignNotAdmitted: the peer's SVID verified against its domain's
	// bundle, but no inbound rule of this workload names it.
	ForeignNotAdmitted = "not_admitted"
)

// RuleForeignNotAdmitted is the rule of an inbound refusal of a verified
// caller of another trust domain that no inbound rule names (label reason
// of tether_sidecar_authz_denials_total).
const RuleForeignNotAdmitted = "caller of another trust domain: no inbound rule of this workload names it"

// UntrustedDomainError is returned by the proxy's bundle source for a trust
// domain it holds no bundle for: a peer of that domain cannot be verified.
type UntrustedDomainError struct {
	TrustDomain spiffeid.TrustDomain
	Err         error // why (the foreign source's error), or nil
}

func (e *UntrustedDomainError) Error() string {
	msg := fmt.Sprintf("trust domain %q is not federated with this mesh (no trust bundle for it)", e.TrustDomain.Name())
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *UntrustedDomainError) Unwrap() error { return e.Err }

// ForeignNotAdmittedError is the inbound handshake's refusal of a verified
// caller of another trust domain that Config.AcceptForeign does not admit.
type ForeignNotAdmittedError struct {
	ID spiffeid.ID
}

func (e *ForeignNotAdmittedError) Error() string {
	return fmt.Sprintf("caller %s is of another trust domain, and no inbound rule (AccessPolicy source by spiffeID or trustDomain) of this workload names it", e.ID)
}

// trustSource is the bundle source the proxy verifies peers with.
type trustSource struct {
	own     spiffeid.TrustDomain
	local   x509bundle.Source
	foreign x509bundle.Source // nil: no foreign peer verifies
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *trustSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td == s.own {
		return s.local.GetX509BundleForTrustDomain(td)
	}
	if s.foreign == nil {
		return nil, &UntrustedDomainError{TrustDomain: td}
	}
	b, err := s.foreign.GetX509BundleForTrustDomain(td)
	if err != nil {
		return nil, &UntrustedDomainError{TrustDomain: td, Err: err}
	}
	if b == nil || b.TrustDomain() != td {
		// A source answering for another domain than asked must not let
		// that domain's roots vouch for this one's IDs.
		got := "none"
		if b != nil {
			got = b.TrustDomain().Name()
		}
		return nil, &UntrustedDomainError{TrustDomain: td, Err: fmt.Errorf("the foreign bundle source answered with a bundle of trust domain %q", got)}
	}
	return b, nil
}

// authorizeInboundPeer is the inbound handshake's authorizer, run on a
// verified SVID: the own trust domain, or a foreign ID AcceptForeign
// admits.
func (p *Proxy) authorizeInboundPeer(id spiffeid.ID, _ [][]*x509.Certificate) error {
	if id.MemberOf(p.cfg.TrustDomain) {
		return nil
	}
	if p.cfg.AcceptForeign != nil && p.cfg.AcceptForeign(id) {
		return nil
	}
	return &ForeignNotAdmittedError{ID: id}
}

// foreignRefusal counts and logs a handshake that failed for a peer of
// another trust domain, and returns the access log entry's rule and
// source ID (verified only for ForeignNotAdmitted), or false when err is
// not such a refusal.
func (p *Proxy) foreignRefusal(direction, addr string, err error) (rule, sourceID string, ok bool) {
	var na *ForeignNotAdmittedError
	var ud *UntrustedDomainError
	switch {
	case errors.As(err, &na):
		p.cfg.Metrics.foreign.WithLabelValues(direction, ForeignNotAdmitted).Inc()
		p.cfg.Metrics.denials.WithLabelValues(direction, na.ID.String(), addr, RuleForeignNotAdmitted).Inc()
		p.cfg.Denials.Add(Denial{Direction: direction, Source: na.ID.String(), Destination: addr, Rule: RuleForeignNotAdmitted, Reason: na.Error()})
		p.cfg.Logger.Info("peer of another trust domain refused", slog.String("direction", direction),
			slog.String("peer_id", na.ID.String()), slog.String("reason", ForeignNotAdmitted), slog.String("address", addr))
		return RuleForeignNotAdmitted, na.ID.String(), true
	case errors.As(err, &ud):
		p.cfg.Metrics.foreign.WithLabelValues(direction, ForeignUntrusted).Inc()
		p.cfg.Logger.Info("peer of another trust domain refused", slog.String("direction", direction),
			slog.String("trust_domain", ud.TrustDomain.Name()), slog.String("reason", ForeignUntrusted), slog.String("address", addr), slog.Any("error", ud))
		return "", "", true
	}
	return "", "", false
}

// anchor is a bundle authority a tunnel's chain ends at, with the trust
// domain whose bundle holds it.
type anchor struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate // nil: not found at handshake time
}
