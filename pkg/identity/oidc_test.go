package identity_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// oidcServer is a TLS test server whose handler is set once the CA it
// serves exists (the CA needs the server's URL as its issuer).
type oidcServer struct {
	*httptest.Server
	h atomic.Pointer[http.Handler]
}

func newOIDCServer(t *testing.T) *oidcServer {
	t.Helper()
	s := &oidcServer{}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h := s.h.Load(); h != nil {
			(*h).ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

// serveCA makes the server publish ca's discovery document for issuer.
func (s *oidcServer) serveCA(t *testing.T, ca *identity.CA, issuer string) {
	t.Helper()
	h, err := identity.NewOIDCHandler(ca, identity.OIDCConfig{Issuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	s.h.Store(&h)
}

// oidcCA is a CA on a fake clock whose JWT-SVIDs name issuer.
func oidcCA(t *testing.T, clock *testutil.FakeClock, issuer string) *identity.CA {
	return testutil.NewCA(t, clock, func(c *identity.Config) { c.JWTIssuer = issuer })
}

// oidcCAOn is oidcCA on a given store directory: two of them on the same
// directory share their keys.
func oidcCAOn(t *testing.T, dir string, clock *testutil.FakeClock, issuer string) *identity.CA {
	t.Helper()
	store, err := identity.NewDiskStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store, Clock: clock, JWTIssuer: issuer})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// verifier is a stock OIDC client (go-oidc) that found the keys through
// the discovery document at issuer, for audience aud, on clock.
func verifier(t *testing.T, s *oidcServer, issuer, aud string, clock *testutil.FakeClock) *oidc.IDTokenVerifier {
	t.Helper()
	ctx := oidc.ClientContext(context.Background(), s.Client())
	p, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		t.Fatalf("go-oidc cannot read the discovery document: %v", err)
	}
	return p.VerifierContext(ctx, &oidc.Config{ClientID: aud, Now: clock.Now})
}

func TestOIDCClientVerifiesJWTSVID(t *testing.T) {
	ctx := context.Background()
	srv := newOIDCServer(t)
	clock := testutil.NewFakeClock()
	dir := t.TempDir()
	ca := oidcCAOn(t, dir, clock, srv.URL)
	srv.serveCA(t, ca, srv.URL)
	v := verifier(t, srv, srv.URL, "sts.amazonaws.com", clock)
	id := testutil.ID("/ns/default/sa/web")

	j, err := ca.SignJWT(id, []string{"sts.amazonaws.com"}, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := v.Verify(ctx, j.Token)
	if err != nil {
		t.Fatalf("go-oidc refuses a Tether JWT-SVID: %v", err)
	}
	if tok.Subject != id.String() || tok.Issuer != srv.URL {
		t.Fatalf("verified token: sub %q iss %q, want %q %q", tok.Subject, tok.Issuer, id, srv.URL)
	}

	t.Run("wrong audience", func(t *testing.T) {
		other, err := ca.SignJWT(id, []string{"storage.googleapis.com"}, 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(ctx, other.Token); err == nil || !strings.Contains(err.Error(), "audience") {
			t.Fatalf("token for another audience: err = %v", err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		short, err := ca.SignJWT(id, []string{"sts.amazonaws.com"}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		later := testutil.NewFakeClock()
		later.Set(short.ExpiresAt.Add(time.Second))
		lv := verifier(t, srv, srv.URL, "sts.amazonaws.com", later)
		var expired *oidc.TokenExpiredError
		if _, err := lv.Verify(ctx, short.Token); !errors.As(err, &expired) {
			t.Fatalf("expired token: err = %v", err)
		}
	})
	t.Run("key not in the JWKS", func(t *testing.T) {
		// Another CA with the same issuer: its key is not published here.
		rogue := oidcCA(t, clock, srv.URL)
		forged, err := rogue.SignJWT(id, []string{"sts.amazonaws.com"}, 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(ctx, forged.Token); err == nil || !strings.Contains(err.Error(), "failed to verify signature") {
			t.Fatalf("a token signed by a key not in the JWKS: err = %v, want a signature failure", err)
		}
		// The same forgery, claiming the published key's ID.
		kid := ca.OIDCKeySet().Keys[0].KeyID
		claims := map[string]any{"iss": srv.URL, "sub": id.String(), "aud": "sts.amazonaws.com", "iat": clock.Now().Unix(), "exp": clock.Now().Add(time.Minute).Unix()}
		if _, err := v.Verify(ctx, forge(t, kid, claims)); err == nil || !strings.Contains(err.Error(), "failed to verify signature") {
			t.Fatalf("a token signed by a foreign key under a published key ID: err = %v, want a signature failure", err)
		}
	})
	t.Run("issuer mismatch", func(t *testing.T) {
		// The same CA state (same keys) behind another issuer, or none:
		// the signature verifies, the issuer does not.
		for name, iss := range map[string]string{"other issuer": "https://oidc.other.example", "no issuer": ""} {
			twin := oidcCAOn(t, dir, clock, iss)
			j, err := twin.SignJWT(id, []string{"sts.amazonaws.com"}, 10*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.Verify(ctx, j.Token); err == nil || !strings.Contains(err.Error(), "issued by a different provider") {
				t.Fatalf("%s: err = %v", name, err)
			}
		}
	})
}

// forge signs claims with a new key under key ID kid: an attacker's token.
func forge(t *testing.T, kid string, claims map[string]any) string {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestOIDCKeysFollowTheJournal: a key is published from prepare on, and
// after its generation stops signing only until the last token it signed
// has expired; go-oidc keeps verifying that token until then.
func TestOIDCKeysFollowTheJournal(t *testing.T) {
	ctx := context.Background()
	srv := newOIDCServer(t)
	clock := testutil.NewFakeClock()
	ca := oidcCA(t, clock, srv.URL)
	srv.serveCA(t, ca, srv.URL)
	v := verifier(t, srv, srv.URL, "aud", clock)
	id := testutil.ID("/ns/default/sa/web")

	oldKID := ca.OIDCKeySet().Keys[0].KeyID
	if got := publishedKIDs(t, srv); len(got) != 1 || got[0] != oldKID {
		t.Fatalf("JWKS before rotation: %v, want [%s]", got, oldKID)
	}
	if err := ca.Rotate(ctx, identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	if got := publishedKIDs(t, srv); len(got) != 2 || got[0] != oldKID {
		t.Fatalf("JWKS after prepare: %v, want the old key and the prepared one", got)
	}
	clock.Add(identity.DefaultPropagationDelay)
	// The last token the old key signs, with the longest lifetime (the SVID TTL).
	old, err := ca.SignJWT(id, []string{"aud"}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := old.ExpiresAt.Sub(clock.Now()); got != identity.DefaultSVIDTTL {
		t.Fatalf("old token lives %s, want the longest JWT-SVID lifetime %s", got, identity.DefaultSVIDTTL)
	}
	if jwsKID(t, old.Token) != oldKID {
		t.Fatal("the prepared generation signs before it is activated")
	}
	if err := ca.Rotate(ctx, identity.StepActivate, false); err != nil {
		t.Fatal(err)
	}
	fresh, err := ca.SignJWT(id, []string{"aud"}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	newKID := jwsKID(t, fresh.Token)
	if newKID == oldKID {
		t.Fatal("the new generation signs with the old key")
	}

	// Until the old token expires, its key stays published and it verifies.
	clock.Set(old.ExpiresAt.Add(-time.Second))
	if got := publishedKIDs(t, srv); len(got) != 2 {
		t.Fatalf("JWKS before the old token expires: %v, want both keys", got)
	}
	if _, err := v.Verify(ctx, old.Token); err != nil {
		t.Fatalf("token of the superseded generation, before it expires: %v", err)
	}
	// The journal refuses to retire before then.
	if err := ca.Rotate(ctx, identity.StepRetire, false); !errors.Is(err, identity.ErrRotation) {
		t.Fatalf("retire while tokens of the superseded generation are valid: err = %v", err)
	}

	// Once nothing the old key signed is valid, the key is gone, even
	// before the generation is retired (retiring may wait for sidecars).
	clock.Add(identity.DefaultBackdate + time.Second)
	if got := publishedKIDs(t, srv); len(got) != 1 || got[0] != newKID {
		t.Fatalf("JWKS after the old tokens expired: %v, want [%s]", got, newKID)
	}
	if err := ca.Rotate(ctx, identity.StepRetire, false); err != nil {
		t.Fatal(err)
	}
	if got := publishedKIDs(t, srv); len(got) != 1 || got[0] != newKID {
		t.Fatalf("JWKS after retire: %v, want [%s]", got, newKID)
	}
	fresh, err = ca.SignJWT(id, []string{"aud"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, fresh.Token); err != nil {
		t.Fatalf("token of the active generation: %v", err)
	}
}

// jwsKID returns the key ID in a compact JWS's header.
func jwsKID(t *testing.T, token string) string {
	t.Helper()
	jws, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256, jose.ES384})
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Header.KeyID
}

// publishedKIDs fetches the JWKS the discovery document names and returns
// its key IDs, checking each key is a signing key with its algorithm.
func publishedKIDs(t *testing.T, s *oidcServer) []string {
	t.Helper()
	var doc struct {
		JWKSURI string `json:"jwks_uri"`
	}
	getJSON(t, s, s.URL+identity.OIDCDiscoveryPath, &doc)
	var set jose.JSONWebKeySet
	getJSON(t, s, doc.JWKSURI, &set)
	var kids []string
	for _, k := range set.Keys {
		if k.Use != "sig" || k.Algorithm != string(jose.ES256) || !k.IsPublic() || !k.Valid() {
			t.Fatalf("published key %s: use %q alg %q public %v", k.KeyID, k.Use, k.Algorithm, k.IsPublic())
		}
		kids = append(kids, k.KeyID)
	}
	return kids
}

func getJSON(t *testing.T, s *oidcServer, url string, v any) *http.Response {
	t.Helper()
	resp, err := s.Client().Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s: %s, Content-Type %q", url, resp.Status, resp.Header.Get("Content-Type"))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp
}

func TestOIDCDiscoveryDocument(t *testing.T) {
	srv := newOIDCServer(t)
	issuer := srv.URL + "/tether"
	ca := oidcCA(t, testutil.NewFakeClock(), issuer)
	srv.serveCA(t, ca, issuer)
	for _, path := range []string{"/tether" + identity.OIDCDiscoveryPath, identity.OIDCDiscoveryPath} {
		var doc map[string]any
		getJSON(t, srv, srv.URL+path, &doc)
		want := map[string]any{
			"issuer": issuer, "jwks_uri": issuer + "/keys", "authorization_endpoint": "",
			"response_types_supported": []any{"id_token"}, "subject_types_supported": []any{"public"},
			"id_token_signing_alg_values_supported": []any{"ES256", "ES384"},
		}
		if got, _ := json.Marshal(doc); string(got) != string(must(json.Marshal(want))) {
			t.Fatalf("%s: %s\nwant %s", path, got, must(json.Marshal(want)))
		}
	}
	// The issuer comes from the configuration, never from the request: a
	// forged Host header cannot make the document name another issuer.
	req, _ := http.NewRequest(http.MethodGet, issuer+identity.OIDCDiscoveryPath, nil)
	req.Host = "evil.example"
	req.Header.Set("X-Forwarded-Host", "evil.example")
	hresp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(hresp.Body)
	hresp.Body.Close()
	if strings.Contains(string(body), "evil") || !strings.Contains(string(body), issuer) {
		t.Fatalf("document for a forged Host: %s", body)
	}
	head, err := srv.Client().Head(issuer + "/keys")
	if err != nil {
		t.Fatal(err)
	}
	head.Body.Close()
	if head.StatusCode != http.StatusOK {
		t.Fatalf("HEAD /keys: %s", head.Status)
	}
	resp := getJSON(t, srv, issuer+"/keys", &jose.JSONWebKeySet{})
	if cc := resp.Header.Get("Cache-Control"); !strings.Contains(cc, "no-store") {
		t.Fatalf("JWKS Cache-Control %q: a cached key set would miss a newly activated key", cc)
	}
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		req, _ := http.NewRequest(method, issuer+"/keys", nil)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("%s /keys: %s, want 405", method, resp.Status)
		}
	}
	resp, err = srv.Client().Get(srv.URL + "/other/keys")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /other/keys: %s, want 404", resp.Status)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestOIDCBadIssuerRefused(t *testing.T) {
	for in, want := range map[string]string{
		"":                                "empty URL",
		"http://oidc.example.com":         "must be an https:// URL",
		"oidc.example.com":                "must be an https:// URL",
		"https://":                        "has no host",
		"https://:443/x":                  "has no host",
		"https://u:p@oidc.example.com":    "user info",
		"https://oidc.example.com/?x":     "query or a fragment",
		"https://oidc.example.com?":       "query or a fragment",
		"https://oidc.example.com#f":      "query or a fragment",
		"https://oidc.example.com/":       "ends with a slash",
		"https://oidc.example.com/a/":     "ends with a slash",
		"https://oidc.exa mple.com":       "is not a URL",
		"::not a url":                     "is not a URL",
		"https://oidc.example.com:0":      "is not 1 to 65535",
		"https://oidc.example.com:99999":  "is not 1 to 65535",
		"https://oidc.example.com//a":     `path segment ""`,
		"https://oidc.example.com/a/../b": `path segment ".."`,
		"https://oidc.example.com/{x}":    `path segment "{x}"`,
		"https://oidc.example.com/a%20b":  `path segment "a b"`,
		"https://oidc.example.com/a/./b":  `path segment "."`,
	} {
		_, err := identity.ValidateOIDCIssuer(in)
		if !errors.Is(err, identity.ErrConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("issuer %q: err = %v, want %q", in, err, want)
		}
		// The CA refuses it as its JWT issuer too.
		store, serr := identity.NewDiskStore(t.TempDir())
		if serr != nil {
			t.Fatal(serr)
		}
		if in == "" {
			continue // no issuer: JWT-SVIDs without iss, as before
		}
		if _, err := identity.NewCA(context.Background(), identity.Config{TrustDomain: testutil.TrustDomain, Store: store, JWTIssuer: in}); !errors.Is(err, identity.ErrConfig) {
			t.Errorf("CA with JWT issuer %q: err = %v", in, err)
		}
	}
	for _, ok := range []string{"https://oidc.example.com", "https://oidc.example.com:8443/tether", "https://oidc.example.com/a-b/c_d.e~f", "https://127.0.0.1:9443"} {
		if _, err := identity.ValidateOIDCIssuer(ok); err != nil {
			t.Errorf("issuer %q refused: %v", ok, err)
		}
	}

	ca := oidcCA(t, testutil.NewFakeClock(), "https://oidc.example.com")
	if _, err := identity.NewOIDCHandler(ca, identity.OIDCConfig{Issuer: "https://elsewhere.example.com"}); err == nil || !strings.Contains(err.Error(), "differs from the CA's JWT issuer") {
		t.Errorf("discovery issuer unlike the tokens' iss: err = %v", err)
	}
	if _, err := identity.NewOIDCHandler(ca, identity.OIDCConfig{Issuer: "https://oidc.example.com", JWKSURI: "http://oidc.example.com/keys"}); !errors.Is(err, identity.ErrConfig) {
		t.Errorf("http JWKS URI: err = %v", err)
	}
}
