package identity

import (
	"cmp"
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Revocation.
//
// The CA cannot take back an SVID it signed: a revoked SVID keeps
// authenticating between sidecars until it expires (at most the SVID
// lifetime). What the CA refuses is everything that would extend it: renewal
// over mTLS, JWT-SVIDs for it and, for a revoked SPIFFE ID, new attestation.
// The list lives in State, so every replica enforces it once it has reloaded
// the store (Config.TickInterval), and an entry is pruned once no SVID it
// can match is still valid.

// ErrRevoked is returned when a caller's SVID, SPIFFE ID or join token has
// been revoked. It is a kind of ErrPermissionDenied.
var ErrRevoked = fmt.Errorf("%w: revoked", ErrPermissionDenied)

// RevocationKind says what a revocation entry matches.
type RevocationKind string

// Revocation kinds.
const (
	// RevokedID matches SVIDs of a SPIFFE ID issued before Until, and
	// refuses new attestation of the ID while it blocks.
	RevokedID RevocationKind = "spiffe_id"
	// RevokedSerial matches one SVID by its serial number.
	RevokedSerial RevocationKind = "serial"
	// RevokedJoinToken records a join token that was deleted before use.
	RevokedJoinToken RevocationKind = "join_token"
)

// MinTokenHashPrefix is the shortest join token hash prefix accepted to name
// a token (`tether ca token list` shows 16 characters).
const MinTokenHashPrefix = 8

// Revocation is one entry of the CA's revocation list.
type Revocation struct {
	Kind RevocationKind `json:"kind"`
	// Value is the SPIFFE ID, the serial number (lowercase hex) or the
	// SHA-256 of the join token (hex).
	Value string `json:"value"`
	// SPIFFEID is, for a join token, the ID the token proved.
	SPIFFEID  string    `json:"spiffe_id,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
	// Until, for a SPIFFE ID: SVIDs of the ID issued before Until are
	// refused renewal, and until then no credential may attest the ID.
	// Zero means until `tether ca unrevoke`. For a join token: when the
	// token would have expired.
	Until  time.Time `json:"until,omitzero"`
	Reason string    `json:"reason,omitempty"`
}

// Blocking reports whether the entry still refuses new attestation of its
// SPIFFE ID at now.
func (r *Revocation) Blocking(now time.Time) bool {
	return r.Kind == RevokedID && (r.Until.IsZero() || now.Before(r.Until))
}

// PruneAfter is when the entry can no longer match anything valid: zero
// while it blocks indefinitely. maxLife is the longest an SVID lives.
func (r *Revocation) PruneAfter(maxLife time.Duration) time.Time {
	switch r.Kind {
	case RevokedID:
		if r.Until.IsZero() {
			return time.Time{}
		}
		return r.Until.Add(maxLife)
	case RevokedSerial:
		return r.RevokedAt.Add(maxLife)
	default:
		return r.Until
	}
}

func validateRevocations(rs []Revocation) error {
	for _, r := range rs {
		switch r.Kind {
		case RevokedID, RevokedSerial, RevokedJoinToken:
		default:
			return fmt.Errorf("revocation of %q: unknown kind %q", r.Value, r.Kind)
		}
		if r.Value == "" {
			return fmt.Errorf("revocation of kind %q without a value", r.Kind)
		}
	}
	return nil
}

// reloadMargin is how long after a revocation every replica is assumed to
// have loaded it: twice the store reload interval. An SVID a lagging replica
// issued (renewed) meanwhile is covered by an entry that reaches this far.
func (c *CA) reloadMargin() time.Duration { return 2 * c.cfg.TickInterval }

// maxSVIDLife bounds how long after its issuance an SVID is valid, with the
// backdate as a margin for clocks that differ between replicas.
func (c *CA) maxSVIDLife() time.Duration { return c.cfg.SVIDTTL + c.cfg.Backdate }

// pruneRevocations drops the entries that can no longer match a valid SVID.
func (c *CA) pruneRevocations(rs []Revocation, now time.Time) []Revocation {
	return slices.DeleteFunc(rs, func(r Revocation) bool {
		at := r.PruneAfter(c.maxSVIDLife())
		return !at.IsZero() && !now.Before(at)
	})
}

// IDRevocation says how a SPIFFE ID is revoked.
type IDRevocation struct {
	// AllowReattest refuses only the SVIDs issued until every replica has
	// loaded the revocation (two store reload intervals): a workload that
	// attests again with a fresh credential after that gets a new SVID.
	AllowReattest bool
	// For, if set, blocks attestation for this long instead of until
	// Unrevoke. Not with AllowReattest.
	For    time.Duration
	Reason string
}

// RevokeID revokes every SVID of id issued until now. By default no
// credential may attest id again until Unrevoke: a stolen credential (a
// reusable join token, a ServiceAccount token of a pod still running) would
// otherwise give the attacker a fresh SVID right away.
func (c *CA) RevokeID(ctx context.Context, id spiffeid.ID, how IDRevocation) (Revocation, error) {
	switch {
	case id.IsZero():
		return Revocation{}, fmt.Errorf("%w: no SPIFFE ID to revoke", ErrConfig)
	case id.TrustDomain() != c.cfg.TrustDomain:
		return Revocation{}, fmt.Errorf("%w: %s is not in trust domain %s", ErrConfig, id, c.cfg.TrustDomain)
	case id == c.selfID:
		return Revocation{}, fmt.Errorf("%w: %s is the CA's own identity, which it renews itself; rotate the CA instead (tether ca rotate)", ErrConfig, id)
	case how.For < 0:
		return Revocation{}, fmt.Errorf("%w: revocation period %s is negative", ErrConfig, how.For)
	case how.AllowReattest && how.For > 0:
		return Revocation{}, fmt.Errorf("%w: a revocation that allows re-attestation does not block, so it takes no period", ErrConfig)
	}
	var out Revocation
	err := c.mutate(ctx, func(st *State, now time.Time) (bool, error) {
		r := Revocation{Kind: RevokedID, Value: id.String(), RevokedAt: now, Reason: how.Reason}
		switch {
		case how.AllowReattest:
			r.Until = now.Add(c.reloadMargin())
		case how.For > 0:
			r.Until = now.Add(max(how.For, c.reloadMargin()))
		}
		st.Revocations = c.pruneRevocations(st.Revocations, now)
		out = addRevocation(st, r)
		return true, nil
	})
	if err != nil {
		return Revocation{}, err
	}
	c.log.Warn("SPIFFE ID revoked", slog.String("spiffe_id", id.String()), slog.Bool("blocks_attestation", out.Blocking(c.cfg.Clock.Now())),
		slog.Time("until", out.Until), slog.String("reason", how.Reason))
	return out, nil
}

// addRevocation adds r, or merges it into the entry for the same thing:
// a revocation only ever gets stricter (Unrevoke relaxes it).
func addRevocation(st *State, r Revocation) Revocation {
	for i := range st.Revocations {
		e := &st.Revocations[i]
		if e.Kind != r.Kind || e.Value != r.Value {
			continue
		}
		if r.Kind == RevokedID && !e.Until.IsZero() && (r.Until.IsZero() || r.Until.After(e.Until)) {
			e.Until = r.Until
		}
		if r.Reason != "" {
			e.Reason = r.Reason
		}
		return *e
	}
	st.Revocations = append(st.Revocations, r)
	return r
}

// Unrevoke lets id be attested again. SVIDs of id issued before now stay
// refused: whoever held them when the ID was revoked must attest again.
func (c *CA) Unrevoke(ctx context.Context, id spiffeid.ID) (Revocation, error) {
	var out Revocation
	err := c.mutate(ctx, func(st *State, now time.Time) (bool, error) {
		for i := range st.Revocations {
			r := &st.Revocations[i]
			if r.Kind != RevokedID || r.Value != id.String() {
				continue
			}
			if !r.Blocking(now) {
				return false, fmt.Errorf("%w: %s is not blocked (its revocation of SVIDs issued before %s stays until they expire)",
					ErrConfig, id, r.Until.UTC().Format(time.RFC3339))
			}
			r.Until = now
			out = *r
			return true, nil
		}
		return false, fmt.Errorf("%w: %s is not revoked", ErrConfig, id)
	})
	if err != nil {
		return Revocation{}, err
	}
	c.log.Warn("SPIFFE ID unrevoked: it may be attested again; its SVIDs issued before stay revoked", slog.String("spiffe_id", id.String()))
	return out, nil
}

// ParseSerial reads a serial number as hex, with or without colons or 0x.
func ParseSerial(s string) (*big.Int, error) {
	h := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(strings.TrimSpace(s), "0x"), ":", ""))
	n, ok := new(big.Int).SetString(h, 16)
	if h == "" || !ok || n.Sign() <= 0 {
		return nil, fmt.Errorf("%w: serial %q is not a positive hexadecimal number (as `tether identity` shows it)", ErrConfig, s)
	}
	return n, nil
}

// RevokeSerial revokes the one SVID with this serial number.
func (c *CA) RevokeSerial(ctx context.Context, serial *big.Int, reason string) (Revocation, error) {
	if serial == nil || serial.Sign() <= 0 {
		return Revocation{}, fmt.Errorf("%w: no serial number to revoke", ErrConfig)
	}
	var out Revocation
	err := c.mutate(ctx, func(st *State, now time.Time) (bool, error) {
		st.Revocations = c.pruneRevocations(st.Revocations, now)
		out = addRevocation(st, Revocation{Kind: RevokedSerial, Value: serial.Text(16), RevokedAt: now, Reason: reason})
		return true, nil
	})
	if err != nil {
		return Revocation{}, err
	}
	c.log.Warn("SVID revoked", slog.String("serial", out.Value), slog.String("reason", reason))
	return out, nil
}

// HashJoinToken returns the hash under which a join token is stored and
// listed.
func HashJoinToken(token string) (string, error) {
	if err := ParseJoinToken(token); err != nil {
		return "", err
	}
	return hashToken(token), nil
}

// RevokeJoinToken deletes the live join token whose hash starts with
// hashPrefix, so no replica accepts it again. With revokeSVIDs it also
// revokes the SVIDs of the token's SPIFFE ID issued until now (an SVID does
// not record the credential it was attested with, so those of the ID are
// all that can be named); other credentials may still attest the ID.
func (c *CA) RevokeJoinToken(ctx context.Context, hashPrefix string, revokeSVIDs bool, reason string) ([]Revocation, error) {
	hashPrefix = strings.ToLower(strings.TrimSpace(hashPrefix))
	if strings.Trim(hashPrefix, "0123456789abcdef") != "" || len(hashPrefix) < MinTokenHashPrefix || len(hashPrefix) > 64 {
		return nil, fmt.Errorf("%w: join token hash %q: want at least %d hexadecimal characters of the hash `tether ca token list` shows", ErrConfig, hashPrefix, MinTokenHashPrefix)
	}
	var out []Revocation
	err := c.mutate(ctx, func(st *State, now time.Time) (bool, error) {
		out = nil
		st.JoinTokens = pruneTokens(st.JoinTokens, now)
		match := -1
		for i, t := range st.JoinTokens {
			if strings.HasPrefix(t.Hash, hashPrefix) {
				if match >= 0 {
					return false, fmt.Errorf("%w: join token hash prefix %q matches more than one token; give more characters", ErrConfig, hashPrefix)
				}
				match = i
			}
		}
		if match < 0 {
			return false, fmt.Errorf("%w: no live join token has a hash starting with %q (expired, used or never created; `tether ca token list` shows the live ones); "+
				"to refuse the SVIDs it gave, revoke its SPIFFE ID", ErrConfig, hashPrefix)
		}
		t := st.JoinTokens[match]
		st.JoinTokens = slices.Delete(st.JoinTokens, match, match+1)
		st.Revocations = c.pruneRevocations(st.Revocations, now)
		out = append(out, addRevocation(st, Revocation{Kind: RevokedJoinToken, Value: t.Hash, SPIFFEID: t.SPIFFEID, RevokedAt: now, Until: t.ExpiresAt, Reason: reason}))
		if revokeSVIDs {
			why := "join token " + t.Hash[:16] + " revoked"
			if reason != "" {
				why += ": " + reason
			}
			out = append(out, addRevocation(st, Revocation{Kind: RevokedID, Value: t.SPIFFEID, RevokedAt: now, Until: now.Add(c.reloadMargin()), Reason: why}))
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	c.log.Warn("join token revoked", slog.String("hash", out[0].Value[:16]), slog.String("spiffe_id", out[0].SPIFFEID), slog.Bool("svids_revoked", revokeSVIDs))
	return out, nil
}

// RevocationStatus is a revocation entry in force, as status shows it.
type RevocationStatus struct {
	Revocation
	// Blocking: new attestation of the SPIFFE ID is refused now.
	Blocking bool
	// PruneAfter is when the entry goes; zero while it blocks until
	// unrevoked.
	PruneAfter time.Time
}

// Revocations returns the entries in force, oldest first.
func (c *CA) Revocations() []RevocationStatus {
	c.mu.Lock()
	rs := slices.Clone(c.state.Revocations)
	c.mu.Unlock()
	now := c.cfg.Clock.Now()
	rs = c.pruneRevocations(rs, now)
	slices.SortStableFunc(rs, func(a, b Revocation) int { return a.RevokedAt.Compare(b.RevokedAt) })
	out := make([]RevocationStatus, 0, len(rs))
	for _, r := range rs {
		out = append(out, RevocationStatus{Revocation: r, Blocking: r.Blocking(now), PruneAfter: r.PruneAfter(c.maxSVIDLife())})
	}
	return out
}

// LiveJoinTokens returns the join tokens that may still be used, by expiry.
func (c *CA) LiveJoinTokens() []JoinToken {
	c.mu.Lock()
	ts := slices.Clone(c.state.JoinTokens)
	c.mu.Unlock()
	ts = pruneTokens(ts, c.cfg.Clock.Now())
	slices.SortStableFunc(ts, func(a, b JoinToken) int {
		return cmp.Or(a.ExpiresAt.Compare(b.ExpiresAt), strings.Compare(a.Hash, b.Hash))
	})
	return ts
}

// tickRevocations prunes the entries that can no longer match anything, so
// that the list does not grow without bound.
func (c *CA) tickRevocations(ctx context.Context) error {
	c.mu.Lock()
	n := len(c.state.Revocations)
	stale := n != len(c.pruneRevocations(slices.Clone(c.state.Revocations), c.cfg.Clock.Now()))
	c.mu.Unlock()
	if !stale {
		return nil
	}
	return c.mutate(ctx, func(st *State, now time.Time) (bool, error) {
		before := len(st.Revocations)
		st.Revocations = c.pruneRevocations(st.Revocations, now)
		return len(st.Revocations) != before, nil
	})
}

// CheckRenewal refuses to renew (or issue a JWT-SVID for) leaf, an SVID of
// id the caller presented, when its serial or its ID is revoked. It is the
// renewal path's revocation check.
func (c *CA) CheckRenewal(id spiffeid.ID, leaf *x509.Certificate) error {
	serial, ids := leaf.SerialNumber.Text(16), id.String()
	issued := leaf.NotBefore.Add(c.cfg.Backdate)
	now := c.cfg.Clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.state.Revocations {
		switch {
		case r.Kind == RevokedSerial && r.Value == serial:
			return fmt.Errorf("%w: the SVID %s with serial %s was revoked at %s; get a new one with a fresh credential",
				ErrRevoked, id, serial, r.RevokedAt.UTC().Format(time.RFC3339))
		case r.Kind == RevokedID && r.Value == ids && r.Blocking(now):
			return fmt.Errorf("%w: %s was revoked at %s and may not be renewed or attested until an operator runs `tether ca unrevoke`",
				ErrRevoked, id, r.RevokedAt.UTC().Format(time.RFC3339))
		case r.Kind == RevokedID && r.Value == ids && issued.Before(r.Until):
			return fmt.Errorf("%w: the SVIDs of %s issued before %s were revoked; this one was issued at %s: attest again with a fresh credential",
				ErrRevoked, id, r.Until.UTC().Format(time.RFC3339), issued.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// CheckAttestation refuses a new SVID for id, which a credential has just
// proved, while a revocation of id blocks.
func (c *CA) CheckAttestation(id spiffeid.ID) error {
	ids, now := id.String(), c.cfg.Clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.state.Revocations {
		if r.Kind == RevokedID && r.Value == ids && r.Blocking(now) {
			until := "until an operator runs `tether ca unrevoke`"
			if !r.Until.IsZero() {
				until = "until " + r.Until.UTC().Format(time.RFC3339)
			}
			return fmt.Errorf("%w: %s was revoked at %s and may not be attested %s", ErrRevoked, id, r.RevokedAt.UTC().Format(time.RFC3339), until)
		}
	}
	return nil
}

// checkTokenFor refuses a join token for id while a revocation blocks the
// ID until `tether ca unrevoke`: no such token could ever be used. (A
// token for an ID blocked for a while, or only for the replicas to catch
// up, may be used once the block ends.)
func (c *CA) checkTokenFor(id spiffeid.ID) error {
	ids := id.String()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.state.Revocations {
		if r.Kind == RevokedID && r.Value == ids && r.Until.IsZero() {
			return fmt.Errorf("%w: %s was revoked at %s and may not be attested until an operator runs `tether ca unrevoke`; no join token is made for it",
				ErrRevoked, id, r.RevokedAt.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// refuseRevokedPeer checks the SVID the caller presented, if any.
func (s *Server) refuseRevokedPeer(ctx context.Context, id spiffeid.ID) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	return s.ca.CheckRenewal(id, info.State.PeerCertificates[0])
}
