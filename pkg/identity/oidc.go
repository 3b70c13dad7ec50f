package identity

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// OIDC discovery for JWT-SVIDs: a cloud's workload identity federation (or
// any OIDC relying party) finds the trust domain's JWT keys from the issuer
// URL, the way SPIRE's oidc-discovery-provider publishes them.

// Paths of the OIDC discovery document and of the JWKS, below the issuer's
// path.
const (
	OIDCDiscoveryPath = "/.well-known/openid-configuration"
	OIDCKeysPath      = "/keys"
)

// ValidateOIDCIssuer checks an issuer URL for the JWT-SVIDs' iss claim and
// the discovery document: an absolute https URL with a host and nothing
// an OIDC issuer may not carry (query, fragment, user info). A trailing
// slash is refused: relying parties compare iss byte for byte with the
// issuer they were configured with.
func ValidateOIDCIssuer(s string) (*url.URL, error) {
	u, err := checkHTTPSURL(s)
	if err != nil {
		return nil, err
	}
	if strings.HasSuffix(u.Path, "/") {
		return nil, fmt.Errorf("%w: OIDC issuer %q ends with a slash; give it without (%q): relying parties compare the iss claim with the issuer exactly",
			ErrConfig, s, strings.TrimRight(s, "/"))
	}
	if u.Path != "" {
		for _, seg := range strings.Split(u.Path[1:], "/") {
			if seg == "" || seg == "." || seg == ".." || strings.IndexFunc(seg, notUnreserved) >= 0 {
				return nil, fmt.Errorf("%w: OIDC issuer %q: path segment %q; use segments of letters, digits, '-', '.', '_' and '~' (not . or ..)", ErrConfig, s, seg)
			}
		}
	}
	return u, nil
}

// notUnreserved reports whether r is outside RFC 3986's unreserved
// characters.
func notUnreserved(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._~", r))
}

// checkHTTPSURL parses s as an absolute https URL without query, fragment
// or user info.
func checkHTTPSURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	switch {
	case s == "":
		return nil, fmt.Errorf("%w: empty URL; give an absolute https:// URL", ErrConfig)
	case err != nil:
		return nil, fmt.Errorf("%w: %q is not a URL: %v", ErrConfig, s, err)
	case u.Scheme != "https":
		return nil, fmt.Errorf("%w: %q must be an https:// URL (OIDC relying parties fetch it over TLS), not scheme %q", ErrConfig, s, u.Scheme)
	case u.Host == "" || u.Hostname() == "":
		return nil, fmt.Errorf("%w: %q has no host", ErrConfig, s)
	case u.Port() != "" && !validPort(u.Port()):
		return nil, fmt.Errorf("%w: %q: port %q is not 1 to 65535", ErrConfig, s, u.Port())
	case u.User != nil:
		return nil, fmt.Errorf("%w: %q must not carry user info", ErrConfig, s)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(s, "#"):
		return nil, fmt.Errorf("%w: %q must not have a query or a fragment", ErrConfig, s)
	}
	return u, nil
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535
}

// OIDCConfig configures the OIDC discovery handler.
type OIDCConfig struct {
	// Issuer is the public URL relying parties know the trust domain by
	// (ValidateOIDCIssuer); it must equal the CA's Config.JWTIssuer.
	Issuer string
	// JWKSURI is where the discovery document says the keys are; empty
	// means Issuer + OIDCKeysPath (this handler serves them there).
	JWKSURI string
}

// oidcDocument is the OIDC discovery document: the fields an OIDC relying
// party needs to verify ID tokens, as SPIRE's oidc-discovery-provider
// serves them.
type oidcDocument struct {
	Issuer                           string   `json:"issuer"`
	JWKSURI                          string   `json:"jwks_uri"`
	AuthorizationEndpoint            string   `json:"authorization_endpoint"`
	ResponseTypesSupported           []string `json:"response_types_supported"`
	SubjectTypesSupported            []string `json:"subject_types_supported"`
	IDTokenSigningAlgValuesSupported []string `json:"id_token_signing_alg_values_supported"`
}

