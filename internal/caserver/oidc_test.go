package caserver

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

func TestOIDCConfigRefused(t *testing.T) {
	certFile, keyFile, _ := webCert(t, "oidc.example.com")
	on := func(c *Config) {
		c.OIDC = OIDCConfig{Listen: "127.0.0.1:0", Issuer: "https://oidc.example.com", TLSCert: certFile, TLSKey: keyFile}
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"listen without issuer", func(c *Config) { on(c); c.OIDC.Issuer = "" }, "--oidc-listen needs --oidc-issuer"},
		{"http issuer", func(c *Config) { on(c); c.OIDC.Issuer = "http://oidc.example.com" }, `--oidc-issuer: invalid CA configuration: "http://oidc.example.com" must be an https:// URL`},
		{"issuer without scheme", func(c *Config) { on(c); c.OIDC.Issuer = "oidc.example.com" }, "must be an https:// URL"},
		{"malformed issuer", func(c *Config) { on(c); c.OIDC.Issuer = "https://oidc.exa mple.com" }, "is not a URL"},
		{"issuer with a trailing slash", func(c *Config) { on(c); c.OIDC.Issuer = "https://oidc.example.com/" }, "ends with a slash"},
		{"issuer with a query", func(c *Config) { on(c); c.OIDC.Issuer = "https://oidc.example.com/?a=b" }, "query or a fragment"},
		{"bad issuer without listener", func(c *Config) { c.OIDC.Issuer = "http://oidc.example.com" }, "--oidc-issuer"},
		{"no TLS and no plain HTTP", func(c *Config) { on(c); c.OIDC.TLSCert, c.OIDC.TLSKey = "", "" }, "needs --oidc-tls-cert and --oidc-tls-key"},
		{"cert without key", func(c *Config) { on(c); c.OIDC.TLSKey = "" }, "go together"},
		{"TLS and plain HTTP", func(c *Config) { on(c); c.OIDC.PlainHTTP = true }, "exclude each other"},
		{"plain HTTP without listener", func(c *Config) { c.OIDC.PlainHTTP = true }, "--oidc-plain-http configures the OIDC discovery listener, which is off"},
		{"cert without listener", func(c *Config) { c.OIDC.TLSCert = certFile }, "--oidc-tls-cert configures"},
		{"http JWKS URI", func(c *Config) { on(c); c.OIDC.JWKSURI = "http://oidc.example.com/keys" }, "--oidc-jwks-uri"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig(t)
			tt.mod(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
	for name, mod := range map[string]func(*Config){
		"issuer alone (iss claim only)": func(c *Config) { c.OIDC.Issuer = "https://oidc.example.com/tether" },
		"TLS":                           on,
		"plain HTTP":                    func(c *Config) { on(c); c.OIDC.TLSCert, c.OIDC.TLSKey, c.OIDC.PlainHTTP = "", "", true },
	} {
		c := validConfig(t)
		mod(&c)
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestOIDCBadCertificateRefusedAtStart(t *testing.T) {
	certFile, keyFile, _ := webCert(t, "oidc.example.com")
	_, otherKey, _ := webCert(t, "oidc.example.com")
	for name, files := range map[string][2]string{
		"missing cert":    {filepath.Join(t.TempDir(), "nope.pem"), keyFile},
		"key of another":  {certFile, otherKey},
		"key is not PEM":  {certFile, writeTempFile(t, "garbage")},
		"cert is the key": {keyFile, keyFile},
	} {
		c := validConfig(t)
		c.OIDC = OIDCConfig{Listen: "127.0.0.1:0", Issuer: "https://oidc.example.com", TLSCert: files[0], TLSKey: files[1]}
		if _, err := New(context.Background(), c); err == nil || !strings.Contains(err.Error(), "--oidc-tls-cert") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

// TestOIDCDiscoveryServed: tether-ca serves the discovery document over
// TLS with the operator's web certificate, for an issuer URL that is not
// its listening address, and go-oidc verifies a JWT-SVID through it.
func TestOIDCDiscoveryServed(t *testing.T) {
	const issuer = "https://oidc.tether.test/cluster-a"
	certFile, keyFile, roots := webCert(t, "oidc.tether.test")
	c := validConfig(t)
	c.OIDC = OIDCConfig{Listen: "127.0.0.1:0", Issuer: issuer, TLSCert: certFile, TLSKey: keyFile}
	svc := runService(t, c)
	testutil.Eventually(t, "OIDC listener", 10*time.Second, func() bool { return svc.Addr("oidc") != nil })
	addr := svc.Addr("oidc").String()
	// The cloud reaches the issuer's host; here it resolves to the listener.
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
	ctx := oidc.ClientContext(context.Background(), client)
	p, err := oidc.NewProvider(ctx, issuer)
	if err != nil {
		t.Fatalf("go-oidc: %v", err)
	}
	id := testutil.ID("/ns/default/sa/web")
	j, err := svc.CA().SignJWT(id, []string{"sts.amazonaws.com"}, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := p.VerifierContext(ctx, &oidc.Config{ClientID: "sts.amazonaws.com"}).Verify(ctx, j.Token)
	if err != nil {
		t.Fatalf("go-oidc refuses the JWT-SVID: %v", err)
	}
	if tok.Issuer != issuer || tok.Subject != id.String() {
		t.Fatalf("iss %q sub %q", tok.Issuer, tok.Subject)
	}
	if _, err := p.VerifierContext(ctx, &oidc.Config{ClientID: "other"}).Verify(ctx, j.Token); err == nil {
		t.Fatal("verified for an audience the token does not name")
	}
	// A client that does not trust the web certificate gets nothing.
	if _, err := http.Get("https://" + addr + "/.well-known/openid-configuration"); err == nil {
		t.Fatal("fetched the discovery document without trusting the web certificate")
	}
}

func TestOIDCPlainHTTP(t *testing.T) {
	const issuer = "https://oidc.tether.test"
	c := validConfig(t)
	c.OIDC = OIDCConfig{Listen: "127.0.0.1:0", Issuer: issuer, PlainHTTP: true}
	svc := runService(t, c)
	testutil.Eventually(t, "OIDC listener", 10*time.Second, func() bool { return svc.Addr("oidc") != nil })
	resp, err := http.Get("http://" + svc.Addr("oidc").String() + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if doc.Issuer != issuer || doc.JWKSURI != issuer+"/keys" {
		t.Fatalf("document %+v", doc)
	}
}

// webCert writes a web certificate for host, signed by a new CA, and
// returns its files and the CA's pool.
func webCert(t *testing.T, host string) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	caKey, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test web CA"}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host}, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = writeTempFile(t, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyFile = writeTempFile(t, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})))
	roots = x509.NewCertPool()
	roots.AddCert(caCert)
	return certFile, keyFile, roots
}

func writeTempFile(t *testing.T, content string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "*.pem")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// TestOIDCWebCertificateReloaded: a renewed certificate is served once
// its files change; a broken pair keeps the last good one.
func TestOIDCWebCertificateReloaded(t *testing.T) {
	certFile, keyFile, _ := webCert(t, "oidc.example.com")
	f, err := loadFileCert(certFile, keyFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	f.every = 0
	first, _ := f.get(nil)
	newCert, newKey, _ := webCert(t, "oidc.example.com")
	replace := func(dst, src string) {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			t.Fatal(err)
		}
		later := time.Now().Add(time.Duration(len(data)) * time.Millisecond)
		if err := os.Chtimes(dst, later, later); err != nil {
			t.Fatal(err)
		}
	}
	// Half written (new certificate, old key): the old pair stays.
	replace(certFile, newCert)
	if c, _ := f.get(nil); c != first {
		t.Fatal("a certificate whose key is not there yet replaced the good pair")
	}
	replace(keyFile, newKey)
	c, _ := f.get(nil)
	if c == first || !c.Leaf.Equal(mustLeaf(t, newCert)) {
		t.Fatal("the renewed certificate is not served")
	}
}

func mustLeaf(t *testing.T, certFile string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}
