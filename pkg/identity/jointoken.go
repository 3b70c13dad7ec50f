package identity

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Join tokens are "tjt_" followed by 32 random bytes in unpadded base64url.
const (
	joinTokenPrefix = "tjt_"
	joinTokenLen    = len(joinTokenPrefix) + 43
	// MaxJoinTokenTTL bounds how long a join token may live.
	MaxJoinTokenTTL = 30 * 24 * time.Hour
)

// CreateJoinToken makes a join token bound to id, valid for ttl. Only its
// hash is stored; the token itself is returned once. It refuses the trust
// domain's bare ID and the mesh's reserved identities (IsReserved): see
// CreateReservedJoinToken.
func (c *CA) CreateJoinToken(ctx context.Context, id spiffeid.ID, ttl time.Duration, reusable bool) (string, time.Time, error) {
	return c.createJoinToken(ctx, id, ttl, reusable, false)
}

// CreateReservedJoinToken is CreateJoinToken for one of the mesh's own
// components (an ID under /ns/tether-system/, such as tether-discovery run
// outside Kubernetes). The CA's own ID is refused even so.
func (c *CA) CreateReservedJoinToken(ctx context.Context, id spiffeid.ID, ttl time.Duration, reusable bool) (string, time.Time, error) {
	return c.createJoinToken(ctx, id, ttl, reusable, true)
}

func (c *CA) createJoinToken(ctx context.Context, id spiffeid.ID, ttl time.Duration, reusable, allowReserved bool) (string, time.Time, error) {
	if err := c.checkIssuable(id); err != nil {
		return "", time.Time{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if IsReserved(id) && !allowReserved {
		return "", time.Time{}, fmt.Errorf("%w: %s is reserved for the mesh's own components (everything under %s); "+
			"create a token for it only to run that component outside Kubernetes, with --allow-reserved", ErrConfig, id, reservedPrefix(c.cfg.TrustDomain))
	}
	if ttl <= 0 || ttl > MaxJoinTokenTTL {
		return "", time.Time{}, fmt.Errorf("%w: join token lifetime %s must be between 1s and %s", ErrConfig, ttl, MaxJoinTokenTTL)
	}
	if err := c.checkTokenFor(id); err != nil {
		return "", time.Time{}, err
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", time.Time{}, err
	}
	token := joinTokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	var exp time.Time
	err := c.mutate(ctx, func(st *State, now time.Time) (bool, error) {
		exp = now.Add(ttl)
		st.JoinTokens = append(pruneTokens(st.JoinTokens, now), JoinToken{
			Hash: hashToken(token), SPIFFEID: id.String(), ExpiresAt: exp, Reusable: reusable,
		})
		return true, nil
	})
	if err != nil {
		return "", time.Time{}, err
	}
	return token, exp, nil
}

func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// ParseJoinToken checks a join token's form without looking it up.
func ParseJoinToken(token string) error {
	if len(token) != joinTokenLen || token[:len(joinTokenPrefix)] != joinTokenPrefix {
		return fmt.Errorf("%w: not a join token (want %s followed by 43 characters)", ErrUnauthenticated, joinTokenPrefix)
	}
	if _, err := base64.RawURLEncoding.DecodeString(token[len(joinTokenPrefix):]); err != nil {
		return fmt.Errorf("%w: not a join token: %v", ErrUnauthenticated, err)
	}
	return nil
}

func pruneTokens(ts []JoinToken, now time.Time) []JoinToken {
	out := ts[:0:0]
	for _, t := range ts {
		if now.Before(t.ExpiresAt) {
			out = append(out, t)
		}
	}
	return out
}

// JoinTokens returns the attestor for join tokens. A single-use token is
// removed from the store before its identity is returned, so it cannot be
// replayed, even against another replica.
func (c *CA) JoinTokens() Attestor {
	return AttestorFunc(c.attestJoinToken)
}

func (c *CA) attestJoinToken(ctx context.Context, token string) (spiffeid.ID, error) {
	if err := ParseJoinToken(token); err != nil {
		return spiffeid.ID{}, err
	}
	h := hashToken(token)
	var found *JoinToken
	lookup := func(st *State, now time.Time) error {
		found = nil
		for i := range st.JoinTokens {
			if subtle.ConstantTimeCompare([]byte(st.JoinTokens[i].Hash), []byte(h)) == 1 {
				t := st.JoinTokens[i]
				if !now.Before(t.ExpiresAt) {
					return fmt.Errorf("%w: join token expired at %s", ErrUnauthenticated, t.ExpiresAt.UTC().Format(time.RFC3339))
				}
				found = &t
				return nil
			}
		}
		return fmt.Errorf("%w: unknown or already used join token", ErrUnauthenticated)
	}
	// Reusable tokens are read without a write.
	c.mu.Lock()
	err := lookup(c.state, c.cfg.Clock.Now())
	c.mu.Unlock()
	if err != nil {
		return spiffeid.ID{}, err
	}
	// Everything that can refuse the request is checked before a
	// single-use token is spent.
	id, err := spiffeid.FromString(found.SPIFFEID)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: stored join token names a bad SPIFFE ID: %v", ErrCorruptState, err)
	}
	if err := c.checkIssuable(id); err != nil {
		return spiffeid.ID{}, fmt.Errorf("join token: %w", err)
	}
	if peer, ok := presentedSVID(ctx); ok && peer != id {
		return spiffeid.ID{}, fmt.Errorf("%w: the presented SVID %s may only renew itself, not %s", ErrPermissionDenied, peer, id)
	}
	if !found.Reusable {
		err = c.mutate(ctx, func(st *State, now time.Time) (bool, error) {
			if err := lookup(st, now); err != nil {
				return false, err
			}
			st.JoinTokens = pruneTokens(st.JoinTokens, now)
			for i := range st.JoinTokens {
				if st.JoinTokens[i].Hash == h {
					st.JoinTokens = append(st.JoinTokens[:i:i], st.JoinTokens[i+1:]...)
					break
				}
			}
			return true, nil
		})
		if err != nil {
			return spiffeid.ID{}, err
		}
	}
	return id, nil
}
