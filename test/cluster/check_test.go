package cluster_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-mesh/tether/internal/check"
	"github.com/tether-mesh/tether/pkg/inject"
)

// tetherCheck runs `tether check ARGS... -o json` on the node and returns
// the report and the exit code.
func (s *storyRun) tetherCheck(t *testing.T, args ...string) (*check.Report, int) {
	t.Helper()
	bin, kubeconfig := s.n.tetherCLI(t), filepath.Join(s.n.clusterDir(), "kubeconfig")
	args = append(append([]string{bin, "check", "--kubeconfig", kubeconfig}, args...), "-o", "json")
	out, err := s.n.run(3*time.Minute, "", "exec.sh", args...)
	code := 0
	var ce *cmdError
	switch {
	case errors.As(err, &ce):
		code = ce.exitCode()
	case err != nil:
		t.Fatal(err)
	}
	var rep check.Report
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil {
		t.Fatalf("tether check %s: exit %d, not a JSON report (%v): %v", strings.Join(args[2:], " "), code, jerr, err)
	}
	return &rep, code
}

// logCheck runs `tether check ARGS...` on the node and logs what it
// prints for people (docs/check.md shows it).
func (s *storyRun) logCheck(t *testing.T, args ...string) {
	t.Helper()
	bin, kubeconfig := s.n.tetherCLI(t), filepath.Join(s.n.clusterDir(), "kubeconfig")
	out, err := s.n.run(3*time.Minute, "", "exec.sh", append([]string{bin, "check", "--kubeconfig", kubeconfig}, args...)...)
	t.Logf("$ tether check %s\n%s(%v)", strings.Join(args, " "), out, err)
}

// wantChecks checks the exit code and each named check's result.
func wantChecks(t *testing.T, what string, rep *check.Report, code, wantCode int, want map[string]check.Result) {
	t.Helper()
	if code != wantCode {
		t.Errorf("%s: exit %d, want %d", what, code, wantCode)
	}
	for name, res := range want {
		c := rep.Find(name)
		if c == nil {
			t.Errorf("%s: no check %s", what, name)
		} else if c.Result != res {
			t.Errorf("%s: %s is %s, want %s: %s %q (hint: %s)", what, name, c.Result, res, c.Message, c.Details, c.Hint)
		}
	}
	if t.Failed() {
		for _, c := range rep.Checks {
			t.Logf("  %-6s %s: %s %q %s", c.Result, c.Name, c.Message, c.Details, c.Hint)
		}
	}
}

// checkPre: before install, tether check --pre passes: the node's
// Kubernetes has native sidecars, the test's admin may install, no
// labelled namespace refuses tether-init, nothing is installed.
func (s *storyRun) checkPre(t *testing.T) {
	s.logCheck(t, "--pre")
	rep, code := s.tetherCheck(t, "--pre")
	wantChecks(t, "tether check --pre", rep, code, 0, map[string]check.Result{
		"kubernetes-version": check.OK, "permissions": check.OK, "pod-security": check.OK, "existing-install": check.OK,
	})
}

// checkInstalled: after install and deploy, tether check passes, and
// --proxy of the story namespace too (every sidecar's identity, version
// and SVID through discovery and the pod proxy).
func (s *storyRun) checkInstalled(t *testing.T) {
	all := map[string]check.Result{}
	for _, n := range []string{"crds", "tether-ca", "tether-discovery", "tether-injector", "cni-node", "discovery-endpoints", "root-expiry",
		"intermediate-expiry", "webhook-ca-bundle", "webhook-injects", "pod-security", "sidecar-svids", "pods-without-sidecar", "sidecar-versions"} {
		all[n] = check.OK
	}
	var rep *check.Report
	var code int
	// The deployments may still be rolling their second replicas.
	eventually(t, "tether check passes", 2*time.Minute, 5*time.Second, func() error {
		rep, code = s.tetherCheck(t)
		if code != 0 {
			return fmt.Errorf("exit %d: %d failure(s)", code, rep.Failures)
		}
		return nil
	})
	wantChecks(t, "tether check", rep, code, 0, all)
	s.logCheck(t)
	if c := rep.Find("pods-without-sidecar"); c != nil && !strings.Contains(strings.Join(c.Details, "\n"), story+"/optout: opted out") {
		t.Errorf("pods-without-sidecar does not list the opted-out pod: %q", c.Details)
	}
	// A root expiring within a year: --expiry-warning 400d fails it.
	rep, code = s.tetherCheck(t, "--expiry-warning", "400d")
	wantChecks(t, "tether check --expiry-warning 400d", rep, code, 1, map[string]check.Result{"root-expiry": check.Fail})

	rep, code = s.tetherCheck(t, "--proxy", "-n", story)
	wantChecks(t, "tether check --proxy -n "+story, rep, code, 0, map[string]check.Result{
		"namespace-labelled": check.OK, "pods-without-sidecar": check.OK, "sidecar-ready": check.OK, "sidecar-svids": check.OK,
		"sidecar-identity": check.OK, "sidecar-versions": check.OK,
	})
	s.logCheck(t, "--proxy", "-n", story)
	if c := rep.Find("sidecar-identity"); c != nil {
		for _, a := range apps {
			if !strings.Contains(strings.Join(c.Details, "\n"), "spiffe://cluster.local/ns/story/sa/"+a) {
				t.Errorf("sidecar-identity does not name %s's identity: %q", a, c.Details)
			}
		}
	}
}