// NewOIDCHandler serves the OIDC discovery document and the JWKS of the
// trust domain's JWT keys (OIDCKeySet) at OIDCDiscoveryPath and
// OIDCKeysPath below the issuer's path, and also at the root (for a proxy
// that strips the issuer's path). Only GET and HEAD are answered.
func NewOIDCHandler(ca *CA, cfg OIDCConfig) (http.Handler, error) {
	iss, err := ValidateOIDCIssuer(cfg.Issuer)
	if err != nil {
		return nil, err
	}
	if ca.cfg.JWTIssuer != cfg.Issuer {
		return nil, fmt.Errorf("%w: the discovery document's issuer %q differs from the CA's JWT issuer %q: relying parties would refuse every JWT-SVID",
			ErrConfig, cfg.Issuer, ca.cfg.JWTIssuer)
	}
	jwksURI := cfg.JWKSURI
	if jwksURI == "" {
		jwksURI = cfg.Issuer + OIDCKeysPath
	} else if _, err := checkHTTPSURL(jwksURI); err != nil {
		return nil, fmt.Errorf("JWKS URI: %w", err)
	}
	doc, err := json.MarshalIndent(oidcDocument{
		Issuer: cfg.Issuer, JWKSURI: jwksURI,
		ResponseTypesSupported:           []string{"id_token"},
		SubjectTypesSupported:            []string{"public"},
		IDTokenSigningAlgValuesSupported: []string{string(jose.ES256), string(jose.ES384)},
	}, "", "  ")
	if err != nil {
		return nil, err
	}
	serveDoc := func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, doc) }
	serveKeys := func(w http.ResponseWriter, _ *http.Request) {
		body, err := json.MarshalIndent(ca.OIDCKeySet(), "", "  ")
		if err != nil {
			http.Error(w, "cannot encode the key set", http.StatusInternalServerError)
			return
		}
		// A cached key set would lack a key activated since: no caching.
		w.Header().Set("Cache-Control", "no-cache, no-store, must-revalidate")
		writeJSON(w, body)
	}
	mux := http.NewServeMux()
	for _, prefix := range slices.Compact([]string{strings.TrimSuffix(iss.EscapedPath(), "/"), ""}) {
		mux.HandleFunc("GET "+prefix+OIDCDiscoveryPath, serveDoc)
		mux.HandleFunc("GET "+prefix+OIDCKeysPath, serveKeys)
	}
	return mux, nil
}

func writeJSON(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(body)
}

// publishedJWTKey is a JWT public key and until when it is published.
type publishedJWTKey struct {
	kid string
	pub crypto.PublicKey
	// until is when the last token its generation signed expires (the
	// generation's RetireAfter); zero while the generation signs or is
	// prepared to.
	until time.Time
}

// publishedJWTKeysOf returns the JWT keys of st's prepared, active and
// superseded generations, oldest generation first.
func publishedJWTKeysOf(st *State) []publishedJWTKey {
	var keys []publishedJWTKey
	for _, g := range st.Generations {
		if g.State == Retired || len(g.JWTKey) == 0 {
			continue
		}
		k, err := x509.ParsePKCS8PrivateKey(g.JWTKey)
		if err != nil {
			continue // validate refused such a state; never publish a guess
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			continue
		}
		p := publishedJWTKey{kid: g.JWTKeyID, pub: s.Public()}
		if g.State == Superseded {
			p.until = g.RetireAfter
		}
		keys = append(keys, p)
	}
	return keys
}

// OIDCKeySet is the JWKS relying parties verify JWT-SVIDs with: the keys
// of the prepared generation (published before it signs), the active one,
// and each superseded one until every token it signed has expired (its
// RetireAfter, which no JWT-SVID outlives: they live at most the SVID
// lifetime), whether or not the generation has been retired yet. Each key
// carries "use": "sig" and its "alg", which clouds' OIDC clients expect.
func (c *CA) OIDCKeySet() jose.JSONWebKeySet {
	now := c.cfg.Clock.Now()
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	keys := c.jwtKeys.Load()
	if keys == nil {
		return set
	}
	for _, k := range *keys {
		if !k.until.IsZero() && !now.Before(k.until) {
			continue
		}
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.pub, KeyID: k.kid, Use: "sig", Algorithm: string(jwtAlgorithmOf(k.pub))})
	}
	return set
}
