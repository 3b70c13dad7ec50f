package identity

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// OIDAttestation identifies the X.509 extension in which the CA records,
// in every SVID it signs, how and when the SVID's chain of renewals was
// last attested. It is non-critical (verifiers that do not know it ignore
// it) and is under a private arc not yet registered with IANA for
// Tether (to be replaced by Tether's PEN when it has one; the CA would then
// read both for one MaxRenewalAge). The CA reads it only from a
// client certificate that verified against its own bundle, so only records
// the CA itself signed are believed.
var OIDAttestation = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 65312, 1, 1}

// KindUnrecorded is the attestation kind recorded for the renewal of an
// SVID issued before the CA recorded attestations: its kind is not known,
// and its chain is taken as attested at the old SVID's NotBefore.
const KindUnrecorded = "unrecorded"

// KindLocal is the attestation kind of an SVID issued by CA.Sign, whose
// caller vouches for the identity in process (the CA's own SVID, tools).
const KindLocal = "local"

// DefaultMaxRenewalAge is how long after its last attestation an SVID
// chain may be renewed over mTLS alone (see Config.MaxRenewalAge).
const DefaultMaxRenewalAge = 7 * 24 * time.Hour

// Attestation is how and when an SVID's chain was last attested: Kind is
// the credential kind (KindJoinToken, KindK8sSAT, ...), At the time the CA
// accepted the credential, to the second.
type Attestation struct {
	Kind string
	At   time.Time
}

// attestationRecord is the extension's DER:
//
//	TetherAttestation ::= SEQUENCE {
//	    kind        UTF8String,
//	    attestedAt  GeneralizedTime }
type attestationRecord struct {
	Kind string    `asn1:"utf8"`
	At   time.Time `asn1:"generalized"`
}

// ReattestsOnRenewal reports whether an identity attested with this
// credential kind must present a fresh credential of that kind on every
// renewal. Kubernetes tokens are rotated by the kubelet and prove, through
// TokenReview, that the Pod still exists; the SVID alone proves nothing.
func ReattestsOnRenewal(kind string) bool { return kind == KindK8sSAT }

func (a Attestation) extension() (pkix.Extension, error) {
	der, err := asn1.Marshal(attestationRecord{Kind: a.Kind, At: a.At.UTC().Truncate(time.Second)})
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encode attestation record: %w", err)
	}
	return pkix.Extension{Id: OIDAttestation, Critical: false, Value: der}, nil
}

// AttestationOf reads the attestation record of an SVID the CA issued.
// found is false when there is none (an SVID from before the CA recorded
// them); an error means a record is there but malformed.
func AttestationOf(leaf *x509.Certificate) (att Attestation, found bool, err error) {
	for _, e := range leaf.Extensions {
		if !e.Id.Equal(OIDAttestation) {
			continue
		}
		if found {
			return Attestation{}, true, fmt.Errorf("two attestation records")
		}
		found = true
		var r attestationRecord
		rest, err := asn1.Unmarshal(e.Value, &r)
		if err != nil {
			return Attestation{}, true, fmt.Errorf("malformed attestation record: %w", err)
		}
		if len(rest) > 0 || r.Kind == "" || r.At.IsZero() {
			return Attestation{}, true, fmt.Errorf("malformed attestation record")
		}
		att = Attestation{Kind: r.Kind, At: r.At.UTC()}
	}
	return att, found, nil
}

// renewal decides whether leaf, a client SVID that verified against the
// bundle, may be renewed on its own (over mTLS, with no credential), and
// returns the attestation to copy into the new SVID. It fails closed.
func (c *CA) renewal(leaf *x509.Certificate, id spiffeid.ID) (Attestation, error) {
	att, found, err := AttestationOf(leaf)
	if err != nil {
		return Attestation{}, fmt.Errorf("%w: the SVID of %s presented for renewal has a %v; attest again with a credential", ErrUnauthenticated, id, err)
	}
	if !found {
		// Issued before the CA recorded attestations: the chain is taken
		// as attested when this SVID was issued, so it ends at most
		// MaxRenewalAge after the CA was upgraded.
		att = Attestation{Kind: KindUnrecorded, At: leaf.NotBefore.UTC().Truncate(time.Second)}
	}
	if ReattestsOnRenewal(att.Kind) {
		return Attestation{}, fmt.Errorf("%w: %s was attested with a Kubernetes ServiceAccount token, so it is renewed only with a fresh one: send the Pod's current projected token with the renewal (the SVID alone does not prove the Pod still exists)", ErrUnauthenticated, id)
	}
	now := c.cfg.Clock.Now()
	if age := now.Sub(att.At); age > c.cfg.MaxRenewalAge {
		what := "a new join token"
		if att.Kind != KindJoinToken {
			what = "a new join token (or another credential)"
		}
		return Attestation{}, fmt.Errorf("%w: the renewal chain of %s was last attested (%s) at %s, %s ago, more than --max-renewal-age %s; renewing over mTLS is refused, bootstrap again with %s (tether ca token create --spiffe-id %s)",
			ErrUnauthenticated, id, att.Kind, att.At.Format(time.RFC3339), age.Round(time.Second), c.cfg.MaxRenewalAge, what, id)
	}
	return att, nil
}

