package caserver

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestRenewalConfig: the short-lifetime rules and the max renewal age
// reach the CA; bad ones are refused at start, naming the flag.
func TestRenewalConfig(t *testing.T) {
	c := validConfig(t)
	c.SVIDTTLFor = []identity.PrefixTTL{{Prefix: "/ns/payments/", TTL: 5 * time.Minute}}
	c.MaxRenewalAge = 48 * time.Hour
	svc, err := New(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if got := svc.CA().MaxRenewalAge(); got != 48*time.Hour {
		t.Fatalf("CA max renewal age %s, want 48h", got)
	}
	for path, want := range map[string]time.Duration{"/ns/payments/sa/api": 5 * time.Minute, "/ns/shop/sa/web": time.Hour} {
		csr, _ := testutil.NewCSR(t, nil, nil)
		before := time.Now()
		iss, err := svc.CA().Sign(testutil.ID(path), csr)
		if err != nil {
			t.Fatal(err)
		}
		if got := iss.NotAfter.Sub(before); got < want-time.Second || got > want+time.Second {
			t.Errorf("%s: SVID lives %s, want %s", path, got, want)
		}
	}

	for _, tt := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"max renewal age too short", func(c *Config) { c.MaxRenewalAge = time.Second }, "--max-renewal-age"},
		{"negative max renewal age", func(c *Config) { c.MaxRenewalAge = -time.Hour }, "--max-renewal-age"},
		{"ttl rule longer than --svid-ttl", func(c *Config) {
			c.SVIDTTLFor = []identity.PrefixTTL{{Prefix: "/ns/payments", TTL: 2 * time.Hour}}
		}, "--svid-ttl-for"},
		{"ttl rule not a path", func(c *Config) {
			c.SVIDTTLFor = []identity.PrefixTTL{{Prefix: "payments", TTL: time.Minute}}
		}, "must start with /"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig(t)
			tt.mod(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}