// checkEscaped: labelling the plain namespace, whose pods run without a
// sidecar, makes tether check fail and list them with the command that
// restarts each Deployment; --proxy -n plain says the same.
func (s *storyRun) checkEscaped(t *testing.T) {
	s.n.must(t, time.Minute, "label", "namespace", plain, inject.InjectLabel+"=enabled")
	t.Cleanup(func() { s.n.kubectl(time.Minute, "label", "namespace", plain, inject.InjectLabel+"-") })
	rep, code := s.tetherCheck(t)
	wantChecks(t, "tether check with plain labelled", rep, code, 1, map[string]check.Result{"pods-without-sidecar": check.Fail})
	c := rep.Find("pods-without-sidecar")
	for _, a := range apps {
		want := fmt.Sprintf(": kubectl -n %s rollout restart deploy/%s", plain, a)
		if c == nil || !strings.Contains(strings.Join(c.Details, "\n"), want) {
			t.Errorf("pods-without-sidecar does not list %s's pod with %q", a, want)
		}
	}
	if c != nil {
		t.Logf("pods-without-sidecar: %s\n  %s\n  hint: %s", c.Message, strings.Join(c.Details, "\n  "), c.Hint)
	}
	s.logCheck(t)
	rep, code = s.tetherCheck(t, "--proxy", "-n", plain)
	wantChecks(t, "tether check --proxy -n "+plain, rep, code, 1, map[string]check.Result{"pods-without-sidecar": check.Fail})
	s.n.must(t, time.Minute, "label", "namespace", plain, inject.InjectLabel+"-")
	rep, code = s.tetherCheck(t)
	wantChecks(t, "tether check with plain unlabelled again", rep, code, 0, map[string]check.Result{"pods-without-sidecar": check.OK})
}

// checkBroken: a webhook caBundle that does not verify the injector's
// certificate makes tether check fail, saying so with the hint; the
// injector rewrites the caBundle (within its one-minute sync), and the
// check passes again.
func (s *storyRun) checkBroken(t *testing.T) {
	other := base64.StdEncoding.EncodeToString(otherCertPEM(t))
	patch := fmt.Sprintf(`[{"op":"replace","path":"/webhooks/0/clientConfig/caBundle","value":%q},{"op":"replace","path":"/webhooks/1/clientConfig/caBundle","value":%[1]q}]`, other)
	var rep *check.Report
	var code int
	// The injector may repair it between the patch and the check: try
	// again until the check sees it broken.
	eventually(t, "tether check sees the corrupt caBundle", 2*time.Minute, time.Second, func() error {
		s.n.must(t, time.Minute, "patch", "mutatingwebhookconfiguration", "tether-injector", "--type=json", "-p", patch)
		rep, code = s.tetherCheck(t)
		if c := rep.Find("webhook-ca-bundle"); c == nil || c.Result != check.Fail {
			return errors.New("the injector repaired the caBundle before the check ran")
		}
		return nil
	})
	wantChecks(t, "tether check with a corrupt caBundle", rep, code, 1, map[string]check.Result{"webhook-ca-bundle": check.Fail})
	s.n.must(t, time.Minute, "patch", "mutatingwebhookconfiguration", "tether-injector", "--type=json", "-p", patch)
	s.logCheck(t)
	c := rep.Find("webhook-ca-bundle")
	if !strings.Contains(strings.Join(c.Details, "\n"), "caBundle does not verify the injector's serving certificate") ||
		!strings.Contains(c.Hint, "kubectl -n tether-system rollout restart deploy/tether-injector") {
		t.Errorf("webhook-ca-bundle: %s %q hint %q", c.Message, c.Details, c.Hint)
	}
	if c := rep.Find("webhook-injects"); c == nil || c.Result != check.Fail || !strings.Contains(c.Hint, "does not trust the injector's certificate") {
		// The injector may have repaired it between the two checks.
		t.Logf("webhook-injects (the API server's call): %+v", c)
	}
	t.Logf("webhook-ca-bundle: %s\n  %s\n  hint: %s", c.Message, strings.Join(c.Details, "\n  "), c.Hint)
	eventually(t, "the injector repairs the caBundle and tether check passes", 3*time.Minute, 5*time.Second, func() error {
		rep, code = s.tetherCheck(t)
		if code != 0 {
			return fmt.Errorf("exit %d", code)
		}
		return nil
	})
}

// otherCertPEM is a self-signed certificate the injector's is not.
func otherCertPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "not-the-injector"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