// PrefixTTL gives the SVIDs of every SPIFFE ID whose path is Prefix, or
// is under Prefix ("/ns/payments" covers "/ns/payments/sa/api" but not
// "/ns/payments-v2"), a lifetime shorter than Config.SVIDTTL.
type PrefixTTL struct {
	Prefix string
	TTL    time.Duration
}

// ParsePrefixTTL parses PREFIX=TTL, e.g. "/ns/payments=10m".
func ParsePrefixTTL(s string) (PrefixTTL, error) {
	prefix, ttl, ok := strings.Cut(s, "=")
	if !ok {
		return PrefixTTL{}, fmt.Errorf("%w: %q: want PATH-PREFIX=TTL, e.g. /ns/payments=10m", ErrConfig, s)
	}
	d, err := time.ParseDuration(ttl)
	if err != nil {
		return PrefixTTL{}, fmt.Errorf("%w: %q: %v", ErrConfig, s, err)
	}
	return PrefixTTL{Prefix: prefix, TTL: d}, nil
}

// CheckPrefixTTLs validates rules against the SVID lifetime and returns
// them normalized (no trailing slash), longest prefix first.
func CheckPrefixTTLs(rules []PrefixTTL, svidTTL time.Duration) ([]PrefixTTL, error) {
	out := make([]PrefixTTL, 0, len(rules))
	for _, r := range rules {
		if !strings.HasPrefix(r.Prefix, "/") {
			return nil, fmt.Errorf("%w: SVID lifetime prefix %q must start with / (a SPIFFE ID path such as /ns/payments)", ErrConfig, r.Prefix)
		}
		p := strings.TrimSuffix(r.Prefix, "/")
		if err := spiffeid.ValidatePath(p); err != nil || p == "" {
			return nil, fmt.Errorf("%w: SVID lifetime prefix %q is not a SPIFFE ID path (such as /ns/payments)", ErrConfig, r.Prefix)
		}
		switch {
		case r.TTL < time.Minute:
			return nil, fmt.Errorf("%w: SVID lifetime %s for %s is shorter than a minute", ErrConfig, r.TTL, p)
		case r.TTL >= svidTTL:
			return nil, fmt.Errorf("%w: SVID lifetime %s for %s is not shorter than the SVID lifetime %s (prefixes only shorten it)", ErrConfig, r.TTL, p, svidTTL)
		case slices.ContainsFunc(out, func(o PrefixTTL) bool { return o.Prefix == p }):
			return nil, fmt.Errorf("%w: SVID lifetime prefix %s given twice", ErrConfig, p)
		}
		out = append(out, PrefixTTL{Prefix: p, TTL: r.TTL})
	}
	// Longest prefix first, so the first match is the most specific.
	slices.SortFunc(out, func(a, b PrefixTTL) int { return len(b.Prefix) - len(a.Prefix) })
	return out, nil
}

// svidTTL is the lifetime of an SVID for id: that of the longest matching
// prefix rule, else Config.SVIDTTL.
func (c *CA) svidTTL(id spiffeid.ID) time.Duration {
	path := id.Path()
	for _, r := range c.cfg.TTLByPrefix {
		if path == r.Prefix || strings.HasPrefix(path, r.Prefix+"/") {
			return r.TTL
		}
	}
	return c.cfg.SVIDTTL
}

// MaxRenewalAge is how long after its last attestation an SVID chain may
// be renewed over mTLS alone.
func (c *CA) MaxRenewalAge() time.Duration { return c.cfg.MaxRenewalAge }
