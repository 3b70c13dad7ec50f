package cli_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	cav1 "github.com/tether-mesh/tether/api/ca/v1"
	"github.com/tether-mesh/tether/pkg/identity"
)

// TestCARotateStatus: a sidecar that reports only the old root shows in
// `tether ca rotate status` (text, JSON, YAML) as the laggard activate
// waits for; a forced activate prints the refusal it overrode as a
// warning.
func TestCARotateStatus(t *testing.T) {
	ctx := context.Background()
	addr, sock, dir := startCA(t)
	out, errOut, code := run(t, "ca", "token", "create", "--socket", sock, "--spiffe-id", "spiffe://cluster.local/ns/shop/sa/web")
	if code != 0 {
		t.Fatalf("token create: %d %s", code, errOut)
	}
	bundle, err := identity.LoadBundlePEM(filepath.Join(dir, "bundle.pem"), "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	boot, err := identity.Dial(addr, bundle.TrustDomain(), bundle, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer boot.Close()
	svid, _, err := boot.FetchSVID(ctx, &cav1.Credential{Kind: identity.KindJoinToken, Token: strings.TrimSpace(out)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := identity.Dial(addr, bundle.TrustDomain(), bundle, svid)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	root := identity.Fingerprint(bundle.X509Authorities()[0].Raw)
	if _, err := c.Report(ctx, &cav1.ReportRequest{TrustedRootsSha256: []string{root}, SvidRootSha256: root, Instance: "web-5f7c", Version: "v0.9.0"}); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := run(t, "ca", "rotate", "prepare", "--socket", sock); code != 0 {
		t.Fatalf("prepare: %d %s", code, errOut)
	}

	out, errOut, code = run(t, "ca", "rotate", "status", "--socket", sock)
	if code != 0 {
		t.Fatalf("rotate status: %d %s", code, errOut)
	}
	for _, want := range []string{"reporting sidecars: 1", "1           active    ", "activate waits: 1 of 1 reporting sidecars do not trust the root of generation 2",
		"spiffe://cluster.local/ns/shop/sa/web  web-5f7c  v0.9.0"} {
		if !strings.Contains(out, want) {
			t.Errorf("rotate status does not show %q:\n%s", want, out)
		}
	}
	out, _, code = run(t, "ca", "rotate", "status", "--socket", sock, "-o", "json")
	var st struct {
		Generations []struct {
			Generation, Trusting, Holding int
		} `json:"generations"`
		Activate struct {
			Laggards []struct {
				SpiffeID string `json:"spiffe_id"`
				Instance string `json:"instance"`
				Trusts   []int  `json:"trusts"`
				Holds    int    `json:"holds"`
			} `json:"laggards"`
		} `json:"activate"`
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		t.Fatalf("-o json: code %d, %v:\n%s", code, err, out)
	}
	if len(st.Generations) != 2 || st.Generations[0].Trusting != 1 || st.Generations[0].Holding != 1 || st.Generations[1].Trusting != 0 {
		t.Errorf("generations %+v", st.Generations)
	}
	if l := st.Activate.Laggards; len(l) != 1 || l[0].SpiffeID != "spiffe://cluster.local/ns/shop/sa/web" || l[0].Instance != "web-5f7c" || l[0].Holds != 1 || len(l[0].Trusts) != 1 {
		t.Errorf("laggards %+v", l)
	}
	out, _, code = run(t, "ca", "rotate", "status", "--socket", sock, "-o", "yaml")
	var y map[string]any
	if err := yaml.Unmarshal([]byte(out), &y); code != 0 || err != nil || y["activate"] == nil {
		t.Errorf("-o yaml: code %d, %v:\n%s", code, err, out)
	}

	out, errOut, code = run(t, "ca", "rotate", "activate", "--socket", sock, "--force")
	if code != 0 || !strings.Contains(out, "activate: done") {
		t.Fatalf("forced activate: %d %s %s", code, out, errOut)
	}
	if !strings.Contains(errOut, "warning: --force: activate taken although 1 of 1 reporting sidecars do not trust") || !strings.Contains(errOut, "web-5f7c") {
		t.Errorf("forced activate warns %q, want the refusal naming web-5f7c", errOut)
	}
}
