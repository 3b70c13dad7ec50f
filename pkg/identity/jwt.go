package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultJWTTTL is the lifetime of a JWT-SVID when the caller asks for none.
const DefaultJWTTTL = 5 * time.Minute

// newKeyID makes a random JWT key ID.
func newKeyID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// JWTSVID is a signed JWT-SVID.
type JWTSVID struct {
	Token     string
	ID        spiffeid.ID
	ExpiresAt time.Time
}

// SignJWT issues a JWT-SVID for id (which the caller has authenticated) with
// the given audiences, signed by the active generation's JWT key, with the
// iss claim Config.JWTIssuer when it is set. ttl is
// clamped to the SVID lifetime; 0 means DefaultJWTTTL.
func (c *CA) SignJWT(id spiffeid.ID, audience []string, ttl time.Duration) (*JWTSVID, error) {
	if id.TrustDomain() != c.cfg.TrustDomain {
		return nil, fmt.Errorf("%w: %s is not in trust domain %s", ErrPermissionDenied, id, c.cfg.TrustDomain)
	}
	if len(audience) == 0 {
		return nil, fmt.Errorf("%w: a JWT-SVID needs at least one audience", ErrConfig)
	}
	for _, a := range audience {
		if a == "" || len(a) > 512 {
			return nil, fmt.Errorf("%w: audience %q must be 1 to 512 characters", ErrConfig, a)
		}
	}
	if ttl <= 0 {
		ttl = DefaultJWTTTL
	}
	ttl = min(ttl, c.cfg.SVIDTTL)
	a := c.auth.Load()
	if a.jwtKey == nil {
		return nil, fmt.Errorf("%w: the active generation has no JWT key", ErrNotReady)
	}
	now := c.cfg.Clock.Now()
	exp := now.Add(ttl)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jwtAlgorithmOf(a.jwtKey.Public()), Key: jose.JSONWebKey{Key: a.jwtKey, KeyID: a.jwtKID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("JWT signer: %w", err)
	}
	var aud any = audience
	if len(audience) == 1 {
		aud = audience[0]
	}
	claims := map[string]any{"sub": id.String(), "aud": aud, "iat": now.Unix(), "exp": exp.Unix()}
	if c.cfg.JWTIssuer != "" {
		claims["iss"] = c.cfg.JWTIssuer // what OIDC relying parties match (oidc.go)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return nil, err
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return nil, fmt.Errorf("sign JWT: %w", err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		return nil, err
	}
	return &JWTSVID{Token: tok, ID: id, ExpiresAt: time.Unix(exp.Unix(), 0)}, nil
}

// jwtAlgorithmOf is the JWS algorithm a JWT key of public key pub signs with.
func jwtAlgorithmOf(pub crypto.PublicKey) jose.SignatureAlgorithm {
	if ec, ok := pub.(*ecdsa.PublicKey); ok && ec.Curve.Params().BitSize == 384 {
		return jose.ES384
	}
	return jose.ES256
}
