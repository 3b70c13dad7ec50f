//go:build linux

package mesh

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// wirePaths are where Tether's wire formats live: the CA's and discovery's
// protobuf APIs (api/) and the xDS resources and node metadata discovery
// and sidecars exchange (pkg/discovery/wire). docs/architecture.md
// ("Version skew") names the same paths: a change to the wire changes one
// of them.
var wirePaths = []string{"api", "pkg/discovery/wire"}

// TestSkewBaselineSidecar is the version-skew policy's test
// (docs/architecture.md, "Version skew"): the sidecar built from the
// source just before the newest commit that changed a wire format (or
// from HEAD, when the working tree changes one) runs against the current
// tether-ca and tether-discovery next to current sidecars. It must get
// its SVID and bundle, follow discovery, call a current sidecar's service
// and be called by a current sidecar, both over mTLS, and still enforce
// policy: a service it is not allowed to reach stays refused. A change of
// the CA or xDS wire that an already running sidecar does not understand
// fails here instead of in the clusters that upgrade their control plane
// first.
func TestSkewBaselineSidecar(t *testing.T) {
	needMesh(t)
	baseline, why := skewBaseline(t)
	t.Logf("baseline sidecar: %s (%s)", baseline, why)
	buildBaselineSidecar(t, baseline)

	ca := startCA(t)
	apiApp, oldApp, secretApp := startApp(t, "api"), startApp(t, "old-api"), startApp(t, "secret")
	services := []svc{
		{name: "api", sa: "api", ip: "10.96.0.21", port: 8080, app: apiApp.addr, endpoint: loopback(t), allowFrom: []string{"old-web"}},
		{name: "old-api", sa: "old-api", ip: "10.96.0.22", port: 8080, app: oldApp.addr, endpoint: loopback(t), allowFrom: []string{"web"}},
		// secret allows only "web": the baseline sidecar old-web must be
		// refused by its own outbound policy and by secret's sidecar.
		{name: "secret", sa: "secret", ip: "10.96.0.23", port: 8080, app: secretApp.addr, endpoint: loopback(t), allowFrom: []string{"web"}},
	}
	// old-api's policy also names callers of another trust domain (a
	// spiffeID and a trustDomain source): discovery sends the baseline
	// sidecar their principals (an exact ID, the prefix spiffe://b.example/),
	// which it must accept (it keeps following discovery, web's calls
	// pass) without admitting a b.example caller (checked below).
	mesh := strings.Replace(meshYAML(services...), "destination: {service: old-api}\n      sources:\n",
		"destination: {service: old-api}\n      sources:\n        - trustDomain: b.example\n        - spiffeID: spiffe://b.example/ns/default/sa/web\n", 1)
	if !strings.Contains(mesh, "trustDomain: b.example") {
		t.Fatal("the mesh names no foreign source: meshYAML changed")
	}
	d := startDiscovery(t, ca, mesh)
	startSidecar(t, ca, d, sidecarSpec{sa: "api", inbound: services[0].endpoint, app: apiApp.addr})
	startSidecar(t, ca, d, sidecarSpec{sa: "old-api", inbound: services[1].endpoint, app: oldApp.addr, bin: "tether-sidecar-baseline"})
	startSidecar(t, ca, d, sidecarSpec{sa: "secret", inbound: services[2].endpoint, app: secretApp.addr})
	oldWeb := startSidecar(t, ca, d, sidecarSpec{sa: "old-web", bin: "tether-sidecar-baseline",
		outbound: []string{"default/api:8080", "default/secret:8080"}})
	web := startSidecar(t, ca, d, sidecarSpec{sa: "web", outbound: []string{"default/old-api:8080"}})

	eventually(t, "baseline sidecar → current sidecar (old-web → api)", 30*time.Second, func() error {
		return call(oldWeb.outbound[0], "api")
	})
	eventually(t, "current sidecar → baseline sidecar (web → old-api)", 30*time.Second, func() error {
		return call(web.outbound[0], "old-api")
	})
	if err := refused(oldWeb.outbound[1]); err != nil {
		t.Errorf("baseline sidecar old-web → secret (not allowed): %v", err)
	}
	if n := secretApp.accepted.Load(); n != 0 {
		t.Errorf("secret's app accepted %d connections from a caller the policy does not allow", n)
	}
	// A b.example workload (an SVID of a CA of that domain) at the
	// baseline sidecar's inbound: refused at the handshake.
	if err := foreignHandshake(t, services[1].endpoint, spiffeid.RequireFromString("spiffe://b.example/ns/default/sa/web")); err == nil {
		t.Error("the baseline sidecar old-api accepted a b.example caller's handshake")
	}
	if n := oldApp.accepted.Load(); n == 0 {
		t.Error("old-api's app accepted nothing: web's call did not reach it")
	}
	// The baseline sidecar serves the Workload API with the current CA's
	// SVID and bundle.
	x, err := oldWeb.x509Context()
	if err != nil {
		t.Fatalf("Workload API of the baseline sidecar: %v", err)
	}
	if got, want := x.DefaultSVID().ID.String(), workloadID("default", "old-web").String(); got != want {
		t.Errorf("baseline sidecar's SVID is %s, want %s", got, want)
	}
	if roots := ca.roots(t); len(roots) == 0 || chainsTo(x.DefaultSVID().Certificates, roots...) != nil {
		t.Errorf("baseline sidecar's SVID does not chain to the CA's roots")
	}
}

