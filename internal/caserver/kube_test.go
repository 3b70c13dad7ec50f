package caserver

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tether-mesh/tether/internal/cli"
	"github.com/tether-mesh/tether/internal/kubetest"
)

// TestKubernetesMode runs tether-ca the way a cluster does (Secret store,
// Lease, TokenReview, bundle ConfigMaps) against a real API server, and
// has the CLI fetch an SVID with a pod-bound projected token.
func TestKubernetesMode(t *testing.T) {
	env := kubetest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	env.EnsureNamespace(t, "tether-system")
	app := env.EnsureNamespace(t, "shop")
	app.Labels = map[string]string{"tether.dev/inject": "enabled"}
	if _, err := env.Client.CoreV1().Namespaces().Update(ctx, app, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c := validConfig(t)
	c.Store, c.StoreDir = "kubernetes", ""
	c.AdminSocket = filepath.Join(t.TempDir(), "admin.sock")
	c.BundleFile = filepath.Join(t.TempDir(), "bundle.pem")
	c.Kube = KubeConfig{Kubeconfig: env.Kubeconfig(t), Namespace: "tether-system", SecretName: "tether-ca", LeaseName: "tether-ca",
		Identity: "ca-0", TokenReview: true, Audience: "tether-ca", PublishBundle: true}
	svc := runService(t, c)
	wait := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	wait("the CA to listen", func() bool {
		_, err := os.Stat(c.BundleFile)
		return svc.Addr("grpc") != nil && err == nil
	})
	if _, err := env.Client.CoreV1().Secrets("tether-system").Get(ctx, "tether-ca", metav1.GetOptions{}); err != nil {
		t.Fatalf("no CA Secret: %v", err)
	}
	wait("the Lease", func() bool {
		l, err := env.Client.CoordinationV1().Leases("tether-system").Get(ctx, "tether-ca", metav1.GetOptions{})
		return err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == "ca-0"
	})
	wait("the trust bundle ConfigMap", func() bool {
		cm, err := env.Client.CoreV1().ConfigMaps("shop").Get(ctx, "tether-trust-bundle", metav1.GetOptions{})
		return err == nil && strings.Contains(cm.Data["bundle.pem"], "BEGIN CERTIFICATE")
	})

	token := env.PodToken(t, "shop", "web", "web-0", "tether-ca", time.Hour)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte(token), 0o600)
	out := filepath.Join(t.TempDir(), "svid")
	var stdout, stderr bytes.Buffer
	code := (&cli.App{Stdout: &stdout, Stderr: &stderr}).Main(ctx, []string{"svid", "fetch", "--ca", svc.Addr("grpc").String(),
		"--bundle", c.BundleFile, "--k8s-token-file", tokenFile, "--out", out})
	if code != 0 {
		t.Fatalf("svid fetch with a projected token: %s", stderr.String())
	}
	svid, err := x509svid.Load(filepath.Join(out, "svid.pem"), filepath.Join(out, "svid.key"))
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Fatalf("SVID for %s", svid.ID)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, svc.CA()); err != nil {
		t.Fatal(err)
	}
	// A token for another audience is refused.
	os.WriteFile(tokenFile, []byte(env.PodToken(t, "shop", "web", "web-0", "someone-else", time.Hour)), 0o600)
	stderr.Reset()
	if code := (&cli.App{Stdout: &stdout, Stderr: &stderr}).Main(ctx, []string{"svid", "fetch", "--ca", svc.Addr("grpc").String(),
		"--bundle", c.BundleFile, "--k8s-token-file", tokenFile, "--out", out}); code == 0 || !strings.Contains(stderr.String(), "Unauthenticated") {
		t.Fatalf("wrong-audience token: exit %d, %s", code, stderr.String())
	}
}
