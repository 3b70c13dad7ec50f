package cli_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/caserver"
	"github.com/tether-mesh/tether/internal/testutil"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestCARotateWaitsForFederatedDomain: tether-ca A serves a bundle endpoint
// (refresh hint 1s, tick 1s: the gate waits 1s + 11s after the first
// fetch). After `prepare`, `tether ca rotate status` shows that nothing
// fetched the new root and `activate` is refused for it; once tether-ca B
// (b.example, whose Federator follows A's endpoint) has fetched it, status
// shows when, activate is still refused until the refresh hint plus the
// margin has passed, then taken.
func TestCARotateWaitsForFederatedDomain(t *testing.T) {
	dirA := t.TempDir()
	a := caConfig(dirA)
	a.PropagationDelay = time.Second
	a.BundleEndpoint = caserver.BundleEndpointConfig{Listen: "127.0.0.1:0", Profile: identity.ProfileHTTPSSPIFFE, RefreshHint: time.Second}
	svcA := runCA(t, a)
	testutil.Eventually(t, "A's bundle endpoint", 10*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(dirA, "bundle.pem"))
		return svcA.Addr("bundle-endpoint") != nil && err == nil
	})
	sock := filepath.Join(dirA, "admin.sock")
	if _, errOut, code := run(t, "ca", "rotate", "prepare", "--socket", sock); code != 0 {
		t.Fatalf("prepare: %d %s", code, errOut)
	}
	out, errOut, code := run(t, "ca", "rotate", "status", "--socket", sock)
	if code != 0 || !strings.Contains(out, "bundle endpoint gate (federated trust domains, generation 2): no federated trust domain has fetched its root yet; activate may follow 12s after the first fetch (refresh hint 1s + margin 11s)") {
		t.Fatalf("status before any fetch (%d %s):\n%s", code, errOut, out)
	}
	time.Sleep(1100 * time.Millisecond) // past the propagation delay: only the endpoint gate is left
	_, errOut, code = run(t, "ca", "rotate", "activate", "--socket", sock)
	if code == 0 || !strings.Contains(errOut, "the bundle endpoint has not served the root of generation 2 to anyone") {
		t.Fatalf("activate before any fetch: %d %s", code, errOut)
	}

	dirB := t.TempDir()
	b := caConfig(dirB)
	b.TrustDomain = "b.example"
	b.Federation = caserver.FederationConfig{File: filepath.Join(dirB, "federation.yaml"), MinRefresh: time.Second, MaxRefresh: 2 * time.Second}
	if err := os.WriteFile(b.Federation.File, fmt.Appendf(nil, `federation:
- trustDomain: cluster.local
  bundleEndpointURL: https://%s
  endpointSPIFFEID: spiffe://cluster.local/tether/bundle-endpoint
  initialBundleFile: %s
`, svcA.Addr("bundle-endpoint"), filepath.Join(dirA, "bundle.pem")), 0o600); err != nil {
		t.Fatal(err)
	}
	runCA(t, b)

	var gate struct {
		FirstServed string `json:"first_served"`
		Passes      string `json:"passes"`
		Blocked     string `json:"blocked"`
	}
	testutil.Eventually(t, "B's fetch recorded by A", 20*time.Second, func() bool {
		out, _, _ := run(t, "ca", "rotate", "status", "--socket", sock, "-o", "json")
		var st struct {
			Gate *struct {
				FirstServed string `json:"first_served"`
				Passes      string `json:"passes"`
				Blocked     string `json:"blocked"`
			} `json:"bundle_endpoint_gate"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil || st.Gate == nil {
			t.Fatalf("status -o json: %v\n%s", err, out)
		}
		gate = *st.Gate
		return gate.FirstServed != ""
	})
	served, err := time.Parse(time.RFC3339, gate.FirstServed)
	if err != nil {
		t.Fatal(err)
	}
	out, _, _ = run(t, "ca", "rotate", "status", "--socket", sock)
	if !strings.Contains(out, "first served at "+gate.FirstServed) {
		t.Errorf("status does not show the first fetch:\n%s", out)
	}
	for {
		_, errOut, code = run(t, "ca", "rotate", "activate", "--socket", sock)
		if code == 0 {
			break
		}
		if !strings.Contains(errOut, "the bundle endpoint first served the root of generation 2 at") || !strings.Contains(errOut, gate.Passes) {
			t.Fatalf("activate after the fetch: %d %s", code, errOut)
		}
		if time.Since(served) > 30*time.Second {
			t.Fatalf("activate still refused 30s after the first fetch: %s", errOut)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Second precision in the output: at least 11s after the first fetch.
	if took := time.Since(served); took < 11*time.Second {
		t.Fatalf("activate taken %s after the first fetch, before the refresh hint and margin (12s)", took)
	}
}