// skewBaseline picks the commit whose sidecar the test runs: the one
// $TETHER_SKEW_BASELINE names (to try a release against this control
// plane), else HEAD when the working tree changes a wire path (the change under test is not
// committed yet), else the parent of the newest commit that changed one.
func skewBaseline(t *testing.T) (commit, why string) {
	t.Helper()
	if c := os.Getenv("TETHER_SKEW_BASELINE"); c != "" {
		return strings.TrimSpace(git(t, "rev-parse", "--verify", c+"^{commit}")), "TETHER_SKEW_BASELINE"
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("the version-skew test builds a sidecar from the repository's history and needs git: " + err.Error())
	}
	if shallow := strings.TrimSpace(git(t, "rev-parse", "--is-shallow-repository")); shallow == "true" {
		if os.Getenv("TETHER_SKEW_ALLOW_SHALLOW") == "1" {
			t.Skip("a shallow clone whose history .ci/run could not fetch (TETHER_SKEW_ALLOW_SHALLOW=1): the version-skew test needs an earlier commit")
		}
		t.Fatal("this clone is shallow: the version-skew test builds a sidecar from an earlier commit; run `git fetch --unshallow`")
	}
	if dirty := git(t, append([]string{"status", "--porcelain", "--"}, wirePaths...)...); strings.TrimSpace(dirty) != "" {
		return strings.TrimSpace(git(t, "rev-parse", "HEAD")), "the working tree changes a wire path"
	}
	// --first-parent: a branch merged into main counts as one change, so
	// the baseline is main before the merge, not the branch's own
	// half-way commits.
	last := strings.TrimSpace(git(t, append([]string{"log", "--first-parent", "-1", "--format=%H", "--"}, wirePaths...)...))
	if last == "" {
		t.Fatalf("no commit changed %v: is this the repository's history?", wirePaths)
	}
	parent := strings.TrimSpace(git(t, "rev-parse", last+"^1"))
	return parent, "before " + last[:12] + ", the newest commit that changed " + strings.Join(wirePaths, " or ")
}

// git runs git in the repository and returns its output.
func git(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = "../.."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// buildBaselineSidecar builds cmd/sidecar at commit into binDir as
// tether-sidecar-baseline, from `git archive` (the repository's own
// worktree and index are left alone) and with the go.mod of that commit.
func buildBaselineSidecar(t *testing.T, commit string) {
	t.Helper()
	src := t.TempDir()
	archive := exec.Command("git", "archive", "--format=tar", commit)
	archive.Dir = "../.."
	extract := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	extract.Stdin = pipe
	if err := extract.Start(); err != nil {
		t.Fatal(err)
	}
	if err := archive.Run(); err != nil {
		t.Fatalf("git archive %s: %v", commit, err)
	}
	if err := extract.Wait(); err != nil {
		t.Fatalf("extracting %s: %v", commit, err)
	}
	began := time.Now()
	build := exec.Command("go", "build", "-o", filepath.Join(binDir, "tether-sidecar-baseline"), "./cmd/sidecar")
	build.Dir = src
	build.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS="+os.Getenv("GOFLAGS"))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the sidecar of %s: %v\n%s", commit, err, out)
	}
	t.Logf("built the sidecar of %s in %s", commit[:12], time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() { os.Remove(filepath.Join(binDir, "tether-sidecar-baseline")) })
}

// foreignHandshake opens tether/1 mTLS to addr with an SVID for id, of a
// CA of id's trust domain made here, trusting any server certificate,
// and returns the error of the handshake and the first read.
func foreignHandshake(t *testing.T, addr string, id spiffeid.ID) error {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	root := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, URIs: []*url.URL{id.TrustDomain().ID().URL()}}
	rootDER, err := x509.CreateCertificate(rand.Reader, root, root, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ = x509.ParseCertificate(rootDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{id.URL()}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, root, leafKey.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"tether/1"}, MinVersion: tls.VersionTLS13, //nolint:gosec // the server is not under test
		Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER, rootDER}, PrivateKey: leafKey}}}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	_, err = c.Read(make([]byte, 1)) // TLS 1.3: the server's verdict on the client certificate
	if err != nil && strings.Contains(err.Error(), "timeout") {
		return nil // accepted, waiting for a frame
	}
	return err
}
