package caserver

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestTwoCAsFederate: tether-ca B follows tether-ca A's bundle endpoint
// (https_spiffe, declared in B's --federation-file with A's bundle file as
// the initial bundle); A's root rotation reaches B with a higher sequence
// number; emptying the file makes B stop trusting A.
func TestTwoCAsFederate(t *testing.T) {
	a := validConfig(t)
	a.TrustDomain = "a.example"
	a.BundleEndpoint = BundleEndpointConfig{Listen: "127.0.0.1:0", Profile: identity.ProfileHTTPSSPIFFE, RefreshHint: time.Second}
	svcA, _ := startService(t, a)
	testutil.Eventually(t, "A's bundle endpoint", 10*time.Second, func() bool { return svcA.Addr("bundle-endpoint") != nil })

	b := validConfig(t)
	b.TrustDomain = "b.example"
	b.Federation = FederationConfig{File: filepath.Join(t.TempDir(), "federation.yaml"), MinRefresh: time.Second, MaxRefresh: 2 * time.Second}
	writeFile(t, b.Federation.File, fmt.Sprintf(`federation:
- trustDomain: a.example
  bundleEndpointURL: https://%s
  profile: https_spiffe
  endpointSPIFFEID: spiffe://a.example/tether/bundle-endpoint
  initialBundleFile: %s
`, svcA.Addr("bundle-endpoint"), filepath.Join(a.StoreDir, "bundle.pem")))
	svcB, _ := startService(t, b)

	atd := spiffeid.RequireTrustDomainFromString("a.example")
	seq := func() (uint64, int) {
		got, err := svcB.Federation().Bundles().GetBundleForTrustDomain(atd)
		if err != nil {
			return 0, 0
		}
		n, _ := got.SequenceNumber()
		return n, len(got.X509Authorities())
	}
	testutil.Eventually(t, "B holds A's served bundle", 10*time.Second, func() bool {
		n, _ := seq()
		return n == svcA.CA().Bundle().Sequence
	})
	before, roots := seq()
	if err := svcA.CA().Rotate(t.Context(), identity.StepPrepare, false); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "B holds A's prepared root", 10*time.Second, func() bool {
		n, r := seq()
		return n > before && r == roots+1
	})

	metrics := httpGet(t, "http://"+svcB.Addr("admin").String()+"/metrics")
	if want := fmt.Sprintf(`tether_ca_federated_bundle_sequence{trust_domain="a.example"} %d`, svcA.CA().Bundle().Sequence); !strings.Contains(metrics, want) {
		t.Fatalf("B's metrics lack %q", want)
	}

	writeFile(t, b.Federation.File, "federation: []\n")
	testutil.Eventually(t, "B stops trusting A", 10*time.Second, func() bool { n, _ := seq(); return n == 0 })
}

// TestFederationFileRefusedAtStart: a bad federation file stops tether-ca
// from starting, saying what is wrong.
func TestFederationFileRefusedAtStart(t *testing.T) {
	for name, tc := range map[string]struct{ body, want string }{
		"plaintext URL": {"federation:\n- trustDomain: a.example\n  bundleEndpointURL: http://a.example/\n  profile: https_web\n", "must use https"},
		"typo":          {"federation:\n- trustDomain: a.example\n  bundleEndpoint: https://a.example/\n", "unknown field"},
		"no initial":    {"federation:\n- trustDomain: a.example\n  bundleEndpointURL: https://a.example/\n  endpointSPIFFEID: spiffe://a.example/x\n", "needs an initial bundle"},
		"own domain":    {"federation:\n- trustDomain: cluster.local\n  bundleEndpointURL: https://a.example/\n  profile: https_web\n", "own trust domain"},
	} {
		t.Run(name, func(t *testing.T) {
			c := validConfig(t)
			c.Federation.File = filepath.Join(t.TempDir(), "f.yaml")
			writeFile(t, c.Federation.File, tc.body)
			if _, err := New(t.Context(), c); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestBundleEndpointConfigValidation(t *testing.T) {
	for name, tc := range map[string]struct {
		mod  func(*Config)
		want string
	}{
		"unknown profile":       {func(c *Config) { c.BundleEndpoint.Profile = "http" }, "want https_spiffe or https_web"},
		"web without cert":      {func(c *Config) { c.BundleEndpoint.Profile = identity.ProfileHTTPSWeb }, "needs --bundle-endpoint-web-cert"},
		"cert with spiffe":      {func(c *Config) { c.BundleEndpoint.WebCertFile = "x.pem" }, "are for --bundle-endpoint-profile=https_web"},
		"tiny refresh hint":     {func(c *Config) { c.BundleEndpoint.RefreshHint = time.Millisecond }, "at least a second"},
		"min refresh too short": {func(c *Config) { c.Federation.MinRefresh = time.Millisecond }, "at least a second"},
		"file and CRD":          {func(c *Config) { c.Federation.File, c.Federation.WatchCRD = "f.yaml", true }, "exclude each other"},
		"max under min":         {func(c *Config) { c.Federation.MinRefresh, c.Federation.MaxRefresh = time.Minute, time.Second }, "shorter than --federation-min-refresh"},
	} {
		t.Run(name, func(t *testing.T) {
			c := validConfig(t)
			c.BundleEndpoint = BundleEndpointConfig{Listen: "127.0.0.1:0", Profile: identity.ProfileHTTPSSPIFFE}
			tc.mod(&c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}
