package caserver

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"

	"github.com/tether-mesh/tether/pkg/identity"
)

func validConfig(t *testing.T) Config {
	return Config{
		TrustDomain: "cluster.local", ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		Store: "dir", StoreDir: t.TempDir(), SVIDTTL: time.Hour, IntermediateTTL: 720 * time.Hour, RootTTL: 8760 * time.Hour,
		TickInterval: time.Second,
	}
}

func TestConfigValidation(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"bad trust domain", func(c *Config) { c.TrustDomain = "Not A Domain!" }, "--trust-domain"},
		{"spiffe URL as trust domain", func(c *Config) { c.TrustDomain = "spiffe://x/y" }, "--trust-domain"},
		{"unknown store", func(c *Config) { c.Store = "s3" }, "want dir or kubernetes"},
		{"dir store without dir", func(c *Config) { c.StoreDir = "" }, "--store-dir"},
		{"svid ttl too long", func(c *Config) { c.SVIDTTL = 400 * time.Hour }, "--svid-ttl"},
		{"zero ttl", func(c *Config) { c.RootTTL = 0 }, "must be positive"},
		{"intermediate longer than root", func(c *Config) { c.IntermediateTTL = 9000 * time.Hour }, "longer than --root-ttl"},
		{"bad upstream", func(c *Config) { c.Kube.UpstreamIssuer = "corp-ca" }, "Issuer/NAME"},
		{"upstream intermediate shorter than three propagation delays", func(c *Config) {
			c.Kube.UpstreamIssuer, c.IntermediateTTL, c.PropagationDelay = "ClusterIssuer/corp-ca", 2*time.Hour, time.Hour
		}, "--propagation-delay 1h0m0s must be less than a third of --intermediate-ttl"},
		{"negative connection cap", func(c *Config) { c.ConnLimits.MaxConns = -1 }, "connection caps must not be negative"},
		{"negative idle timeout", func(c *Config) { c.ConnLimits.IdleTimeout = -time.Second }, "connection timeouts must not be negative"},
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
}

func TestUnwritableStore(t *testing.T) {
	c := validConfig(t)
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o600)
	c.StoreDir = filepath.Join(f, "sub")
	if _, err := New(context.Background(), c); err == nil || !strings.Contains(err.Error(), "disk store") {
		t.Fatalf("err = %v, want a disk store error", err)
	}
}

func TestServiceServesAdminEndpoints(t *testing.T) {
	c := validConfig(t)
	// A temporary bundle file left by a crash mid-write is removed at start.
	leftover := filepath.Join(c.StoreDir, ".bundle.pem.tmp-123")
	if err := os.WriteFile(leftover, []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	svc := runService(t, c)
	var base string
	for range 100 {
		if a := svc.Addr("admin"); a != nil {
			base = "http://" + a.String()
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	get := func(path string) (int, string) {
		t.Helper()
		for range 50 {
			resp, err := http.Get(base + path)
			if err != nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(b)
		}
		t.Fatalf("GET %s failed", path)
		return 0, ""
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Errorf("/readyz = %d %s", code, body)
	}
	code, body := get("/metrics")
	for _, m := range []string{"tether_ca_root_expiry_timestamp_seconds", "tether_ca_intermediate_expiry_timestamp_seconds", "tether_ca_bundle_sequence 1", "tether_ca_sign_duration_seconds"} {
		if code != 200 || !strings.Contains(body, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	// The bundle file follows the CA.
	bundle := filepath.Join(c.StoreDir, "bundle.pem")
	for range 100 {
		if _, err := os.Stat(bundle); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if b, err := os.ReadFile(bundle); err != nil || strings.Count(string(b), "BEGIN CERTIFICATE") != 1 {
		t.Fatalf("bundle file: %v, %d certs", err, strings.Count(string(b), "BEGIN CERTIFICATE"))
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Fatalf("leftover temporary bundle file still there: %v", err)
	}
}

// A client watching the bundle does not hold up shutdown: Run returns well
// before the 5s fallback, and the watcher learns the CA is going away.
func TestShutdownEndsBundleWatchers(t *testing.T) {
	c := validConfig(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, err := New(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	bundlePath := filepath.Join(c.StoreDir, "bundle.pem")
	var bundle *x509bundle.Bundle
	for range 250 {
		if bundle, err = identity.LoadBundlePEM(bundlePath, c.TrustDomain); err == nil && svc.Addr("grpc") != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if bundle == nil {
		t.Fatalf("no bundle file: %v", err)
	}
	cl, err := identity.Dial(svc.Addr("grpc").String(), bundle.TrustDomain(), bundle, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got := make(chan struct{}, 1)
	watchErr := make(chan error, 1)
	go func() {
		watchErr <- cl.WatchBundle(context.Background(), func(*spiffebundle.Bundle) {
			select {
			case got <- struct{}{}:
			default:
			}
		})
	}()
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no bundle over WatchBundle")
	}
	start := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Run took %v to return with a bundle watcher connected, want well under the 5s fallback", d)
	}
	select {
	case err := <-watchErr:
		if err == nil || !strings.Contains(err.Error(), "shutting down") {
			t.Fatalf("watcher ended with %v, want the CA's shutdown", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher was not ended")
	}
}
