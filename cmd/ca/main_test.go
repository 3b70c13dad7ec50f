package main

import (
	"strings"
	"testing"
	"time"

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
