package main

import (
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/caserver"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestRenewalFlags: --max-renewal-age and --svid-ttl-for reach the config,
// and bad values stop tether-ca at start with a message naming the flag.
func TestRenewalFlags(t *testing.T) {
	dir := t.TempDir()
	c, err := parseFlags([]string{"--store-dir", dir})
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxRenewalAge != 7*24*time.Hour || len(c.SVIDTTLFor) != 0 {
		t.Fatalf("defaults: max renewal age %s, ttl rules %v", c.MaxRenewalAge, c.SVIDTTLFor)
	}
	c, err = parseFlags([]string{"--store-dir", dir, "--max-renewal-age", "72h",
		"--svid-ttl-for", "/ns/payments=10m", "--svid-ttl-for", "/ns/payments/sa/ledger/=2m"})
	if err != nil {
		t.Fatal(err)
	}
	want := []identity.PrefixTTL{{Prefix: "/ns/payments/sa/ledger", TTL: 2 * time.Minute}, {Prefix: "/ns/payments", TTL: 10 * time.Minute}}
	if c.MaxRenewalAge != 72*time.Hour || len(c.SVIDTTLFor) != 2 || c.SVIDTTLFor[0] != want[0] || c.SVIDTTLFor[1] != want[1] {
		t.Fatalf("parsed max renewal age %s, ttl rules %v; want 72h, %v", c.MaxRenewalAge, c.SVIDTTLFor, want)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-renewal-age", "30s"}, "--max-renewal-age 30s must be at least a minute"},
		{[]string{"--max-renewal-age", "-1h"}, "--max-renewal-age"},
		{[]string{"--svid-ttl-for", "/ns/payments"}, "want PATH-PREFIX=TTL"},
		{[]string{"--svid-ttl-for", "/ns/payments=soon"}, "invalid duration"},
		{[]string{"--svid-ttl-for", "ns/payments=10m"}, "must start with /"},
		{[]string{"--svid-ttl-for", "/ns/payments=2h"}, "not shorter than the SVID lifetime"},
		{[]string{"--svid-ttl-for", "/ns/payments=10s"}, "shorter than a minute"},
	} {
		_, err := parseFlags(append([]string{"--store-dir", dir}, tt.args...))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: err %v, want %q", tt.args, err, tt.want)
		}
	}
}

// TestOIDCFlags: the --oidc-* flags reach the config (off by default), and
// bad values stop tether-ca at start with a message naming the flag.
func TestOIDCFlags(t *testing.T) {
	dir := t.TempDir()
	c, err := parseFlags([]string{"--store-dir", dir})
	if err != nil {
		t.Fatal(err)
	}
	if c.OIDC != (caserver.OIDCConfig{}) {
		t.Fatalf("OIDC defaults %+v, want off", c.OIDC)
	}
	c, err = parseFlags([]string{"--store-dir", dir, "--oidc-listen", "127.0.0.1:8081", "--oidc-issuer", "https://oidc.example.com/a",
		"--oidc-jwks-uri", "https://keys.example.com/a.json", "--oidc-plain-http"})
	if err != nil {
		t.Fatal(err)
	}
	want := caserver.OIDCConfig{Listen: "127.0.0.1:8081", Issuer: "https://oidc.example.com/a", JWKSURI: "https://keys.example.com/a.json", PlainHTTP: true}
	if c.OIDC != want {
		t.Fatalf("parsed %+v, want %+v", c.OIDC, want)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--oidc-listen", ":8081", "--oidc-plain-http"}, "--oidc-listen needs --oidc-issuer"},
		{[]string{"--oidc-listen", ":8081", "--oidc-plain-http", "--oidc-issuer", "http://oidc.example.com"}, "--oidc-issuer"},
		{[]string{"--oidc-listen", ":8081", "--oidc-plain-http", "--oidc-issuer", "%zz"}, "is not a URL"},
		{[]string{"--oidc-listen", ":8081", "--oidc-issuer", "https://oidc.example.com"}, "needs --oidc-tls-cert and --oidc-tls-key"},
		{[]string{"--oidc-tls-key", "k.pem"}, "--oidc-tls-key configures the OIDC discovery listener, which is off"},
	} {
		_, err := parseFlags(append([]string{"--store-dir", dir}, tt.args...))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: err %v, want %q", tt.args, err, tt.want)
		}
	}
}
